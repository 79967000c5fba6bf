// web/url.js: URL and URLSearchParams after the WHATWG URL standard (the basic URL parser state
// machine, IPv4/IPv6 hosts, setters through state overrides). Not supported: IDNA. A host with
// non-ASCII characters fails to parse (TypeError) instead of being converted to punycode.

(() => {
  const define = (name, value) =>
    Object.defineProperty(globalThis, name, { value, writable: true, configurable: true, enumerable: false });
  const utf8 = new TextDecoder();  // captured now: user code may replace the global later

  // ---- code points and percent-encoding -----------------------------------------------------------
  const toUSV = (v) => String(v).toWellFormed();
  const isAlpha = (c) => c !== undefined && /^[A-Za-z]$/.test(c);
  const isDigit = (c) => c !== undefined && c >= "0" && c <= "9";
  const isHex = (c) => c !== undefined && /^[0-9A-Fa-f]$/.test(c);

  function utf8Bytes(cp) {
    if (cp < 0x80) return [cp];
    if (cp < 0x800) return [0xc0 | (cp >> 6), 0x80 | (cp & 0x3f)];
    if (cp < 0x10000) return [0xe0 | (cp >> 12), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f)];
    return [0xf0 | (cp >> 18), 0x80 | ((cp >> 12) & 0x3f), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f)];
  }

  const byteSet = (base, extra) => (b) => base(b) || (b < 0x80 && extra.includes(String.fromCharCode(b)));
  const C0_SET = (b) => b < 0x20 || b > 0x7e;
  const FRAGMENT_SET = byteSet(C0_SET, ' "<>`');
  const QUERY_SET = byteSet(C0_SET, ' "#<>');
  const SPECIAL_QUERY_SET = byteSet(QUERY_SET, "'");
  const PATH_SET = byteSet(QUERY_SET, "?^`{}");
  const USERINFO_SET = byteSet(PATH_SET, "/:;=@[\\]|");
  const COMPONENT_SET = byteSet(USERINFO_SET, "$%&+,");
  const FORM_SET = byteSet(COMPONENT_SET, "!'()~");

  const hex2 = (b) => "%" + (b < 16 ? "0" : "") + b.toString(16).toUpperCase();

  // c: one code point as a string
  function encodeCodePoint(c, inSet, spaceAsPlus = false) {
    if (spaceAsPlus && c === " ") return "+";
    let out = "";
    for (const b of utf8Bytes(c.codePointAt(0))) out += inSet(b) ? hex2(b) : String.fromCharCode(b);
    return out;
  }

  function encodeString(str, inSet, spaceAsPlus = false) {
    let out = "";
    for (const c of str) out += encodeCodePoint(c, inSet, spaceAsPlus);
    return out;
  }

  function percentDecodeToBytes(str) {
    const bytes = [];
    for (const c of str) bytes.push(...utf8Bytes(c.codePointAt(0)));
    const out = [];
    for (let i = 0; i < bytes.length; i++) {
      const b = bytes[i];
      if (b === 0x25 && i + 2 < bytes.length && isHex(String.fromCharCode(bytes[i + 1])) && isHex(String.fromCharCode(bytes[i + 2]))) {
        out.push(parseInt(String.fromCharCode(bytes[i + 1], bytes[i + 2]), 16));
        i += 2;
      } else out.push(b);
    }
    return new Uint8Array(out);
  }
  const percentDecode = (str) => utf8.decode(percentDecodeToBytes(str));

  // ---- hosts --------------------------------------------------------------------------------------
  const FAILURE = Symbol("failure");
  let failureReason = null;  // a more precise message than "Invalid URL" for the last failure
  const fail = (why = null) => {
    failureReason = why;
    return FAILURE;
  };

  const FORBIDDEN_HOST = new Set(["\0", "\t", "\n", "\r", " ", "#", "/", ":", "<", ">", "?", "@", "[", "\\", "]", "^", "|"]);
  const isForbiddenDomain = (c) => FORBIDDEN_HOST.has(c) || c.charCodeAt(0) <= 0x1f || c === "%" || c === "\x7f";

  function parseIPv4Number(s) {
    if (s === "") return FAILURE;
    let radix = 10;
    if (s.length >= 2 && (s.startsWith("0x") || s.startsWith("0X"))) {
      s = s.slice(2);
      radix = 16;
    } else if (s.length >= 2 && s[0] === "0") {
      s = s.slice(1);
      radix = 8;
    }
    if (s === "") return 0;
    const valid = radix === 16 ? /^[0-9A-Fa-f]+$/ : radix === 10 ? /^[0-9]+$/ : /^[0-7]+$/;
    if (!valid.test(s)) return FAILURE;
    return parseInt(s, radix);
  }

  function endsInANumber(s) {
    const parts = s.split(".");
    if (parts[parts.length - 1] === "") {
      if (parts.length === 1) return false;
      parts.pop();
    }
    const last = parts[parts.length - 1];
    if (last !== "" && /^[0-9]+$/.test(last)) return true;
    return parseIPv4Number(last) !== FAILURE;
  }

  function parseIPv4(s) {
    const parts = s.split(".");
    if (parts[parts.length - 1] === "" && parts.length > 1) parts.pop();
    if (parts.length > 4) return fail();
    const numbers = [];
    for (const p of parts) {
      const n = parseIPv4Number(p);
      if (n === FAILURE) return fail();
      numbers.push(n);
    }
    for (let i = 0; i < numbers.length - 1; i++) if (numbers[i] > 255) return fail();
    if (numbers[numbers.length - 1] >= 256 ** (5 - numbers.length)) return fail();
    let ipv4 = numbers[numbers.length - 1];
    for (let i = 0; i < numbers.length - 1; i++) ipv4 += numbers[i] * 256 ** (3 - i);
    const out = [];
    for (let i = 0; i < 4; i++) {
      out.unshift(String(ipv4 % 256));
      ipv4 = Math.floor(ipv4 / 256);
    }
    return out.join(".");
  }

  function parseIPv6(input) {
    const address = [0, 0, 0, 0, 0, 0, 0, 0];
    const cs = Array.from(input);
    let pieceIndex = 0;
    let compress = null;
    let p = 0;
    if (cs[p] === ":") {
      if (cs[p + 1] !== ":") return fail();
      p += 2;
      compress = ++pieceIndex;
    }
    while (cs[p] !== undefined) {
      if (pieceIndex === 8) return fail();
      if (cs[p] === ":") {
        if (compress !== null) return fail();
        p++;
        compress = ++pieceIndex;
        continue;
      }
      let value = 0;
      let length = 0;
      while (length < 4 && isHex(cs[p])) {
        value = value * 16 + parseInt(cs[p], 16);
        p++;
        length++;
      }
      if (cs[p] === ".") {
        if (length === 0) return fail();
        p -= length;
        if (pieceIndex > 6) return fail();
        let numbersSeen = 0;
        while (cs[p] !== undefined) {
          let piece = null;
          if (numbersSeen > 0) {
            if (cs[p] === "." && numbersSeen < 4) p++;
            else return fail();
          }
          if (!isDigit(cs[p])) return fail();
          while (isDigit(cs[p])) {
            const n = Number(cs[p]);
            if (piece === null) piece = n;
            else if (piece === 0) return fail();
            else piece = piece * 10 + n;
            if (piece > 255) return fail();
            p++;
          }
          address[pieceIndex] = address[pieceIndex] * 256 + piece;
          numbersSeen++;
          if (numbersSeen === 2 || numbersSeen === 4) pieceIndex++;
        }
        if (numbersSeen !== 4) return fail();
        break;
      } else if (cs[p] === ":") {
        p++;
        if (cs[p] === undefined) return fail();
      } else if (cs[p] !== undefined) return fail();
      address[pieceIndex++] = value;
    }
    if (compress !== null) {
      let swaps = pieceIndex - compress;
      pieceIndex = 7;
      while (pieceIndex !== 0 && swaps > 0) {
        const t = address[pieceIndex];
        address[pieceIndex] = address[compress + swaps - 1];
        address[compress + swaps - 1] = t;
        pieceIndex--;
        swaps--;
      }
    } else if (pieceIndex !== 8) return fail();
    return address;
  }

  function serializeIPv6(a) {
    let best = -1;
    let bestLen = 1;
    for (let i = 0; i < 8;) {
      if (a[i] !== 0) { i++; continue; }
      let j = i;
      while (j < 8 && a[j] === 0) j++;
      if (j - i > bestLen) { best = i; bestLen = j - i; }
      i = j;
    }
    let out = "";
    for (let i = 0; i < 8; i++) {
      if (i === best) {
        out += i === 0 ? "::" : ":";
        i += bestLen - 1;
        continue;
      }
      out += a[i].toString(16);
      if (i !== 7) out += ":";
    }
    return out;
  }

  function parseHost(input, isOpaque) {
    if (input.startsWith("[")) {
      if (!input.endsWith("]")) return fail();
      const address = parseIPv6(input.slice(1, -1));
      return address === FAILURE ? FAILURE : "[" + serializeIPv6(address) + "]";
    }
    if (isOpaque) {
      for (const c of input) if (FORBIDDEN_HOST.has(c)) return fail();
      return encodeString(input, C0_SET);
    }
    const domain = percentDecode(input);
    if (/[^\x00-\x7f]/.test(domain)) {
      return fail("Invalid URL: internationalized domain names (IDNA) are not supported in the statehost sandbox");
    }
    const ascii = domain.toLowerCase();
    if (ascii === "") return fail();
    for (const c of ascii) if (isForbiddenDomain(c)) return fail();
    if (endsInANumber(ascii)) return parseIPv4(ascii);
    return ascii;
  }

  // ---- the URL record and the basic URL parser -------------------------------------------------------
  const DEFAULT_PORTS = { ftp: 21, file: null, http: 80, https: 443, ws: 80, wss: 443 };
  const isSpecialScheme = (s) => Object.prototype.hasOwnProperty.call(DEFAULT_PORTS, s);
  const defaultPort = (s) => (isSpecialScheme(s) ? DEFAULT_PORTS[s] : null);

  const newRecord = () => ({ scheme: "", username: "", password: "", host: null, port: null, path: [], query: null, fragment: null });
  const copyRecord = (u) => Object.assign({}, u, { path: Array.isArray(u.path) ? u.path.slice() : u.path });
  const hasOpaquePath = (u) => typeof u.path === "string";
  const includesCredentials = (u) => u.username !== "" || u.password !== "";
  const cannotHaveCredentialsOrPort = (u) => u.host === null || u.host === "" || u.scheme === "file";

  const isWindowsDriveLetter = (s) => s.length === 2 && isAlpha(s[0]) && (s[1] === ":" || s[1] === "|");
  const isNormalizedWindowsDriveLetter = (s) => isWindowsDriveLetter(s) && s[1] === ":";
  function startsWithWindowsDriveLetter(cps, p) {
    if (cps.length - p < 2) return false;
    if (!isAlpha(cps[p]) || (cps[p + 1] !== ":" && cps[p + 1] !== "|")) return false;
    return cps.length - p === 2 || ["/", "\\", "?", "#"].includes(cps[p + 2]);
  }
  const isSingleDot = (s) => s === "." || s.toLowerCase() === "%2e";
  const isDoubleDot = (s) => ["..", ".%2e", "%2e.", "%2e%2e"].includes(s.toLowerCase());

  function shortenPath(u) {
    if (u.scheme === "file" && u.path.length === 1 && isNormalizedWindowsDriveLetter(u.path[0])) return;
    u.path.pop();
  }

  const S = {
    SCHEME_START: 1, SCHEME: 2, NO_SCHEME: 3, SPECIAL_RELATIVE_OR_AUTHORITY: 4, PATH_OR_AUTHORITY: 5,
    RELATIVE: 6, RELATIVE_SLASH: 7, SPECIAL_AUTHORITY_SLASHES: 8, SPECIAL_AUTHORITY_IGNORE_SLASHES: 9,
    AUTHORITY: 10, HOST: 11, HOSTNAME: 12, PORT: 13, FILE: 14, FILE_SLASH: 15, FILE_HOST: 16,
    PATH_START: 17, PATH: 18, OPAQUE_PATH: 19, QUERY: 20, FRAGMENT: 21,
  };

  // Returns the record, or FAILURE. With a state override it mutates `url` (a setter's scratch copy).
  function basicParse(input, base, url = null, stateOverride = null) {
    failureReason = null;
    if (!url) {
      url = newRecord();
      input = input.replace(/^[\x00-\x20]+|[\x00-\x20]+$/g, "");
    }
    input = input.replace(/[\t\n\r]/g, "");
    const cps = Array.from(input);
    let state = stateOverride || S.SCHEME_START;
    let buffer = "";
    let atSignSeen = false;
    let insideBrackets = false;
    let passwordTokenSeen = false;
    const special = () => isSpecialScheme(url.scheme);
    const remainingStartsWith = (p, s) => cps[p + 1] === s;

    for (let p = 0; ; p++) {
      const c = cps[p];  // undefined is the EOF code point
      switch (state) {
        case S.SCHEME_START:
          if (isAlpha(c)) {
            buffer += c.toLowerCase();
            state = S.SCHEME;
          } else if (!stateOverride) {
            state = S.NO_SCHEME;
            p--;
          } else return fail();
          break;

        case S.SCHEME:
          if (c !== undefined && /^[A-Za-z0-9+\-.]$/.test(c)) {
            buffer += c.toLowerCase();
          } else if (c === ":") {
            if (stateOverride) {
              if (isSpecialScheme(url.scheme) !== isSpecialScheme(buffer)) return url;
              if ((includesCredentials(url) || url.port !== null) && buffer === "file") return url;
              if (url.scheme === "file" && url.host === "") return url;
            }
            url.scheme = buffer;
            if (stateOverride) {
              if (url.port === defaultPort(url.scheme)) url.port = null;
              return url;
            }
            buffer = "";
            if (url.scheme === "file") {
              state = S.FILE;
            } else if (special() && base && base.scheme === url.scheme) {
              state = S.SPECIAL_RELATIVE_OR_AUTHORITY;
            } else if (special()) {
              state = S.SPECIAL_AUTHORITY_SLASHES;
            } else if (remainingStartsWith(p, "/")) {
              state = S.PATH_OR_AUTHORITY;
              p++;
            } else {
              url.path = "";
              state = S.OPAQUE_PATH;
            }
          } else if (!stateOverride) {
            buffer = "";
            state = S.NO_SCHEME;
            p = -1;
          } else return fail();
          break;

        case S.NO_SCHEME:
          if (!base || (hasOpaquePath(base) && c !== "#")) return fail();
          if (hasOpaquePath(base) && c === "#") {
            url.scheme = base.scheme;
            url.path = base.path;
            url.query = base.query;
            url.fragment = "";
            state = S.FRAGMENT;
          } else if (base.scheme !== "file") {
            state = S.RELATIVE;
            p--;
          } else {
            state = S.FILE;
            p--;
          }
          break;

        case S.SPECIAL_RELATIVE_OR_AUTHORITY:
          if (c === "/" && remainingStartsWith(p, "/")) {
            state = S.SPECIAL_AUTHORITY_IGNORE_SLASHES;
            p++;
          } else {
            state = S.RELATIVE;
            p--;
          }
          break;

        case S.PATH_OR_AUTHORITY:
          if (c === "/") state = S.AUTHORITY;
          else {
            state = S.PATH;
            p--;
          }
          break;

        case S.RELATIVE:
          url.scheme = base.scheme;
          if (c === "/" || (special() && c === "\\")) {
            state = S.RELATIVE_SLASH;
          } else {
            url.username = base.username;
            url.password = base.password;
            url.host = base.host;
            url.port = base.port;
            url.path = base.path.slice();
            url.query = base.query;
            if (c === "?") {
              url.query = "";
              state = S.QUERY;
            } else if (c === "#") {
              url.fragment = "";
              state = S.FRAGMENT;
            } else if (c !== undefined) {
              url.query = null;
              shortenPath(url);
              state = S.PATH;
              p--;
            }
          }
          break;

        case S.RELATIVE_SLASH:
          if (special() && (c === "/" || c === "\\")) {
            state = S.SPECIAL_AUTHORITY_IGNORE_SLASHES;
          } else if (c === "/") {
            state = S.AUTHORITY;
          } else {
            url.username = base.username;
            url.password = base.password;
            url.host = base.host;
            url.port = base.port;
            state = S.PATH;
            p--;
          }
          break;

        case S.SPECIAL_AUTHORITY_SLASHES:
          if (c === "/" && remainingStartsWith(p, "/")) {
            state = S.SPECIAL_AUTHORITY_IGNORE_SLASHES;
            p++;
          } else {
            state = S.SPECIAL_AUTHORITY_IGNORE_SLASHES;
            p--;
          }
          break;

        case S.SPECIAL_AUTHORITY_IGNORE_SLASHES:
          if (c !== "/" && c !== "\\") {
            state = S.AUTHORITY;
            p--;
          }
          break;

        case S.AUTHORITY:
          if (c === "@") {
            if (atSignSeen) buffer = "%40" + buffer;
            atSignSeen = true;
            for (const bc of buffer) {
              if (bc === ":" && !passwordTokenSeen) {
                passwordTokenSeen = true;
                continue;
              }
              const encoded = encodeCodePoint(bc, USERINFO_SET);
              if (passwordTokenSeen) url.password += encoded;
              else url.username += encoded;
            }
            buffer = "";
          } else if (c === undefined || c === "/" || c === "?" || c === "#" || (special() && c === "\\")) {
            if (atSignSeen && buffer === "") return fail();
            p -= Array.from(buffer).length + 1;
            buffer = "";
            state = S.HOST;
          } else buffer += c;
          break;

        case S.HOST:
        case S.HOSTNAME:
          if (stateOverride && url.scheme === "file") {
            p--;
            state = S.FILE_HOST;
          } else if (c === ":" && !insideBrackets) {
            if (buffer === "") return fail();
            if (stateOverride === S.HOSTNAME) return fail();
            const host = parseHost(buffer, !special());
            if (host === FAILURE) return FAILURE;
            url.host = host;
            buffer = "";
            state = S.PORT;
          } else if (c === undefined || c === "/" || c === "?" || c === "#" || (special() && c === "\\")) {
            p--;
            if (special() && buffer === "") return fail();
            if (stateOverride && buffer === "" && (includesCredentials(url) || url.port !== null)) return fail();
            const host = parseHost(buffer, !special());
            if (host === FAILURE) return FAILURE;
            url.host = host;
            buffer = "";
            state = S.PATH_START;
            if (stateOverride) return url;
          } else {
            if (c === "[") insideBrackets = true;
            if (c === "]") insideBrackets = false;
            buffer += c;
          }
          break;

        case S.PORT:
          if (isDigit(c)) {
            buffer += c;
          } else if (c === undefined || c === "/" || c === "?" || c === "#" || (special() && c === "\\") || stateOverride) {
            if (buffer !== "") {
              const port = parseInt(buffer, 10);
              if (port > 65535) return fail();
              url.port = port === defaultPort(url.scheme) ? null : port;
              buffer = "";
              if (stateOverride) return url;
            }
            if (stateOverride) return fail();
            state = S.PATH_START;
            p--;
          } else return fail();
          break;

        case S.FILE:
          url.scheme = "file";
          url.host = "";
          if (c === "/" || c === "\\") {
            state = S.FILE_SLASH;
          } else if (base && base.scheme === "file") {
            url.host = base.host;
            url.path = base.path.slice();
            url.query = base.query;
            if (c === "?") {
              url.query = "";
              state = S.QUERY;
            } else if (c === "#") {
              url.fragment = "";
              state = S.FRAGMENT;
            } else if (c !== undefined) {
              url.query = null;
              if (!startsWithWindowsDriveLetter(cps, p)) shortenPath(url);
              else url.path = [];
              state = S.PATH;
              p--;
            }
          } else {
            state = S.PATH;
            p--;
          }
          break;

        case S.FILE_SLASH:
          if (c === "/" || c === "\\") {
            state = S.FILE_HOST;
          } else {
            if (base && base.scheme === "file") {
              url.host = base.host;
              if (!startsWithWindowsDriveLetter(cps, p) && base.path.length > 0 && isNormalizedWindowsDriveLetter(base.path[0])) {
                url.path.push(base.path[0]);
              }
            }
            state = S.PATH;
            p--;
          }
          break;

        case S.FILE_HOST:
          if (c === undefined || c === "/" || c === "\\" || c === "?" || c === "#") {
            p--;
            if (!stateOverride && isWindowsDriveLetter(buffer)) {
              state = S.PATH;
            } else if (buffer === "") {
              url.host = "";
              if (stateOverride) return url;
              state = S.PATH_START;
            } else {
              let host = parseHost(buffer, !special());
              if (host === FAILURE) return FAILURE;
              if (host === "localhost") host = "";
              url.host = host;
              if (stateOverride) return url;
              buffer = "";
              state = S.PATH_START;
            }
          } else buffer += c;
          break;

        case S.PATH_START:
          if (special()) {
            state = S.PATH;
            if (c !== "/" && c !== "\\") p--;
          } else if (!stateOverride && c === "?") {
            url.query = "";
            state = S.QUERY;
          } else if (!stateOverride && c === "#") {
            url.fragment = "";
            state = S.FRAGMENT;
          } else if (c !== undefined) {
            state = S.PATH;
            if (c !== "/") p--;
          } else if (stateOverride && url.host === null) {
            url.path.push("");
          }
          break;

        case S.PATH: {
          const slash = c === "/" || (special() && c === "\\");
          if (c === undefined || slash || (!stateOverride && (c === "?" || c === "#"))) {
            if (isDoubleDot(buffer)) {
              shortenPath(url);
              if (!slash) url.path.push("");
            } else if (isSingleDot(buffer) && !slash) {
              url.path.push("");
            } else if (!isSingleDot(buffer)) {
              if (url.scheme === "file" && url.path.length === 0 && isWindowsDriveLetter(buffer)) buffer = buffer[0] + ":";
              url.path.push(buffer);
            }
            buffer = "";
            if (c === "?") {
              url.query = "";
              state = S.QUERY;
            }
            if (c === "#") {
              url.fragment = "";
              state = S.FRAGMENT;
            }
          } else {
            buffer += encodeCodePoint(c, PATH_SET);
          }
          break;
        }

        case S.OPAQUE_PATH:
          if (c === "?") {
            url.query = "";
            state = S.QUERY;
          } else if (c === "#") {
            url.fragment = "";
            state = S.FRAGMENT;
          } else if (c !== undefined) {
            url.path += encodeCodePoint(c, C0_SET);
          }
          break;

        case S.QUERY:
          if ((!stateOverride && c === "#") || c === undefined) {
            url.query += encodeString(buffer, special() ? SPECIAL_QUERY_SET : QUERY_SET);
            buffer = "";
            if (c === "#") {
              url.fragment = "";
              state = S.FRAGMENT;
            }
          } else buffer += c;
          break;

        case S.FRAGMENT:
          if (c !== undefined) url.fragment += encodeCodePoint(c, FRAGMENT_SET);
          break;
      }
      if (p >= cps.length) break;
    }
    return url;
  }

  const serializePath = (u) => (hasOpaquePath(u) ? u.path : u.path.map((s) => "/" + s).join(""));

  function serializeHostPort(u) {
    return u.port === null ? u.host : `${u.host}:${u.port}`;
  }

  function serialize(u, excludeFragment = false) {
    let out = u.scheme + ":";
    if (u.host !== null) {
      out += "//";
      if (includesCredentials(u)) {
        out += u.username;
        if (u.password !== "") out += ":" + u.password;
        out += "@";
      }
      out += serializeHostPort(u);
    } else if (!hasOpaquePath(u) && u.path.length > 1 && u.path[0] === "") {
      out += "/.";
    }
    out += serializePath(u);
    if (u.query !== null) out += "?" + u.query;
    if (!excludeFragment && u.fragment !== null) out += "#" + u.fragment;
    return out;
  }

  function origin(u) {
    switch (u.scheme) {
      case "blob": {
        const inner = hasOpaquePath(u) ? basicParse(u.path, null) : FAILURE;
        return inner !== FAILURE && (inner.scheme === "http" || inner.scheme === "https") ? origin(inner) : "null";
      }
      case "ftp": case "http": case "https": case "ws": case "wss":
        return `${u.scheme}://${serializeHostPort(u)}`;
      default:
        return "null";
    }
  }

  function parseOrThrow(input, base) {
    const u = basicParse(input, base);
    if (u === FAILURE) throw new TypeError(failureReason || "Invalid URL");
    return u;
  }

  // ---- application/x-www-form-urlencoded ----------------------------------------------------------
  function formParse(input) {
    const out = [];
    for (const seq of input.split("&")) {
      if (seq === "") continue;
      const i = seq.indexOf("=");
      const name = i < 0 ? seq : seq.slice(0, i);
      const value = i < 0 ? "" : seq.slice(i + 1);
      out.push([percentDecode(name.replace(/\+/g, " ")), percentDecode(value.replace(/\+/g, " "))]);
    }
    return out;
  }

  const formSerialize = (list) =>
    list.map(([k, v]) => encodeString(k, FORM_SET, true) + "=" + encodeString(v, FORM_SET, true)).join("&");

  // ---- URLSearchParams --------------------------------------------------------------------------------
  const paramsState = new WeakMap();  // params -> { list, url: URL state or null }
  const ps = (self) => {
    const s = paramsState.get(self);
    if (!s) throw new TypeError("Illegal invocation: not a URLSearchParams");
    return s;
  };

  function paramsUpdate(s) {
    if (!s.url) return;
    const q = formSerialize(s.list);
    s.url.record.query = q === "" ? null : q;
  }

  class URLSearchParams {
    constructor(init = "") {
      let list;
      if (init !== null && (typeof init === "object" || typeof init === "function")) {
        if (typeof init[Symbol.iterator] === "function") {
          list = [];
          for (const pair of init) {
            if (pair === null || (typeof pair !== "object" && typeof pair !== "function") || typeof pair[Symbol.iterator] !== "function") {
              throw new TypeError("URLSearchParams: each pair must be an iterable [name, value]");
            }
            const items = Array.from(pair);
            if (items.length !== 2) throw new TypeError("URLSearchParams: each pair must have exactly two items");
            list.push([toUSV(items[0]), toUSV(items[1])]);
          }
        } else {
          list = [];
          for (const key of Reflect.ownKeys(init)) {
            if (typeof key !== "string") continue;
            const d = Reflect.getOwnPropertyDescriptor(init, key);
            if (d && d.enumerable) list.push([toUSV(key), toUSV(init[key])]);
          }
        }
      } else {
        let str = toUSV(init);
        if (str.startsWith("?")) str = str.slice(1);
        list = formParse(str);
      }
      paramsState.set(this, { list, url: null });
    }

    get size() { return ps(this).list.length; }

    append(name, value) {
      const s = ps(this);
      if (arguments.length < 2) throw new TypeError("URLSearchParams.append: 2 arguments required");
      s.list.push([toUSV(name), toUSV(value)]);
      paramsUpdate(s);
    }

    delete(name, value = undefined) {
      const s = ps(this);
      name = toUSV(name);
      if (value === undefined) s.list = s.list.filter(([k]) => k !== name);
      else {
        value = toUSV(value);
        s.list = s.list.filter(([k, v]) => !(k === name && v === value));
      }
      paramsUpdate(s);
    }

    get(name) {
      name = toUSV(name);
      const e = ps(this).list.find(([k]) => k === name);
      return e ? e[1] : null;
    }

    getAll(name) {
      name = toUSV(name);
      return ps(this).list.filter(([k]) => k === name).map(([, v]) => v);
    }

    has(name, value = undefined) {
      name = toUSV(name);
      if (value === undefined) return ps(this).list.some(([k]) => k === name);
      value = toUSV(value);
      return ps(this).list.some(([k, v]) => k === name && v === value);
    }

    set(name, value) {
      const s = ps(this);
      name = toUSV(name);
      value = toUSV(value);
      const i = s.list.findIndex(([k]) => k === name);
      if (i < 0) s.list.push([name, value]);
      else {
        s.list[i][1] = value;
        s.list = s.list.filter(([k], j) => j <= i || k !== name);
      }
      paramsUpdate(s);
    }

    sort() {
      const s = ps(this);
      // Stable, by UTF-16 code units (what the standard asks, and what `<` on strings compares).
      s.list.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
      paramsUpdate(s);
    }

    forEach(callback, thisArg = undefined) {
      if (typeof callback !== "function") throw new TypeError("URLSearchParams.forEach: the callback must be a function");
      const s = ps(this);
      for (let i = 0; i < s.list.length; i++) callback.call(thisArg, s.list[i][1], s.list[i][0], this);
    }

    *entries() {
      const s = ps(this);
      for (let i = 0; i < s.list.length; i++) yield [s.list[i][0], s.list[i][1]];
    }

    *keys() {
      const s = ps(this);
      for (let i = 0; i < s.list.length; i++) yield s.list[i][0];
    }

    *values() {
      const s = ps(this);
      for (let i = 0; i < s.list.length; i++) yield s.list[i][1];
    }

    toString() {
      return formSerialize(ps(this).list);
    }
  }
  Object.defineProperty(URLSearchParams.prototype, Symbol.iterator, {
    value: URLSearchParams.prototype.entries, writable: true, configurable: true,
  });
  Object.defineProperty(URLSearchParams.prototype, Symbol.toStringTag, { value: "URLSearchParams", configurable: true });

  // ---- URL ----------------------------------------------------------------------------------------------
  const urlState = new WeakMap();  // URL -> { record, params }
  const us = (self) => {
    const s = urlState.get(self);
    if (!s) throw new TypeError("Illegal invocation: not a URL");
    return s;
  };

  function parseWithBase(url, base) {
    let baseRecord = null;
    if (base !== undefined) baseRecord = parseOrThrow(toUSV(base), null);
    return parseOrThrow(toUSV(url), baseRecord);
  }

  // Runs a setter's state-override parse on a copy and keeps the result only when it succeeded.
  function setWith(self, input, stateOverride, prepare = null) {
    const s = us(self);
    const copy = copyRecord(s.record);
    if (prepare) prepare(copy);
    const result = basicParse(input, null, copy, stateOverride);
    if (result !== FAILURE) s.record = copy;
  }

  class URL {
    constructor(url, base = undefined) {
      if (arguments.length === 0) throw new TypeError("URL: 1 argument required");
      const record = parseWithBase(url, base);
      const params = new URLSearchParams(record.query || "");
      const s = { record, params };
      ps(params).url = s;
      urlState.set(this, s);
    }

    static canParse(url, base = undefined) {
      try {
        parseWithBase(url, base);
        return true;
      } catch (e) {
        return false;
      }
    }

    static parse(url, base = undefined) {
      try {
        return new URL(url, base);
      } catch (e) {
        return null;
      }
    }

    static createObjectURL() { throw new H.NotSupportedError("URL.createObjectURL"); }
    static revokeObjectURL() { throw new H.NotSupportedError("URL.revokeObjectURL"); }

    get href() { return serialize(us(this).record); }
    set href(value) {
      const s = us(this);
      s.record = parseOrThrow(toUSV(value), null);
      ps(s.params).list = formParse(s.record.query || "");
    }

    get origin() { return origin(us(this).record); }

    get protocol() { return us(this).record.scheme + ":"; }
    set protocol(value) { setWith(this, toUSV(value) + ":", S.SCHEME_START); }

    get username() { return us(this).record.username; }
    set username(value) {
      const s = us(this);
      if (cannotHaveCredentialsOrPort(s.record)) return;
      s.record.username = encodeString(toUSV(value), USERINFO_SET);
    }

    get password() { return us(this).record.password; }
    set password(value) {
      const s = us(this);
      if (cannotHaveCredentialsOrPort(s.record)) return;
      s.record.password = encodeString(toUSV(value), USERINFO_SET);
    }

    get host() {
      const r = us(this).record;
      return r.host === null ? "" : serializeHostPort(r);
    }
    set host(value) {
      if (hasOpaquePath(us(this).record)) return;
      setWith(this, toUSV(value), S.HOST);
    }

    get hostname() {
      const r = us(this).record;
      return r.host === null ? "" : r.host;
    }
    set hostname(value) {
      if (hasOpaquePath(us(this).record)) return;
      setWith(this, toUSV(value), S.HOSTNAME);
    }

    get port() {
      const r = us(this).record;
      return r.port === null ? "" : String(r.port);
    }
    set port(value) {
      const s = us(this);
      if (cannotHaveCredentialsOrPort(s.record)) return;
      value = toUSV(value);
      if (value === "") s.record.port = null;
      else setWith(this, value, S.PORT);
    }

    get pathname() { return serializePath(us(this).record); }
    set pathname(value) {
      if (hasOpaquePath(us(this).record)) return;
      setWith(this, toUSV(value), S.PATH_START, (copy) => { copy.path = []; });
    }

    get search() {
      const q = us(this).record.query;
      return q === null || q === "" ? "" : "?" + q;
    }
    set search(value) {
      const s = us(this);
      let input = toUSV(value);
      if (input === "") {
        s.record.query = null;
        ps(s.params).list = [];
        return;
      }
      if (input.startsWith("?")) input = input.slice(1);
      setWith(this, input, S.QUERY, (copy) => { copy.query = ""; });
      ps(s.params).list = formParse(input);
    }

    get searchParams() { return us(this).params; }

    get hash() {
      const f = us(this).record.fragment;
      return f === null || f === "" ? "" : "#" + f;
    }
    set hash(value) {
      const s = us(this);
      let input = toUSV(value);
      if (input === "") {
        s.record.fragment = null;
        return;
      }
      if (input.startsWith("#")) input = input.slice(1);
      setWith(this, input, S.FRAGMENT, (copy) => { copy.fragment = ""; });
    }

    toString() { return this.href; }
    toJSON() { return this.href; }
  }
  Object.defineProperty(URL.prototype, Symbol.toStringTag, { value: "URL", configurable: true });

  define("URL", URL);
  define("URLSearchParams", URLSearchParams);
})();
