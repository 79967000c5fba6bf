// Sign in with the admin credentials (.statehost/admin.json, pasted whole or just its adminToken),
// or any token the server accepts (a key-signed token). The token is checked with GET /machines
// and kept in localStorage (docs/threat-model.md says why and what it means).

import { Api, ApiError, saveSession, Session } from "../api";
import { field, h, notice, replace } from "../dom";

export function signInPage(main: HTMLElement, done: () => void): void {
  const credentials = h("textarea", { rows: 6, required: true, spellcheck: "false", autocomplete: "off", placeholder: '{"url": "…", "orgId": "org_…", "adminToken": "…"}  or a token' });
  const org = h("input", { type: "text", autocomplete: "off", placeholder: "org_… (optional)" });
  const status = h("div", { "aria-live": "polite" });
  const submit = h("button", { type: "submit" }, "Sign in");
  const form = h(
    "form",
    { class: "card signin", novalidate: true },
    h("h1", null, "Sign in to statehost"),
    h("p", null, "Paste the admin credentials the server wrote on first start (", h("code", null, ".statehost/admin.json"), "), or a token signed with one of your API keys."),
    field("Credentials or token", credentials),
    field("Organization", org, "Needed only when your admin user belongs to several organizations."),
    submit,
    status,
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    status.replaceChildren();
    const session = parseCredentials(credentials.value, org.value.trim());
    if (typeof session === "string") {
      status.replaceChildren(notice("error", session));
      credentials.focus();
      return;
    }
    submit.disabled = true;
    try {
      await new Api(session).call("GET", "/machines");
    } catch (err) {
      // A token without machines.read is still a token: only an unusable one is refused here.
      if (!(err instanceof ApiError) || err.status === 0 || err.code === "missing-user" || err.code === "specify-org" || err.code === "missing-org") {
        status.replaceChildren(notice("error", `This token does not work here: ${err instanceof Error ? err.message : err}`));
        submit.disabled = false;
        return;
      }
    }
    saveSession(session);
    done();
  });
  replace(main, form);
  credentials.focus();
}

export function parseCredentials(text: string, org: string): Session | string {
  const raw = text.trim();
  if (!raw) return "Paste the credentials or a token.";
  if (raw.startsWith("{")) {
    let parsed: any;
    try {
      parsed = JSON.parse(raw);
    } catch {
      return "That looks like JSON but is not valid JSON; paste the whole file.";
    }
    const token = parsed.adminToken || parsed.token || parsed.accessToken;
    if (typeof token !== "string") return "The JSON has no adminToken.";
    return { token, orgId: org || (typeof parsed.orgId === "string" ? parsed.orgId : undefined) };
  }
  if (raw.split(".").length !== 3) return "A token has three parts separated by dots (a JWT).";
  return { token: raw, orgId: org || undefined };
}
