// web/fetch.js: Headers, Request, Response and fetch. The guest never touches the network: fetch
// queues an outbox request of kind "fetch" (host.d.ts) that the host performs after committing the
// round, and settles with a FetchResult from which the Response is built. Bodies are whole byte
// arrays, not streams, so `body` (a ReadableStream) is not supported.

(() => {
  const define = (name, value) =>
    Object.defineProperty(globalThis, name, { value, writable: true, configurable: true, enumerable: false });
  const illegal = {};
  // Captured now: user code may replace the globals later.
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();
  const URLCtor = URL;
  const URLSearchParamsCtor = URLSearchParams;
  const AbortSignalCtor = AbortSignal;
  const AbortControllerCtor = AbortController;

  const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
  const NULL_BODY_STATUSES = [101, 103, 204, 205, 304];
  const REDIRECT_STATUSES = [301, 302, 303, 307, 308];

  // ---- Headers --------------------------------------------------------------------------------------
  const headersState = new WeakMap();  // Headers -> { list: [[lowercased name, value]], guard }
  const hs = (self) => {
    const s = headersState.get(self);
    if (!s) throw new TypeError("Illegal invocation: not a Headers");
    return s;
  };

  function checkName(name) {
    name = String(name);
    if (!TOKEN.test(name)) throw new TypeError(`Headers: invalid header name ${JSON.stringify(name)}`);
    return name.toLowerCase();
  }

  function normalizeValue(value) {
    value = String(value).replace(/^[\t\n\r ]+|[\t\n\r ]+$/g, "");
    if (/[\0\r\n]/.test(value) || /[^\x00-\xff]/.test(value)) throw new TypeError(`Headers: invalid header value ${JSON.stringify(value)}`);
    return value;
  }

  function checkMutable(s) {
    if (s.guard === "immutable") throw new TypeError("Headers: these headers are immutable");
  }

  function fillHeaders(headers, init) {
    if (init === undefined || init === null) {
      if (init === null) throw new TypeError("Headers: init must be an object");
      return;
    }
    if (typeof init !== "object" && typeof init !== "function") throw new TypeError("Headers: init must be an object");
    if (headersState.has(init)) {
      for (const [k, v] of hs(init).list) headers.append(k, v);
    } else if (typeof init[Symbol.iterator] === "function") {
      for (const pair of init) {
        if (pair === null || typeof pair !== "object" || typeof pair[Symbol.iterator] !== "function") {
          throw new TypeError("Headers: each header must be a [name, value] pair");
        }
        const items = Array.from(pair);
        if (items.length !== 2) throw new TypeError("Headers: each header must be a [name, value] pair");
        headers.append(items[0], items[1]);
      }
    } else {
      for (const key of Reflect.ownKeys(init)) {
        if (typeof key !== "string") continue;
        const d = Reflect.getOwnPropertyDescriptor(init, key);
        if (d && d.enumerable) headers.append(key, init[key]);
      }
    }
  }

  // Names sorted, values of one name joined by ", " (set-cookie excepted), as iteration must show them.
  function sortAndCombine(list) {
    const names = Array.from(new Set(list.map(([k]) => k))).sort();
    const out = [];
    for (const name of names) {
      const values = list.filter(([k]) => k === name).map(([, v]) => v);
      if (name === "set-cookie") for (const v of values) out.push([name, v]);
      else out.push([name, values.join(", ")]);
    }
    return out;
  }

  class Headers {
    constructor(init = undefined) {
      headersState.set(this, { list: [], guard: "none" });
      fillHeaders(this, init);
    }

    append(name, value) {
      const s = hs(this);
      name = checkName(name);
      value = normalizeValue(value);
      checkMutable(s);
      s.list.push([name, value]);
    }

    delete(name) {
      const s = hs(this);
      name = checkName(name);
      checkMutable(s);
      s.list = s.list.filter(([k]) => k !== name);
    }

    get(name) {
      const s = hs(this);
      name = checkName(name);
      const values = s.list.filter(([k]) => k === name).map(([, v]) => v);
      return values.length ? values.join(", ") : null;
    }

    getSetCookie() {
      return hs(this).list.filter(([k]) => k === "set-cookie").map(([, v]) => v);
    }

    has(name) {
      const s = hs(this);
      name = checkName(name);
      return s.list.some(([k]) => k === name);
    }

    set(name, value) {
      const s = hs(this);
      name = checkName(name);
      value = normalizeValue(value);
      checkMutable(s);
      const i = s.list.findIndex(([k]) => k === name);
      if (i < 0) s.list.push([name, value]);
      else {
        s.list[i] = [name, value];
        s.list = s.list.filter(([k], j) => j <= i || k !== name);
      }
    }

    forEach(callback, thisArg = undefined) {
      if (typeof callback !== "function") throw new TypeError("Headers.forEach: the callback must be a function");
      for (const [k, v] of sortAndCombine(hs(this).list)) callback.call(thisArg, v, k, this);
    }

    *entries() { yield* sortAndCombine(hs(this).list); }
    *keys() { for (const [k] of sortAndCombine(hs(this).list)) yield k; }
    *values() { for (const [, v] of sortAndCombine(hs(this).list)) yield v; }
  }
  Object.defineProperty(Headers.prototype, Symbol.iterator, { value: Headers.prototype.entries, writable: true, configurable: true });
  Object.defineProperty(Headers.prototype, Symbol.toStringTag, { value: "Headers", configurable: true });

  function headersWith(list, guard) {
    const h = new Headers();
    const s = hs(h);
    s.list = list.map(([k, v]) => [k, v]);
    s.guard = guard;
    return h;
  }

  // ---- bodies ---------------------------------------------------------------------------------------
  // body state: { bytes: Uint8Array | null, used: boolean, error?: the abort reason of a fetched body }

  function extractBody(body, who) {
    if (body === undefined || body === null) return { bytes: null, type: null };
    if (typeof body === "string") return { bytes: encoder.encode(body), type: "text/plain;charset=UTF-8" };
    if (body instanceof ArrayBuffer) return { bytes: new Uint8Array(body.slice(0)), type: null };
    if (ArrayBuffer.isView(body)) return { bytes: new Uint8Array(body.buffer, body.byteOffset, body.byteLength).slice(), type: null };
    if (body instanceof URLSearchParamsCtor) {
      return { bytes: encoder.encode(body.toString()), type: "application/x-www-form-urlencoded;charset=UTF-8" };
    }
    if (typeof body === "object" || typeof body === "function" || typeof body === "symbol") {
      if (body !== null && (typeof body[Symbol.asyncIterator] === "function" || typeof body.getReader === "function")) {
        throw new H.NotSupportedError(`${who} with a streaming body`);
      }
      throw new TypeError(`${who}: the body must be a string, an ArrayBuffer, an ArrayBufferView or URLSearchParams (use JSON.stringify for objects)`);
    }
    return { bytes: encoder.encode(String(body)), type: "text/plain;charset=UTF-8" };
  }

  function consume(body, who) {
    if (body.used) return Promise.reject(new TypeError(`${who}: the body has already been consumed`));
    if (body.error !== undefined) return Promise.reject(body.error);
    if (body.bytes === null) return Promise.resolve(new Uint8Array(0));
    body.used = true;
    const bytes = body.bytes;
    body.bytes = new Uint8Array(0);
    return Promise.resolve(bytes);
  }

  // The Body mixin: `stateOf` gives a Request's or Response's state (with a `body` field).
  function mixinBody(Class, stateOf, who) {
    const methods = {
      get body() {
        const s = stateOf(this);
        if (s.body.bytes === null && !s.body.used) return null;
        throw new H.NotSupportedError(`${who}.body streams`);
      },
      get bodyUsed() { return stateOf(this).body.used; },
      async arrayBuffer() { return (await consume(stateOf(this).body, `${who}.arrayBuffer`)).buffer; },
      async bytes() { return consume(stateOf(this).body, `${who}.bytes`); },
      async text() { return decoder.decode(await consume(stateOf(this).body, `${who}.text`)); },
      async json() { return JSON.parse(decoder.decode(await consume(stateOf(this).body, `${who}.json`))); },
      async blob() { stateOf(this); throw new H.NotSupportedError(`${who}.blob()`); },
      async formData() { stateOf(this); throw new H.NotSupportedError(`${who}.formData()`); },
    };
    for (const key of Object.getOwnPropertyNames(methods)) {
      const d = Object.getOwnPropertyDescriptor(methods, key);
      d.enumerable = false;
      Object.defineProperty(Class.prototype, key, d);
    }
  }

  const copyBody = (body) => ({ bytes: body.bytes === null ? null : body.bytes.slice(), used: false, error: body.error });

  // ---- Request --------------------------------------------------------------------------------------
  const requestState = new WeakMap();
  const rs = (self) => {
    const s = requestState.get(self);
    if (!s) throw new TypeError("Illegal invocation: not a Request");
    return s;
  };

  function enumOption(value, allowed, what) {
    const v = String(value);
    if (!allowed.includes(v)) throw new TypeError(`Request: ${JSON.stringify(v)} is not a valid value for ${what}`);
    return v;
  }

  function normalizeMethod(method) {
    method = String(method);
    if (!TOKEN.test(method)) throw new TypeError(`Request: invalid method ${JSON.stringify(method)}`);
    const upper = method.toUpperCase();
    if (["CONNECT", "TRACE", "TRACK"].includes(upper)) throw new TypeError(`Request: the method ${method} is forbidden`);
    return ["DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT"].includes(upper) ? upper : method;
  }

  class Request {
    constructor(input, init = undefined) {
      if (arguments.length === 0) throw new TypeError("Request: 1 argument required");
      if (init !== undefined && init !== null && typeof init !== "object") throw new TypeError("Request: init must be an object");
      const o = init || {};
      let s;
      const from = requestState.get(input);
      if (from) {
        s = Object.assign({}, from, { headers: headersWith(hs(from.headers).list, "none"), body: { bytes: null, used: false } });
      } else {
        let url;
        try {
          url = new URLCtor(String(input));
        } catch (e) {
          throw new TypeError(`Request: invalid URL ${JSON.stringify(String(input))} (only absolute URLs are accepted)`);
        }
        if (url.username !== "" || url.password !== "") throw new TypeError("Request: URLs with credentials are not allowed");
        s = {
          url: url.href, method: "GET", headers: new Headers(), signal: null, redirect: "follow", mode: "cors",
          credentials: "same-origin", cache: "default", referrer: "about:client", referrerPolicy: "", integrity: "",
          keepalive: false, priority: "auto", body: { bytes: null, used: false },
        };
      }

      if (o.window !== undefined && o.window !== null) throw new TypeError("Request: window must be null");
      if (o.method !== undefined) s.method = normalizeMethod(o.method);
      if (o.headers !== undefined) s.headers = new Headers(o.headers);
      if ("signal" in o && o.signal !== undefined) {
        if (o.signal !== null && !(o.signal instanceof AbortSignalCtor)) throw new TypeError("Request: signal must be an AbortSignal");
        s.signal = o.signal;
      }
      if (o.redirect !== undefined) {
        s.redirect = enumOption(o.redirect, ["follow", "error", "manual"], "redirect");
        if (s.redirect !== "follow") throw new H.NotSupportedError(`fetch with redirect: "${s.redirect}"`);
      }
      if (o.mode !== undefined) {
        s.mode = enumOption(o.mode, ["same-origin", "no-cors", "cors"], "mode");
      }
      if (o.credentials !== undefined) s.credentials = enumOption(o.credentials, ["omit", "same-origin", "include"], "credentials");
      if (o.cache !== undefined) s.cache = enumOption(o.cache, ["default", "no-store", "reload", "no-cache", "force-cache", "only-if-cached"], "cache");
      if (o.referrerPolicy !== undefined) {
        s.referrerPolicy = enumOption(o.referrerPolicy, ["", "no-referrer", "no-referrer-when-downgrade", "same-origin", "origin", "strict-origin", "origin-when-cross-origin", "strict-origin-when-cross-origin", "unsafe-url"], "referrerPolicy");
      }
      if (o.referrer !== undefined) {
        const r = String(o.referrer);
        if (r === "" || r === "about:client") s.referrer = r;
        else {
          try {
            s.referrer = new URLCtor(r).href;
          } catch (e) {
            throw new TypeError(`Request: invalid referrer ${JSON.stringify(r)}`);
          }
        }
      }
      if (o.integrity !== undefined && String(o.integrity) !== "") throw new H.NotSupportedError("fetch with subresource integrity");
      if (o.keepalive !== undefined) s.keepalive = !!o.keepalive;
      if (o.priority !== undefined) s.priority = enumOption(o.priority, ["high", "low", "auto"], "priority");
      if (o.duplex !== undefined) enumOption(o.duplex, ["half"], "duplex");

      const hasInitBody = o.body !== undefined && o.body !== null;
      if ((hasInitBody || (from && from.body.bytes !== null)) && (s.method === "GET" || s.method === "HEAD")) {
        throw new TypeError(`Request: a ${s.method} request cannot have a body`);
      }
      if (hasInitBody) {
        const { bytes, type } = extractBody(o.body, "Request");
        s.body = { bytes, used: false };
        if (type && !s.headers.has("content-type")) s.headers.append("content-type", type);
      } else if (from && from.body.bytes !== null) {
        if (from.body.used) throw new TypeError("Request: the body of the input request has already been consumed");
        // The body moves to the new request; the input request is left disturbed.
        s.body = { bytes: from.body.bytes, used: false };
        from.body = { bytes: new Uint8Array(0), used: true };
      }
      if (!s.signal) s.signal = new AbortControllerCtor().signal;
      requestState.set(this, s);
    }

    get method() { return rs(this).method; }
    get url() { return rs(this).url; }
    get headers() { return rs(this).headers; }
    get destination() { rs(this); return ""; }
    get referrer() { return rs(this).referrer; }
    get referrerPolicy() { return rs(this).referrerPolicy; }
    get mode() { return rs(this).mode; }
    get credentials() { return rs(this).credentials; }
    get cache() { return rs(this).cache; }
    get redirect() { return rs(this).redirect; }
    get integrity() { return rs(this).integrity; }
    get keepalive() { return rs(this).keepalive; }
    get isReloadNavigation() { rs(this); return false; }
    get isHistoryNavigation() { rs(this); return false; }
    get signal() { return rs(this).signal; }
    get duplex() { rs(this); return "half"; }

    clone() {
      const s = rs(this);
      if (s.body.used) throw new TypeError("Request.clone: the body has already been consumed");
      const r = Object.create(Request.prototype);
      requestState.set(r, Object.assign({}, s, { headers: headersWith(hs(s.headers).list, "none"), body: copyBody(s.body) }));
      return r;
    }
  }
  mixinBody(Request, rs, "Request");
  Object.defineProperty(Request.prototype, Symbol.toStringTag, { value: "Request", configurable: true });

  // ---- Response -------------------------------------------------------------------------------------
  const responseState = new WeakMap();
  const rps = (self) => {
    const s = responseState.get(self);
    if (!s) throw new TypeError("Illegal invocation: not a Response");
    return s;
  };

  function initResponse(s, init, extracted) {
    if (init !== undefined && init !== null && typeof init !== "object") throw new TypeError("Response: init must be an object");
    const o = init || {};
    const status = o.status === undefined ? 200 : Number(o.status);
    if (!Number.isInteger(status) || status < 200 || status > 599) throw new RangeError(`Response: status ${o.status} is not in the range 200 to 599`);
    const statusText = o.statusText === undefined ? "" : String(o.statusText);
    if (!/^[\t\x20-\x7e\x80-\xff]*$/.test(statusText)) throw new TypeError("Response: invalid statusText");
    s.status = status;
    s.statusText = statusText;
    if (o.headers !== undefined) s.headers = new Headers(o.headers);
    if (extracted.bytes !== null) {
      if (NULL_BODY_STATUSES.includes(status)) throw new TypeError(`Response: a response with status ${status} cannot have a body`);
      if (extracted.type && !s.headers.has("content-type")) s.headers.append("content-type", extracted.type);
    }
    s.body = { bytes: extracted.bytes, used: false };
  }

  const newState = () => ({ type: "default", url: "", redirected: false, status: 200, statusText: "", headers: new Headers(), body: { bytes: null, used: false } });

  function responseFrom(s) {
    const r = Object.create(Response.prototype);
    responseState.set(r, s);
    return r;
  }

  class Response {
    constructor(body = null, init = undefined) {
      const s = newState();
      initResponse(s, init, extractBody(body, "Response"));
      responseState.set(this, s);
    }

    static json(data, init = undefined) {
      const text = JSON.stringify(data);
      if (text === undefined) throw new TypeError("Response.json: the data is not JSON-serializable");
      const s = newState();
      initResponse(s, init, { bytes: encoder.encode(text), type: "application/json" });
      return responseFrom(s);
    }

    static error() {
      const s = newState();
      Object.assign(s, { type: "error", status: 0, headers: headersWith([], "immutable") });
      return responseFrom(s);
    }

    static redirect(url, status = 302) {
      let parsed;
      try {
        parsed = new URLCtor(String(url));
      } catch (e) {
        throw new TypeError(`Response.redirect: invalid URL ${JSON.stringify(String(url))} (only absolute URLs are accepted)`);
      }
      status = Number(status);
      if (!REDIRECT_STATUSES.includes(status)) throw new RangeError(`Response.redirect: ${status} is not a redirect status`);
      const s = newState();
      Object.assign(s, { status, headers: headersWith([["location", parsed.href]], "immutable") });
      return responseFrom(s);
    }

    get type() { return rps(this).type; }
    get url() { return rps(this).url; }
    get redirected() { return rps(this).redirected; }
    get status() { return rps(this).status; }
    get ok() { const st = rps(this).status; return st >= 200 && st <= 299; }
    get statusText() { return rps(this).statusText; }
    get headers() { return rps(this).headers; }

    clone() {
      const s = rps(this);
      if (s.body.used) throw new TypeError("Response.clone: the body has already been consumed");
      return responseFrom(Object.assign({}, s, { headers: headersWith(hs(s.headers).list, hs(s.headers).guard), body: copyBody(s.body) }));
    }
  }
  mixinBody(Response, rps, "Response");
  Object.defineProperty(Response.prototype, Symbol.toStringTag, { value: "Response", configurable: true });

  // ---- fetch ----------------------------------------------------------------------------------------
  function responseFromHost(result, method) {
    if (!result || typeof result !== "object" || typeof result.status !== "number") throw new TypeError("fetch: the host returned a malformed result");
    const headers = [];
    for (const [k, v] of result.headers || []) headers.push([String(k).toLowerCase(), String(v)]);
    const nullBody = method === "HEAD" || NULL_BODY_STATUSES.includes(result.status);
    return responseFrom({
      type: "basic",
      url: String(result.url || ""),
      redirected: !!result.redirected,
      status: result.status,
      statusText: String(result.statusText || ""),
      headers: headersWith(headers, "immutable"),
      body: { bytes: nullBody ? null : H.base64ToBytes(result.body || ""), used: false },
    });
  }

  function fetch(input, init = undefined) {
    return new Promise((resolve, reject) => {
      const request = new Request(input, init);  // a throw here rejects the promise
      const s = rs(request);
      const signal = s.signal;
      if (signal.aborted) {
        reject(signal.reason);
        return;
      }
      const url = new URLCtor(s.url);
      if (url.protocol !== "http:" && url.protocol !== "https:") {
        reject(new TypeError(`fetch: only http: and https: URLs are supported, not ${url.protocol}`));
        return;
      }
      url.hash = "";  // the fragment is never sent
      const body = s.body.bytes === null ? null : H.bytesToBase64(s.body.bytes);
      if (s.body.bytes !== null) s.body = { bytes: new Uint8Array(0), used: true };

      let settled = false;
      let response = null;
      const onAbort = () => {
        if (response) {
          // As with a browser's stream: a body not yet read fails with the reason from now on.
          const body = rps(response).body;
          if (!body.used) body.error = signal.reason;
          return;
        }
        if (settled) return;
        settled = true;
        reject(signal.reason);  // the host's result, when it comes, is ignored
      };
      signal.addEventListener("abort", onAbort, { once: true });
      H.request("fetch", { url: url.href, method: s.method, headers: hs(s.headers).list.map(([k, v]) => [k, v]), body }).then(
        (result) => {
          if (settled) return;
          settled = true;
          try {
            response = responseFromHost(result, s.method);
          } catch (e) {
            signal.removeEventListener("abort", onAbort);
            reject(e);
            return;
          }
          if (rps(response).body.bytes === null) signal.removeEventListener("abort", onAbort);
          resolve(response);
        },
        (error) => {
          if (settled) return;
          settled = true;
          signal.removeEventListener("abort", onAbort);
          reject(error);
        },
      );
    });
  }

  define("Headers", Headers);
  define("Request", Request);
  define("Response", Response);
  define("fetch", fetch);
})();
