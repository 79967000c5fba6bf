// Machines: the list, and a form to create one (then its page opens on the editor).

import { field, h, notice, replace, time, empty, busy } from "../dom";
import type { Page } from "../main";

export async function machinesPage(page: Page): Promise<void> {
  document.title = "Machines · statehost";
  const { api, main } = page;
  const list = h("div", { class: "list" });
  const slug = h("input", { type: "text", required: true, pattern: "[a-zA-Z0-9_\\-]{1,128}", placeholder: "e.g. toggle", autocomplete: "off" });
  const indexes = h("input", { type: "text", placeholder: "optional: email, plan", autocomplete: "off" });
  const status = h("div", { "aria-live": "polite" });
  const create = h("button", { type: "submit" }, "Create machine");
  const form = h(
    "form",
    { class: "card inline-form", "aria-label": "Create a machine" },
    h("h2", null, "New machine"),
    field("Name", slug, "Letters, digits, _ and -."),
    field("Indexes", indexes, "Comma-separated index names (instances can be searched by them)."),
    create,
    status,
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    void busy(create, status, async () => {
      const names = indexes.value.split(",").map((x) => x.trim()).filter(Boolean);
      await api.call("POST", "/machines", { body: { slug: slug.value.trim(), ...(names.length ? { indexes: names } : {}) } });
      location.hash = `#/machines/${encodeURIComponent(slug.value.trim())}`;
    });
  });
  replace(main, h("div", { class: "page-head" }, h("h1", null, "Machines")), list, form);
  try {
    const machines = await api.all<any>("/machines", "machines");
    if (!machines.length) {
      replace(list, empty("No machines yet. Create one below, then write its first version in the editor."));
      slug.focus();
      return;
    }
    replace(
      list,
      h(
        "table",
        { class: "table" },
        h("thead", null, h("tr", null, h("th", null, "Machine"), h("th", null, "Current version"), h("th", null, "Created"))),
        h(
          "tbody",
          null,
          machines.map((m) =>
            h(
              "tr",
              null,
              h("td", null, h("a", { href: `#/machines/${encodeURIComponent(m.slug)}` }, m.slug)),
              h("td", null, m.currentVersion ? h("code", null, m.currentVersion.id) : h("span", { class: "muted" }, "none yet")),
              h("td", null, time(m.createdAt)),
            ),
          ),
        ),
      ),
    );
  } catch (err) {
    replace(list, notice("error", `The machines could not be listed: ${err instanceof Error ? err.message : err}`));
  }
}
