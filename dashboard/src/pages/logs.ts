// Logs: GET /logs with filters (machine, instance, version, since), and a live tail that polls
// from the last maxTimestamp (the wire API has no push for logs).

import type { Api } from "../api";
import { busy, errorText, field, h, notice, replace, time } from "../dom";
import type { Page } from "../main";

export interface LogFilter {
  machine?: string;
  instance?: string;
  version?: string;
}

export function logTable(body: HTMLElement): HTMLElement {
  return h("div", { class: "table-wrap" }, h("table", { class: "table logs" },
    h("thead", null, h("tr", null, h("th", null, "Time"), h("th", null, "Machine"), h("th", null, "Instance"), h("th", null, "Stream"), h("th", null, "Line"))),
    body));
}

function logRow(line: any): HTMLElement {
  return h("tr", { class: `log ${line.outputType}` },
    h("td", null, time(line.timestamp)),
    h("td", null, line.machineName),
    h("td", null, line.instanceName),
    h("td", null, line.outputType),
    h("td", null, h("code", { class: "log-line" }, line.log)));
}

/** Shows the lines since `sinceMs` ago and keeps polling; returns the stop function. */
export function tailLogs(api: Api, filter: LogFilter, body: HTMLElement, status: HTMLElement, everyMs: number | null, sinceMs = 24 * 3600_000): () => void {
  let from = new Date(Date.now() - sinceMs).toISOString();
  let stopped = false;
  let timer: number | undefined;
  let count = 0;
  const poll = async () => {
    try {
      for (let pages = 0; pages < 20 && !stopped; pages++) {
        const page = await api.call("GET", "/logs", { query: { from, ...filter } as Record<string, string> });
        for (const line of page.logs) {
          body.prepend(logRow(line));
          count++;
        }
        const more = page.logs.length >= 100;
        from = page.maxTimestamp;
        if (!more) break;
      }
      replace(status, count ? null : h("p", { class: "muted empty-logs" }, "No log lines yet. console.log in a machine's actions, guards or services shows up here."));
    } catch (err) {
      replace(status, notice("error", `The logs could not be read: ${errorText(err)}`));
    }
    if (!stopped && everyMs !== null) timer = window.setTimeout(poll, everyMs);
  };
  void poll();
  return () => {
    stopped = true;
    window.clearTimeout(timer);
  };
}

export async function logsPage(page: Page): Promise<void> {
  document.title = "Logs · statehost";
  const { api, main, params } = page;
  const machine = h("input", { type: "text", autocomplete: "off", value: params.get("machine") ?? "" });
  const instance = h("input", { type: "text", autocomplete: "off", value: params.get("instance") ?? "" });
  const version = h("input", { type: "text", autocomplete: "off", value: params.get("version") ?? "" });
  const since = h("select", null, [["15 minutes", 15 * 60_000], ["1 hour", 3600_000], ["24 hours", 86400_000], ["7 days", 7 * 86400_000]].map(([label, ms]) => h("option", { value: ms, selected: ms === 86400_000 }, `last ${label}`)));
  const follow = h("input", { type: "checkbox", checked: true });
  const apply = h("button", { type: "submit" }, "Show");
  const body = h("tbody");
  const status = h("div", { "aria-live": "polite" });
  let stop: (() => void) | null = null;
  const start = () => {
    stop?.();
    body.replaceChildren();
    const filter: LogFilter = {};
    if (machine.value.trim()) filter.machine = machine.value.trim();
    if (instance.value.trim()) filter.instance = instance.value.trim();
    if (version.value.trim()) filter.version = version.value.trim();
    stop = tailLogs(api, filter, body, status, follow.checked ? 2000 : null, Number(since.value));
  };
  const form = h("form", { class: "inline-form row", "aria-label": "Filter the logs" },
    field("Machine", machine), field("Instance", instance), field("Version", version), field("Since", since),
    h("label", { class: "check" }, follow, " live tail"), apply);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    void busy(apply, status, async () => start());
  });
  replace(main, h("div", { class: "page-head" }, h("h1", null, "Logs")), h("section", { class: "card" }, form, status, logTable(body)));
  start();
  page.onLeave(() => stop?.());
}
