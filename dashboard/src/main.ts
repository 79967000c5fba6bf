// The dashboard's shell: hash routing (#/machines/toggle/i/alice), the sign-in gate, the nav.
// Every page is a function that renders into <main> and returns what to stop when leaving it.

import { Api, loadSession, saveSession, tokenInfo } from "./api";
import { h, replace } from "./dom";
import { instancePage } from "./pages/instance";
import { logsPage } from "./pages/logs";
import { machinePage } from "./pages/machine";
import { machinesPage } from "./pages/machines";
import { idpsPage, keysPage, tokenProvidersPage } from "./pages/settings";
import { signInPage } from "./pages/signin";

export interface Page {
  api: Api;
  main: HTMLElement;
  params: URLSearchParams;
  /** Stops when the page is left (subscriptions, polling). */
  onLeave(fn: () => void): void;
}

type Render = (page: Page, ...args: string[]) => void | Promise<void>;

const ROUTES: [RegExp, Render, string][] = [
  [/^\/?$/, machinesPage, "machines"],
  [/^\/machines$/, machinesPage, "machines"],
  [/^\/machines\/([^/]+)$/, machinePage, "machines"],
  [/^\/machines\/([^/]+)\/i\/([^/]+)$/, instancePage, "machines"],
  [/^\/logs$/, logsPage, "logs"],
  [/^\/keys$/, keysPage, "keys"],
  [/^\/identity-providers$/, idpsPage, "idps"],
  [/^\/token-providers$/, tokenProvidersPage, "tokens"],
];

const NAV: [string, string, string][] = [
  ["#/machines", "Machines", "machines"],
  ["#/logs", "Logs", "logs"],
  ["#/keys", "API keys", "keys"],
  ["#/identity-providers", "Identity providers", "idps"],
  ["#/token-providers", "Token providers", "tokens"],
];

let leaving: (() => void)[] = [];

async function route(): Promise<void> {
  for (const fn of leaving.splice(0)) fn();
  const main = document.getElementById("main")!;
  const nav = document.getElementById("nav")!;
  const who = document.getElementById("who")!;
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, query] = raw.split("?", 2);
  const session = loadSession();
  if (!session || path === "/signin") {
    replace(nav);
    replace(who);
    document.title = "Sign in · statehost";
    signInPage(main, () => {
      location.hash = "#/machines";
      if (path === "/signin" || raw === "/") void route();
    });
    return;
  }
  const info = tokenInfo(session.token);
  replace(
    who,
    h("span", { class: "muted", title: info.expires ? `token expires ${info.expires.toLocaleString()}` : "" }, info.kind === "admin" ? "admin" : info.kind === "key" ? "API key token" : "token"),
    session.orgId ? h("code", { class: "org" }, session.orgId) : null,
    h("button", { type: "button", class: "small", onclick: () => { saveSession(null); location.hash = "#/signin"; } }, "Sign out"),
  );
  for (const [pattern, render, section] of ROUTES) {
    const match = pattern.exec(path);
    if (!match) continue;
    replace(nav, ...NAV.map(([href, text, key]) => h("a", { href, "aria-current": key === section ? "page" : null }, text)));
    const page: Page = {
      api: new Api(session),
      main,
      params: new URLSearchParams(query || ""),
      onLeave: (fn) => leaving.push(fn),
    };
    main.replaceChildren(h("p", { class: "muted" }, "Loading…"));
    try {
      await render(page, ...match.slice(1).map(decodeURIComponent));
    } catch (err) {
      replace(main, h("h1", null, "Something went wrong"), h("p", { class: "notice error", role: "alert" }, err instanceof Error ? err.message : String(err)));
    }
    return;
  }
  replace(main, h("h1", null, "Not found"), h("p", null, "No page here. ", h("a", { href: "#/machines" }, "Go to the machines.")));
}

window.addEventListener("hashchange", () => void route());
void route();
