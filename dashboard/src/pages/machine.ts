// One machine: its instances (list, create, search by index), its versions (with their diagram),
// a new version from the editor (uploaded through the same three calls as the official client;
// the server's bundling errors are marked at their line), migrations, and deletion.

import { ApiError, tokenInfo, type Diagnostic } from "../api";
import { busy, empty, errorText, field, h, notice, replace, time } from "../dom";
import { hmacSha256 } from "../hmac";
import type { Page } from "../main";

const STARTER = `import { createMachine, assign } from "xstate";
import type { AllowRead, AllowWrite } from "@statebacked/machine";

// Who may read an instance, and who may create it or send it events.
export const allowRead: AllowRead = ({ machineInstanceName, authContext }) =>
  machineInstanceName === authContext.sub;
export const allowWrite: AllowWrite = ({ machineInstanceName, authContext }) =>
  machineInstanceName === authContext.sub;

type Context = { public: { toggles: number } };

export default createMachine<Context>({
  id: "toggle",
  predictableActionArguments: true,
  context: { public: { toggles: 0 } },
  initial: "off",
  states: {
    off: { on: { toggle: "on" } },
    on: {
      entry: assign({ public: (ctx) => ({ toggles: ctx.public.toggles + 1 }) }),
      on: { toggle: "off" },
    },
  },
});
`;

const MIGRATION_STARTER = `// Maps an instance of the old version onto the new one (docs/versions.md).
export function upgradeState(path: string[], context: Record<string, unknown>): string[] {
  return path;
}
export function upgradeContext(oldPaths: string[][], newPaths: string[][], context: Record<string, unknown>) {
  return context;
}
`;

export function parseJsonObject(text: string, what: string): Record<string, unknown> | null {
  if (!text.trim()) return null;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new Error(`${what} is not valid JSON: ${errorText(err)}`);
  }
  if (!value || typeof value !== "object" || Array.isArray(value)) throw new Error(`${what} must be a JSON object`);
  return value as Record<string, unknown>;
}

