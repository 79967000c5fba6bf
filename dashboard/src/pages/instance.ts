// One instance: the statechart with its current state highlighted and kept live over /rt, public
// and full context, the transition history, a form to send events, pause/resume, the desired
// version, deletion, and its log lines (live tail).

import { ApiError, tokenInfo } from "../api";
import { busy, empty, errorText, field, h, json, notice, replace, stateText, time } from "../dom";
import { hmacSha256 } from "../hmac";
import type { Page } from "../main";
import { subscribe, type InstanceUpdate } from "../rt";
import { parseJsonObject } from "./machine";
import { logTable, tailLogs } from "./logs";

export async function instancePage(page: Page, slug: string, instanceName: string): Promise<void> {
  document.title = `${instanceName} · ${slug} · statehost`;
  const { api, main } = page;
  const m = encodeURIComponent(slug);
  const i = encodeURIComponent(instanceName);
  const admin = tokenInfo(api.session.token).kind === "admin";
  const actKey = `statehost.dashboard.act.${slug}.${instanceName}`;
  const act = h("textarea", { rows: 1, spellcheck: "false", value: localStorage.getItem(actKey) ?? JSON.stringify({ sub: instanceName }) });
  const actAs = (): Record<string, unknown> | null => (admin ? parseJsonObject(act.value, "Act as") : null);

  let full: any;
  try {
    full = await api.call("GET", `/machines/${m}/i/${i}/admin`);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      replace(main, h("h1", null, instanceName), notice("error", `There is no instance ${instanceName} of ${slug}.`), h("p", null, h("a", { href: `#/machines/${m}` }, `Back to ${slug}`)));
      return;
    }
    if (!(err instanceof ApiError && err.code === "missing-scope")) throw err;
    full = null; // a token without instances.admin still sees the public state
  }

  const stateBox = h("div", { class: "state-now", "aria-live": "polite" });
  const publicBox = h("pre", { class: "json" });
  const fullBox = h("pre", { class: "json" });
  const live = h("span", { class: "live", role: "status" }, "connecting…");
  const diagramSlot = h("div", { class: "diagram-slot" }, h("p", { class: "muted" }, "Laying out the statechart…"));
  const history = h("ol", { class: "timeline", reversed: true });
  const historyStatus = h("div");
  const controlsStatus = h("div", { "aria-live": "polite" });
  const meta = h("div", { class: "meta" });
  let highlight: (value: unknown) => void = () => {};
  let lastState: unknown = full?.state;
  let versionId: string | undefined = full?.machineVersion?.id;

  const showState = (state: { state: unknown; publicContext?: unknown; done?: boolean; tags?: string[] }) => {
    lastState = state.state;
    replace(stateBox, h("span", { class: "label" }, "state"), h("code", { class: "state-value", "data-state": stateText(state.state) }, stateText(state.state)),
      state.done ? h("span", { class: "badge done" }, "done") : null,
      state.tags?.length ? h("span", { class: "muted" }, ` tags: ${state.tags.join(", ")}`) : null);
    if (state.publicContext !== undefined) publicBox.textContent = json(state.publicContext);
    highlight(state.state);
  };

  const loadFull = async () => {
    if (full === null) {
      fullBox.textContent = "(needs the instances.admin scope)";
      return;
    }
    full = await api.call("GET", `/machines/${m}/i/${i}/admin`);
    fullBox.textContent = json(full.context);
    versionId = full.machineVersion?.id;
    replace(meta,
      h("span", { class: `badge ${full.status}`, "data-status": full.status }, full.status),
      h("span", null, "version ", h("code", null, versionId ?? "?")),
      full.desiredMachineVersion ? h("span", null, "desired ", h("code", null, full.desiredMachineVersion.id)) : null,
      h("span", null, "created ", time(full.createdAt)));
    pauseButton.textContent = full.status === "paused" ? "Resume" : "Pause";
  };

  const loadHistory = async () => {
    if (full === null) {
      replace(history);
      replace(historyStatus, h("p", { class: "muted" }, "The history needs the instances.admin scope."));
      return;
    }
    try {
      const rows = await api.all<any>(`/machines/${m}/i/${i}/events`, "transitions", 500);
      rows.reverse();
      replace(history, rows.map((t) => h("li", { class: "transition" },
        time(t.createdAt), " ",
        h("code", { class: "event" }, String(t.event?.type ?? "?")),
        " → ",
        h("code", { class: "to" }, stateText(t.state)),
        t.event && Object.keys(t.event).length > 1 ? h("details", null, h("summary", null, "event"), h("pre", { class: "json" }, json(t.event))) : null)));
      replace(historyStatus, rows.length ? null : empty("No transitions yet."));
    } catch (err) {
      replace(historyStatus, notice("error", `The history could not be loaded: ${errorText(err)}`));
    }
  };

  // --- send an event ---------------------------------------------------------------------------
  const eventType = h("input", { type: "text", required: true, autocomplete: "off", placeholder: "e.g. toggle", list: "event-names" });
  const eventNames = h("datalist", { id: "event-names" });
  const payload = h("textarea", { rows: 2, spellcheck: "false", placeholder: '{"amount": 3}  (optional event data)' });
  const sendStatus = h("div", { "aria-live": "polite" });
  const send = h("button", { type: "submit", class: "primary" }, "Send event");
  const sendForm = h("form", { class: "inline-form", "aria-label": "Send an event" },
    field("Event", eventType), eventNames, field("Data", payload),
    admin ? field("Act as (authContext)", act, "What allowRead and allowWrite see. Also used for the live view.") : null,
    send, sendStatus);
  sendForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    void busy(send, sendStatus, async () => {
      const data = parseJsonObject(payload.value, "The event data") ?? {};
      const who = actAs();
      localStorage.setItem(actKey, act.value);
      const state = await api.call("POST", `/machines/${m}/i/${i}/events`, { body: { event: { ...data, type: eventType.value.trim() } }, act: who });
      showState(state);
      replace(sendStatus, notice("ok", `Sent ${eventType.value.trim()}: now ${stateText(state.state)}.`));
    });
  });

  // --- controls --------------------------------------------------------------------------------
  const pauseButton = h("button", { type: "button" }, full?.status === "paused" ? "Resume" : "Pause");
  pauseButton.addEventListener("click", () => void busy(pauseButton, controlsStatus, async () => {
    const next = full?.status === "paused" ? "running" : "paused";
    await api.call("PUT", `/machines/${m}/i/${i}/status`, { body: { status: next } });
    await loadFull();
    replace(controlsStatus, notice("ok", next === "paused" ? "Paused: events are refused until it is resumed." : "Resumed."));
  }));
  const versionSelect = h("select", { "aria-label": "Desired version" });
  const setVersion = h("button", { type: "button" }, "Set desired version");
  setVersion.addEventListener("click", () => void busy(setVersion, controlsStatus, async () => {
    await api.call("PUT", `/machines/${m}/i/${i}/v`, { body: { targetMachineVersionId: versionSelect.value } });
    await loadFull();
    replace(controlsStatus, notice("ok", "Desired version set: the instance moves to it before its next event."));
  }));
  const deleteButton = h("button", { type: "button", class: "danger" }, "Delete instance…");
  const dialog = h("dialog", { class: "confirm", "aria-labelledby": "confirm-title" });
  deleteButton.addEventListener("click", () => {
    const typed = h("input", { type: "text", autocomplete: "off", "aria-label": "Instance name" });
    const confirm = h("button", { type: "submit", class: "danger" }, "Delete forever");
    const status = h("div", { "aria-live": "polite" });
    const form = h("form", { method: "dialog" },
      h("h2", { id: "confirm-title" }, `Delete ${instanceName}?`),
      h("p", null, "Its state and history are deleted forever. Type the instance name to confirm."),
      typed, h("div", { class: "row" }, confirm, h("button", { type: "button", onclick: () => dialog.close() }, "Cancel")), status);
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      void busy(confirm, status, async () => {
        if (typed.value !== instanceName) throw new Error("The name does not match.");
        await api.call("DELETE", `/machines/${m}/i/${i}`, { body: { dangerDataWillBeDeletedForever: true, hmacSha256OfMachineInstanceNameWithMachineNameKey: await hmacSha256(slug, instanceName) } });
        dialog.close();
        location.hash = `#/machines/${m}`;
      });
    });
    replace(dialog, form);
    dialog.showModal();
    typed.focus();
  });

  // --- logs ------------------------------------------------------------------------------------
  const logBody = h("tbody");
  const logStatus = h("div");
  page.onLeave(tailLogs(api, { machine: slug, instance: instanceName }, logBody, logStatus, 1500));

  replace(
    main,
    h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("a", { href: "#/machines" }, "Machines"), " / ", h("a", { href: `#/machines/${m}` }, slug), " / ", instanceName),
    h("div", { class: "page-head" }, h("h1", null, instanceName), meta, live),
    h("div", { class: "instance-grid" },
      h("section", { class: "card chart-card" }, h("h2", null, "Statechart"), stateBox, diagramSlot),
      h("section", { class: "card" }, h("h2", null, "Send an event"), sendForm)),
    h("div", { class: "grid" },
      h("section", { class: "card" }, h("h2", null, "History"), historyStatus, history),
      h("section", { class: "card" }, h("h2", null, "Context"), h("h3", null, "Public"), publicBox, h("h3", null, "Full (admin)"), fullBox)),
    h("section", { class: "card" }, h("h2", null, "Logs ", h("a", { class: "small-link", href: `#/logs?machine=${m}&instance=${i}` }, "all")), logStatus, logTable(logBody)),
    h("section", { class: "card" }, h("h2", null, "Manage"),
      h("div", { class: "row" }, pauseButton, versionSelect, setVersion, deleteButton), controlsStatus),
    dialog,
  );

  if (full) showState({ state: full.state, done: full.done, tags: full.tags, publicContext: full.context?.public ?? {} });
  await Promise.all([loadFull().catch((err) => replace(controlsStatus, notice("error", errorText(err)))), loadHistory()]);

  // versions for the desired-version control
  api.all<any>(`/machines/${m}/v`, "versions").then((versions) => {
    replace(versionSelect, versions.map((v) => h("option", { value: v.id, selected: v.id === versionId }, `${v.id}${v.id === versionId ? " (running)" : ""}`)));
  }, (err) => replace(controlsStatus, notice("error", `The versions could not be listed: ${errorText(err)}`)));

  // the diagram of the instance's version
  const drawn = versionId;
  if (drawn) {
    Promise.all([import("../diagram"), api.call("GET", `/machines/${m}/v/${drawn}/structure`)]).then(async ([mod, structure]) => {
      const diagram = await mod.drawDiagram(structure);
      highlight = diagram.highlight;
      replace(diagramSlot, diagram.element);
      highlight(lastState);
      const events = new Set<string>();
      const walk = (n: any) => {
        for (const t of n.transitions) if (t.kind === "on" && t.event && t.event !== "*") events.add(t.event);
        n.states.forEach(walk);
      };
      walk(structure.root);
      replace(eventNames, [...events].sort().map((e) => h("option", { value: e })));
    }, (err) => replace(diagramSlot, notice("error", `The statechart could not be drawn: ${errorText(err)}`)));
  } else {
    replace(diagramSlot, empty("The statechart needs the instances.admin scope (to know the instance's version)."));
  }

  // live updates
  let who: Record<string, unknown> | null = null;
  try {
    who = actAs();
  } catch (err) {
    live.textContent = errorText(err);
  }
  const sub = subscribe(api.session, slug, instanceName, who, {
    update: (u: InstanceUpdate) => {
      showState(u);
      void loadHistory();
      void loadFull().catch(() => undefined);
    },
    status: (st, detail) => {
      live.textContent = st === "live" ? "● live" : st === "connecting" ? "connecting…" : detail ?? "live updates unavailable";
      live.className = `live ${st}`;
    },
  });
  page.onLeave(() => sub.close());
}
