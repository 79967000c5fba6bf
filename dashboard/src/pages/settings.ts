// API keys, identity providers and token providers: list, create, delete (wire-api 2.3, 2.7).

import { busy, empty, errorText, field, h, json, notice, replace, time } from "../dom";
import type { Page } from "../main";
import { parseJsonObject } from "./machine";

const SCOPES = [
  "events.write", "events.read", "state.read", "instances.read", "instances.write", "instances.admin", "indexes.read",
  "machines.read", "machines.write", "machines.admin", "machine-versions.read", "machine-versions.write",
  "logs.read", "org.keys.write", "tokens.admin", "analytics.read", "org.read", "org.write", "org-members.write",
];

async function listInto<T>(target: HTMLElement, load: () => Promise<T[]>, render: (rows: T[]) => HTMLElement, none: string): Promise<void> {
  try {
    const rows = await load();
    replace(target, rows.length ? render(rows) : empty(none));
  } catch (err) {
    replace(target, notice("error", `Could not list them: ${errorText(err)}`));
  }
}

export async function keysPage(page: Page): Promise<void> {
  document.title = "API keys · statehost";
  const { api, main } = page;
  const list = h("div");
  const listStatus = h("div", { "aria-live": "polite" });
  const load = () => listInto(list, () => api.all<any>("/keys", "keys"), (keys) =>
    h("table", { class: "table" },
      h("thead", null, h("tr", null, h("th", null, "Key"), h("th", null, "Name"), h("th", null, "Scopes"), h("th", null, "Created"), h("th", null, ""))),
      h("tbody", null, keys.map((k) => {
        const del = h("button", { type: "button", class: "small danger" }, "Delete");
        del.addEventListener("click", () => {
          if (!confirm(`Delete key ${k.name} (${k.id})? Tokens signed with it stop working at once.`)) return;
          void busy(del, listStatus, async () => {
            await api.call("DELETE", `/keys/${k.id}`);
            await load();
          });
        });
        return h("tr", null, h("td", null, h("code", null, k.id)), h("td", null, k.name), h("td", null, h("small", null, k.scopes.join(" "))), h("td", null, time(k.createdAt)), h("td", null, del));
      }))),
    "No API keys yet. Your backend signs end users' tokens with one (docs/quickstart.md, step 6).");
  const name = h("input", { type: "text", required: true, autocomplete: "off" });
  const use = h("select", null, h("option", { value: "production" }, "production: events.write, state.read, instances.write, indexes.read"), h("option", { value: "ci" }, "ci: machines and versions read/write"), h("option", { value: "" }, "custom scopes…"));
  const scopes = h("fieldset", { class: "scopes", hidden: true }, h("legend", null, "Scopes"), SCOPES.map((sc) => h("label", { class: "check" }, h("input", { type: "checkbox", value: sc }), ` ${sc}`)));
  use.addEventListener("change", () => (scopes.hidden = use.value !== ""));
  const status = h("div", { "aria-live": "polite" });
  const create = h("button", { type: "submit" }, "Create key");
  const form = h("form", { class: "card inline-form", "aria-label": "Create an API key" }, h("h2", null, "New key"), field("Name", name), field("Use", use), scopes, create, status);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    void busy(create, status, async () => {
      const body: Record<string, unknown> = { name: name.value.trim() };
      if (use.value) body.use = use.value;
      else body.scopes = [...scopes.querySelectorAll<HTMLInputElement>("input:checked")].map((c) => c.value);
      const key = await api.call("POST", "/keys", { body });
      replace(status, notice("ok", "Key created. Copy the secret now: it is never shown again."), h("pre", { class: "json secret" }, json(key)));
      await load();
    });
  });
  replace(main, h("div", { class: "page-head" }, h("h1", null, "API keys")), h("section", { class: "card" }, list, listStatus), form);
  await load();
}