export async function machinePage(page: Page, slug: string): Promise<void> {
  document.title = `${slug} · statehost`;
  const { api, main } = page;
  const admin = tokenInfo(api.session.token).kind === "admin";
  const m = encodeURIComponent(slug);
  const [machineR, versionsR] = await Promise.allSettled([api.call("GET", `/machines/${m}`), api.all<any>(`/machines/${m}/v`, "versions")]);
  if (machineR.status === "rejected") {
    const err = machineR.reason;
    replace(main, h("h1", null, slug), notice("error", err instanceof ApiError && err.status === 404 ? `There is no machine named ${slug}.` : errorText(err)), h("p", null, h("a", { href: "#/machines" }, "All machines")));
    return;
  }
  const machine = machineR.value.machine;
  const versions: any[] = versionsR.status === "fulfilled" ? versionsR.value : [];
  const current: string | undefined = machine.currentVersion?.id;

  // --- instances -------------------------------------------------------------------------------
  const instances = h("div", { class: "list" });
  const loadInstances = async () => {
    try {
      const rows = await api.all<any>(`/machines/${m}/i`, "instances");
      if (!rows.length) {
        replace(instances, empty(current ? "No instances yet. Create one below." : "No instances yet. Deploy a version first, then create an instance."));
        return;
      }
      replace(
        instances,
        h("table", { class: "table" },
          h("thead", null, h("tr", null, h("th", null, "Instance"), h("th", null, "Status"), h("th", null, "Version"), h("th", null, "Created"))),
          h("tbody", null, rows.map((r) => h("tr", null,
            h("td", null, h("a", { href: `#/machines/${m}/i/${encodeURIComponent(r.slug)}` }, r.slug)),
            h("td", null, h("span", { class: `badge ${r.status}` }, r.status)),
            h("td", null, h("code", null, r.machineVersion?.id ?? "")),
            h("td", null, time(r.createdAt)),
          )))),
      );
    } catch (err) {
      replace(instances, notice("error", `The instances could not be listed: ${errorText(err)}`));
    }
  };
  const instName = h("input", { type: "text", required: true, pattern: "[a-zA-Z0-9_\\-]{1,128}", autocomplete: "off", placeholder: "e.g. alice" });
  const instContext = h("textarea", { rows: 2, spellcheck: "false", placeholder: '{"public": {}}  (optional initial context)' });
  const instAct = h("textarea", { rows: 1, spellcheck: "false" });
  let actEdited = false;
  instAct.addEventListener("input", () => (actEdited = true));
  instName.addEventListener("input", () => {
    if (!actEdited) instAct.value = instName.value ? JSON.stringify({ sub: instName.value }) : "";
  });
  const instStatus = h("div", { "aria-live": "polite" });
  const instCreate = h("button", { type: "submit" }, "Create instance");
  const instForm = h("form", { class: "inline-form", "aria-label": "Create an instance" },
    field("Instance name", instName),
    field("Initial context", instContext),
    admin ? field("Act as (authContext)", instAct, "What allowWrite sees as authContext. Empty: your own identity.") : null,
    instCreate, instStatus);
  instForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    void busy(instCreate, instStatus, async () => {
      const context = parseJsonObject(instContext.value, "The initial context");
      const act = admin ? parseJsonObject(instAct.value, "Act as") : null;
      const name = instName.value.trim();
      await api.call("POST", `/machines/${m}`, { body: { slug: name, ...(context ? { context } : {}) }, act });
      location.hash = `#/machines/${m}/i/${encodeURIComponent(name)}`;
    });
  });

  // --- index search ----------------------------------------------------------------------------
  let search: HTMLElement | null = null;
  if (machine.indexes?.length) {
    const index = h("select", null, machine.indexes.map((i: string) => h("option", { value: i }, i)));
    const op = h("select", null, ["eq", "ne", "gt", "gte", "lt", "lte"].map((o) => h("option", { value: o }, o)));
    const value = h("input", { type: "text", autocomplete: "off" });
    const results = h("div", { "aria-live": "polite" });
    const go = h("button", { type: "submit" }, "Search");
    const form = h("form", { class: "inline-form row", "aria-label": "Search instances by index" }, field("Index", index), field("Operator", op), field("Value", value), go);
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      void busy(go, results, async () => {
        const query: Record<string, string> = { limit: "100" };
        if (value.value) {
          query.op = op.value;
          query.value = value.value;
        }
        const found = await api.call("GET", `/machines/${m}/indexes/${encodeURIComponent(index.value)}/query`, { query });
        const rows: any[] = found.instances || [];
        replace(results, rows.length
          ? h("ul", { class: "plain" }, rows.map((r) => h("li", null, h("a", { href: `#/machines/${m}/i/${encodeURIComponent(r.machineInstanceName ?? r.slug)}` }, r.machineInstanceName ?? r.slug), " ", h("code", null, String(r.value ?? r.indexValue ?? "")))))
          : empty("No instance matches."));
      });
    });
    search = h("section", { class: "card" }, h("h2", null, "Search by index"), form, results);
  }

  // --- versions and diagrams -------------------------------------------------------------------
  const diagramSlot = h("div");
  const showDiagram = async (versionId: string, button: HTMLButtonElement | null) => {
    await busy(button, diagramSlot, async () => {
      diagramSlot.replaceChildren(h("p", { class: "muted" }, "Laying out the statechart…"));
      const [{ drawDiagram }, structure] = await Promise.all([import("../diagram"), api.call("GET", `/machines/${m}/v/${versionId}/structure`)]);
      const diagram = await drawDiagram(structure);
      replace(diagramSlot, h("h3", null, "Version ", h("code", null, versionId)), diagram.element);
    });
  };
  const versionsList = versions.length
    ? h("table", { class: "table" },
        h("thead", null, h("tr", null, h("th", null, "Version"), h("th", null, "Created"), h("th", null, "Client"), h("th", null, ""))),
        h("tbody", null, versions.map((v) => {
          const button = h("button", { type: "button", class: "small" }, "Diagram");
          button.addEventListener("click", () => void showDiagram(v.id, button));
          return h("tr", null,
            h("td", null, h("code", null, v.id), v.id === current ? h("span", { class: "badge running" }, "current") : null),
            h("td", null, time(v.createdAt)),
            h("td", null, v.clientInfo || ""),
            h("td", null, button));
        })))
    : versionsR.status === "rejected"
      ? notice("error", `The versions could not be listed: ${errorText(versionsR.reason)}`)
      : empty("No versions yet: write the machine in the editor below and deploy it.");

  // --- new version from the editor -------------------------------------------------------------
  const draftKey = `statehost.dashboard.draft.${slug}`;
  const editorHost = h("div", { class: "editor" });
  const diagnosticsList = h("div", { "aria-live": "polite", class: "deploy-status" });
  const major = h("select", null, h("option", { value: "" }, "detect from imports (xstate = 4)"), h("option", { value: "4" }, "XState 4"), h("option", { value: "5" }, "XState 5"));
  const makeCurrent = h("input", { type: "checkbox", checked: true });
  const deploy = h("button", { type: "button", class: "primary" }, "Deploy version");
  const editorSection = h("section", { class: "card", id: "new-version" },
    h("h2", null, "New version"),
    h("p", { class: "muted" }, "A module that default-exports an XState machine and exports allowRead and allowWrite (docs/machines.md). The server bundles it with esbuild and checks it in its sandbox."),
    editorHost,
    h("div", { class: "row" }, field("XState", major), h("label", { class: "check" }, makeCurrent, " make it the current version"), deploy),
    diagnosticsList);
  const { createEditor } = await import("../editor");
  const editor = createEditor(editorHost, localStorage.getItem(draftKey) ?? STARTER, `Source of a new version of ${slug}`, () => {
    localStorage.setItem(draftKey, editor.text());
  });
  deploy.addEventListener("click", () => {
    void busy(deploy, diagnosticsList, async () => {
      editor.showDiagnostics([]);
      diagnosticsList.replaceChildren(h("p", { class: "muted" }, "Bundling and checking…"));
      try {
        const id = await api.uploadVersion(m, editor.text(), {
          makeCurrent: makeCurrent.checked,
          xstateMajor: major.value ? (Number(major.value) as 4 | 5) : undefined,
          filename: "machine.ts",
        });
        localStorage.setItem(draftKey, editor.text()); // the next version starts from this one
        sessionStorage.setItem("statehost.dashboard.flash", `Version ${id} deployed${makeCurrent.checked ? " and made current" : ""}.`);
        await machinePage(page, slug);
      } catch (err) {
        if (err instanceof ApiError && err.diagnostics.length) {
          editor.showDiagnostics(err.diagnostics);
          replace(diagnosticsList, notice("error", "The server could not bundle this version:"), h("ul", { class: "diagnostics" }, err.diagnostics.map((d) => diagnosticItem(d, editor))));
          const first = err.diagnostics.find((d) => d.line);
          if (first?.line) editor.goTo(first.line, first.column);
          return;
        }
        throw err;
      }
    });
  });

  // --- migrations ------------------------------------------------------------------------------
  let migrations: HTMLElement | null = null;
  if (versions.length >= 2) {
    const opts = () => versions.map((v) => h("option", { value: v.id }, `${v.id}${v.id === current ? " (current)" : ""}`));
    const from = h("select", null, opts());
    const to = h("select", null, opts());
    if (versions.length > 1) from.selectedIndex = 1;
    const host = h("div", { class: "editor small-editor" });
    const status = h("div", { "aria-live": "polite" });
    const upload = h("button", { type: "button" }, "Upload migration");
    migrations = h("section", { class: "card" }, h("h2", null, "Migration between versions"),
      h("p", { class: "muted" }, "Instances move to a version through a chain of migrations (set their desired version on their page)."),
      h("div", { class: "row" }, field("From", from), field("To", to)), host, upload, status);
    const migrationEditor = createEditor(host, MIGRATION_STARTER, "Source of a migration");
    upload.addEventListener("click", () => {
      void busy(upload, status, async () => {
        migrationEditor.showDiagnostics([]);
        try {
          const id = await api.uploadMigration(m, from.value, to.value, migrationEditor.text());
          replace(status, notice("ok", `Migration ${id} uploaded.`));
        } catch (err) {
          if (err instanceof ApiError && err.diagnostics.length) {
            migrationEditor.showDiagnostics(err.diagnostics);
            replace(status, notice("error", err.message), h("ul", { class: "diagnostics" }, err.diagnostics.map((d) => diagnosticItem(d, migrationEditor))));
            return;
          }
          throw err;
        }
      });
    });
  }

  // --- delete ----------------------------------------------------------------------------------
  const delStatus = h("div", { "aria-live": "polite" });
  const delButton = h("button", { type: "button", class: "danger" }, "Delete machine…");
  delButton.addEventListener("click", () => {
    const typed = prompt(`Delete the machine ${slug} and all its versions forever? It must have no instances. Type its name to confirm.`);
    if (typed === null) return;
    void busy(delButton, delStatus, async () => {
      if (typed !== slug) throw new Error("The name did not match; nothing was deleted.");
      await api.call("DELETE", `/machines/${m}`, { body: { dangerDataWillBeDeletedForever: true, hmacSha256OfMachineNameWithMachineNameKey: await hmacSha256(slug, slug) } });
      location.hash = "#/machines";
    });
  });

  const flash = sessionStorage.getItem("statehost.dashboard.flash");
  sessionStorage.removeItem("statehost.dashboard.flash");
  replace(
    main,
    h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("a", { href: "#/machines" }, "Machines"), " / ", slug),
    h("div", { class: "page-head" },
      h("h1", null, slug),
      h("div", { class: "meta" },
        current ? h("span", null, "current version ", h("code", null, current)) : h("span", { class: "badge paused" }, "no version yet"),
        machine.indexes?.length ? h("span", null, "indexes: ", machine.indexes.join(", ")) : null,
        h("a", { href: `#/logs?machine=${m}` }, "Logs"))),
    flash ? notice("ok", flash) : null,
    h("div", { class: "grid" },
      h("section", { class: "card" }, h("h2", null, "Instances"), instances, h("h3", null, "New instance"), instForm),
      h("section", { class: "card" }, h("h2", null, "Versions"), versionsList, diagramSlot)),
    search,
    editorSection,
    migrations,
    h("section", { class: "card danger-zone" }, h("h2", null, "Danger zone"), delButton, delStatus),
  );
  await loadInstances();
  if (current) void showDiagram(current, null);
  if (!versions.length) editor.focus();
}

function diagnosticItem(d: Diagnostic, editor: { goTo(line: number, column?: number): void }): HTMLElement {
  const where = d.line ? `${d.file ?? "machine.ts"}:${d.line}${d.column ? `:${d.column}` : ""}` : d.file ?? "";
  return h("li", { class: "diagnostic", "data-line": d.line ?? "" },
    d.line ? h("button", { type: "button", class: "link", onclick: () => editor.goTo(d.line!, d.column) }, where) : where,
    " ", d.message,
    d.lineText ? h("pre", null, d.lineText) : null);
}
