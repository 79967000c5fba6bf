// The wire API, as any client speaks it (../shared/spec/wire-api.md): bearer token, optional org
// header, JSON bodies, {error, code, parameter} errors. The dashboard has no other way in.

export interface Session {
  token: string;
  orgId?: string;
}

export interface Diagnostic {
  message: string;
  file?: string;
  line?: number;
  column?: number;
  lineText?: string;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly parameter?: string,
    readonly diagnostics: Diagnostic[] = [],
  ) {
    super(status ? `${message} (${status}${code ? `, ${code}` : ""})` : message);
  }
}

const STORAGE_KEY = "statehost.dashboard.session";

/** Where the API is: the dashboard is served at <base>/dashboard, the API at <base>. */
export const apiBase = location.pathname.replace(/\/dashboard\/?.*$/, "");

export function loadSession(): Session | null {
  try {
    const raw = localStorage.getItem(STORAGE_KEY);
    const parsed = raw ? (JSON.parse(raw) as Session) : null;
    return parsed && typeof parsed.token === "string" ? parsed : null;
  } catch {
    return null;
  }
}

export function saveSession(session: Session | null): void {
  if (session) localStorage.setItem(STORAGE_KEY, JSON.stringify(session));
  else localStorage.removeItem(STORAGE_KEY);
}

/** What the token is, from its unverified header and claims (the server decides what it may do). */
export function tokenInfo(token: string): { kind: "admin" | "key" | "unknown"; expires?: Date; sub?: string } {
  try {
    const [header, payload] = token.split(".").slice(0, 2).map((p) => JSON.parse(atob(p.replace(/-/g, "+").replace(/_/g, "/"))));
    const kind = header.kid === "statehost-admin" ? "admin" : String(header.kid || "").startsWith("sbk_") ? "key" : "unknown";
    return { kind, expires: typeof payload.exp === "number" ? new Date(payload.exp * 1000) : undefined, sub: payload.sub };
  } catch {
    return { kind: "unknown" };
  }
}

export interface CallOptions {
  body?: unknown;
  act?: Record<string, unknown> | null;
  query?: Record<string, string | undefined>;
}

export class Api {
  constructor(readonly session: Session) {}

  headers(act?: Record<string, unknown> | null): Record<string, string> {
    const headers: Record<string, string> = {
      authorization: `Bearer ${this.session.token}`,
      "content-type": "application/json",
    };
    if (this.session.orgId) headers["x-statebacked-org-id"] = this.session.orgId;
    if (act) headers["x-statebacked-act"] = JSON.stringify(act);
    return headers;
  }

  async call<T = any>(method: string, path: string, options: CallOptions = {}): Promise<T> {
    const url = new URL(apiBase + path, location.origin);
    for (const [k, v] of Object.entries(options.query || {})) if (v !== undefined && v !== "") url.searchParams.set(k, v);
    let response: Response;
    try {
      response = await fetch(url, {
        method,
        headers: this.headers(options.act),
        body: options.body === undefined ? undefined : JSON.stringify(options.body),
      });
    } catch (err) {
      throw new ApiError(0, "network", `the server cannot be reached: ${err instanceof Error ? err.message : err}`);
    }
    return parse<T>(response);
  }

  /** Every page of a list endpoint (the wire API's cursor), up to `max` items. */
  async all<T>(path: string, key: string, max = 1000, query: Record<string, string> = {}): Promise<T[]> {
    const items: T[] = [];
    let cursor: string | undefined;
    do {
      const page: any = await this.call("GET", path, { query: { ...query, cursor } });
      items.push(...(page[key] || []));
      cursor = page.cursor;
    } while (cursor && items.length < max);
    return items;
  }

  /**
   * A new version in the three steps the official client uses (wire-api 3.6): provisional create,
   * multipart upload to the pre-signed URL (no authorization header), finalize.
   */
  async uploadVersion(machine: string, source: string, options: { makeCurrent: boolean; xstateMajor?: 4 | 5; filename: string }): Promise<string> {
    const provisional = await this.call("POST", `/machines/${machine}/v`);
    await this.upload(provisional.codeUploadUrl, provisional.codeUploadFields, source, options.filename);
    const body: Record<string, unknown> = { clientInfo: "statehost dashboard", makeCurrent: options.makeCurrent };
    if (options.xstateMajor) body.xstateMajor = options.xstateMajor;
    const done = await this.call("PUT", `/machines/${machine}/v/${provisional.machineVersionId}`, { body });
    return done.machineVersionId as string;
  }

  async uploadMigration(machine: string, from: string, to: string, source: string): Promise<string> {
    const provisional = await this.call("POST", `/machines/${machine}/migrations`, {
      body: { fromMachineVersionId: from, toMachineVersionId: to },
    });
    await this.upload(provisional.codeUploadUrl, provisional.codeUploadFields, source, "migration.ts");
    const done = await this.call("PUT", `/machines/${machine}/migrations/${provisional.machineVersionMigrationId}`);
    return done.machineVersionMigrationId as string;
  }

  private async upload(url: string, fields: Record<string, string>, source: string, filename: string): Promise<void> {
    const form = new FormData();
    for (const [k, v] of Object.entries(fields)) form.append(k, v);
    form.append("content-type", "application/javascript");
    form.append("file", new Blob([source], { type: "application/javascript" }), filename);
    let response: Response;
    try {
      response = await fetch(url, { method: "POST", body: form });
    } catch (err) {
      throw new ApiError(0, "network", `the upload failed: ${err instanceof Error ? err.message : err}`);
    }
    await parse(response);
  }
}

async function parse<T>(response: Response): Promise<T> {
  const text = await response.text();
  let body: any = null;
  if (text) {
    try {
      body = JSON.parse(text);
    } catch {
      body = null;
    }
  }
  if (!response.ok) {
    throw new ApiError(
      response.status,
      body?.code || "",
      body?.error || response.statusText || "the request failed",
      body?.parameter,
      Array.isArray(body?.diagnostics) ? body.diagnostics : [],
    );
  }
  return (body ?? {}) as T;
}