export async function idpsPage(page: Page): Promise<void> {
  document.title = "Identity providers · statehost";
  const { api, main } = page;
  const list = h("div");
  const listStatus = h("div", { "aria-live": "polite" });
  const load = () => listInto(list, () => api.all<any>("/idps", "idps"), (idps) =>
    h("table", { class: "table" },
      h("thead", null, h("tr", null, h("th", null, "Audience"), h("th", null, "Issuer"), h("th", null, "Algorithms"), h("th", null, "Mapping"), h("th", null, ""))),
      h("tbody", null, idps.map((p) => {
        const del = h("button", { type: "button", class: "small danger" }, "Delete");
        del.addEventListener("click", () => {
          if (!confirm(`Delete the identity provider ${p.iss ?? p.aud}?`)) return;
          void busy(del, listStatus, async () => {
            await api.call("DELETE", "/idps", { body: { ...(p.aud ? { aud: p.aud } : {}), ...(p.iss ? { iss: p.iss } : {}) } });
            await load();
          });
        });
        return h("tr", null, h("td", null, p.aud ?? ""), h("td", null, p.iss ?? ""), h("td", null, p.algs.join(", ")), h("td", null, h("code", null, JSON.stringify(p.mapping))), h("td", null, del));
      }))),
    "No identity providers. Add one to exchange your auth provider's tokens for statehost tokens.");
  const aud = h("input", { type: "text", autocomplete: "off" });
  const iss = h("input", { type: "text", autocomplete: "off" });
  const algs = h("input", { type: "text", value: "RS256", autocomplete: "off" });
  const key = h("input", { type: "text", autocomplete: "off", placeholder: "base64url secret or public key (or use a JWKS URL)" });
  const jwks = h("input", { type: "url", autocomplete: "off", placeholder: "https://…/.well-known/jwks.json" });
  const mapping = h("textarea", { rows: 3, spellcheck: "false", value: '{"sub.$": "$.sub"}' });
  const status = h("div", { "aria-live": "polite" });
  const save = h("button", { type: "submit" }, "Save identity provider");
  const form = h("form", { class: "card inline-form", "aria-label": "Add an identity provider" }, h("h2", null, "Add or update"),
    field("Audience (aud)", aud), field("Issuer (iss)", iss, "One of audience and issuer may be blank, not both."),
    field("Algorithms", algs, "Comma-separated, e.g. RS256, HS256."), field("Key", key), field("JWKS URL", jwks), field("Mapping", mapping, "Claims for the token provider: \"name.$\" keys take a JSONPath."), save, status);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    void busy(save, status, async () => {
      const body: Record<string, unknown> = {
        algs: algs.value.split(",").map((a) => a.trim()).filter(Boolean),
        mapping: parseJsonObject(mapping.value, "The mapping") ?? {},
      };
      if (aud.value.trim()) body.aud = aud.value.trim();
      if (iss.value.trim()) body.iss = iss.value.trim();
      if (key.value.trim()) body.key = key.value.trim();
      if (jwks.value.trim()) body.jwksUrl = jwks.value.trim();
      await api.call("POST", "/idps", { body });
      replace(status, notice("ok", "Saved."));
      await load();
    });
  });
  replace(main, h("div", { class: "page-head" }, h("h1", null, "Identity providers")), h("section", { class: "card" }, list, listStatus), form);
  await load();
}

export async function tokenProvidersPage(page: Page): Promise<void> {
  document.title = "Token providers · statehost";
  const { api, main } = page;
  const list = h("div");
  const listStatus = h("div", { "aria-live": "polite" });
  const load = () => listInto(list, () => api.all<any>("/token-providers", "tokenProviders"), (providers) =>
    h("table", { class: "table" },
      h("thead", null, h("tr", null, h("th", null, "Service"), h("th", null, "Key"), h("th", null, "Mapping"), h("th", null, ""))),
      h("tbody", null, providers.map((p) => {
        const del = h("button", { type: "button", class: "small danger" }, "Delete");
        del.addEventListener("click", () => {
          if (!confirm(`Delete the token provider ${p.service}?`)) return;
          void busy(del, listStatus, async () => {
            await api.call("DELETE", `/token-providers/${encodeURIComponent(p.service)}`);
            await load();
          });
        });
        return h("tr", null, h("td", null, p.service), h("td", null, h("code", null, p.keyId)), h("td", null, h("code", null, JSON.stringify(p.mapping))), h("td", null, del));
      }))),
    "No token providers.");
  const service = h("input", { type: "text", required: true, autocomplete: "off" });
  const keyId = h("select", null);
  const mapping = h("textarea", { rows: 3, spellcheck: "false", value: '{"sub.$": "$.sub"}' });
  const status = h("div", { "aria-live": "polite" });
  const save = h("button", { type: "submit" }, "Save token provider");
  const form = h("form", { class: "card inline-form", "aria-label": "Add a token provider" }, h("h2", null, "Add or update"),
    field("Service", service), field("Signing key", keyId), field("Mapping", mapping, "The authContext of the tokens it issues."), save, status);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    void busy(save, status, async () => {
      await api.call("POST", "/token-providers", { body: { service: service.value.trim(), keyId: keyId.value, mapping: parseJsonObject(mapping.value, "The mapping") ?? {} } });
      replace(status, notice("ok", "Saved."));
      await load();
    });
  });
  replace(main, h("div", { class: "page-head" }, h("h1", null, "Token providers")), h("section", { class: "card" }, list, listStatus), form);
  api.all<any>("/keys", "keys").then((keys) => replace(keyId, keys.map((k) => h("option", { value: k.id }, `${k.name} (${k.id})`))), (err) => replace(status, notice("error", `The keys could not be listed: ${errorText(err)}`)));
  await load();
}
