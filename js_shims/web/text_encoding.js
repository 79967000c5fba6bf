// web/text_encoding.js: TextEncoder and TextDecoder (UTF-8 only), following the WHATWG Encoding
// standard: lone surrogates encode as U+FFFD, and invalid input decodes with one U+FFFD per maximal
// invalid subpart (the same output as browsers), or throws a TypeError when `fatal` is set.

(() => {
  const define = (name, value) =>
    Object.defineProperty(globalThis, name, { value, writable: true, configurable: true, enumerable: false });

  // ---- encoding ---------------------------------------------------------------------------------
  function utf8Length(str) {
    let n = 0;
    for (let i = 0; i < str.length; i++) {
      const c = str.charCodeAt(i);
      if (c < 0x80) n += 1;
      else if (c < 0x800) n += 2;
      else if (c >= 0xd800 && c <= 0xdbff && i + 1 < str.length && (str.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
        n += 4;
        i++;
      } else n += 3;  // BMP, or a lone surrogate written as U+FFFD (3 bytes)
    }
    return n;
  }

  // Writes as much of str as fits whole into out; returns [utf16 units read, bytes written].
  function encodeTo(str, out) {
    let read = 0;
    let w = 0;
    const cap = out.length;
    for (let i = 0; i < str.length; i++) {
      let c = str.charCodeAt(i);
      let units = 1;
      if (c >= 0xd800 && c <= 0xdfff) {
        const next = i + 1 < str.length ? str.charCodeAt(i + 1) : 0;
        if (c <= 0xdbff && (next & 0xfc00) === 0xdc00) {
          c = 0x10000 + ((c - 0xd800) << 10) + (next - 0xdc00);
          units = 2;
        } else {
          c = 0xfffd;
        }
      }
      if (c < 0x80) {
        if (w + 1 > cap) break;
        out[w++] = c;
      } else if (c < 0x800) {
        if (w + 2 > cap) break;
        out[w++] = 0xc0 | (c >> 6);
        out[w++] = 0x80 | (c & 0x3f);
      } else if (c < 0x10000) {
        if (w + 3 > cap) break;
        out[w++] = 0xe0 | (c >> 12);
        out[w++] = 0x80 | ((c >> 6) & 0x3f);
        out[w++] = 0x80 | (c & 0x3f);
      } else {
        if (w + 4 > cap) break;
        out[w++] = 0xf0 | (c >> 18);
        out[w++] = 0x80 | ((c >> 12) & 0x3f);
        out[w++] = 0x80 | ((c >> 6) & 0x3f);
        out[w++] = 0x80 | (c & 0x3f);
      }
      read += units;
      if (units === 2) i++;
    }
    return [read, w];
  }

  class TextEncoder {
    get encoding() { return "utf-8"; }

    encode(input = "") {
      const str = String(input);
      const out = new Uint8Array(utf8Length(str));
      encodeTo(str, out);
      return out;
    }

    encodeInto(source, destination) {
      if (!(destination instanceof Uint8Array)) throw new TypeError("TextEncoder.encodeInto: the destination must be a Uint8Array");
      const [read, written] = encodeTo(String(source), destination);
      return { read, written };
    }
  }
  Object.defineProperty(TextEncoder.prototype, Symbol.toStringTag, { value: "TextEncoder", configurable: true });

  // ---- decoding ---------------------------------------------------------------------------------
  const UTF8_LABELS = new Set(["unicode-1-1-utf-8", "unicode11utf8", "unicode20utf8", "utf-8", "utf8", "x-unicode20utf8"]);

  function toBytes(input, who) {
    if (input === undefined) return new Uint8Array(0);
    if (input instanceof ArrayBuffer || (typeof SharedArrayBuffer === "function" && input instanceof SharedArrayBuffer)) {
      return new Uint8Array(input);
    }
    if (ArrayBuffer.isView(input)) return new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
    throw new TypeError(`${who}: the input must be an ArrayBuffer or an ArrayBufferView`);
  }

  const decoderState = new WeakMap();
  const dec = (self) => {
    const s = decoderState.get(self);
    if (!s) throw new TypeError("Illegal invocation: not a TextDecoder");
    return s;
  };

  class TextDecoder {
    constructor(label = "utf-8", options = undefined) {
      const name = String(label).trim().toLowerCase();
      if (!UTF8_LABELS.has(name)) {
        throw new RangeError(`TextDecoder: the "${label}" encoding is not supported in the statehost sandbox (only utf-8 is)`);
      }
      if (options !== undefined && options !== null && typeof options !== "object") throw new TypeError("TextDecoder: options must be an object");
      const o = options || {};
      decoderState.set(this, {
        fatal: !!o.fatal,
        ignoreBOM: !!o.ignoreBOM,
        // streaming state: the bytes of an incomplete sequence left over from the previous chunk
        pending: new Uint8Array(0),
        bomSeen: false,
      });
    }

    get encoding() { dec(this); return "utf-8"; }
    get fatal() { return dec(this).fatal; }
    get ignoreBOM() { return dec(this).ignoreBOM; }

    decode(input = undefined, options = undefined) {
      const s = dec(this);
      let bytes = toBytes(input, "TextDecoder.decode");
      const stream = !!(options && options.stream);
      if (s.pending.length) {
        const joined = new Uint8Array(s.pending.length + bytes.length);
        joined.set(s.pending);
        joined.set(bytes, s.pending.length);
        bytes = joined;
        s.pending = new Uint8Array(0);
      }
      let start = 0;
      if (!s.ignoreBOM && !s.bomSeen) {
        if (bytes.length >= 3 && bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf) {
          start = 3;
          s.bomSeen = true;
        } else if (stream && bytes.length < 3 && (bytes.length === 0 || bytes[0] === 0xef) && (bytes.length < 2 || bytes[1] === 0xbb)) {
          // Could still become a BOM: wait for more bytes.
          s.pending = bytes.slice();
          return "";
        } else if (bytes.length > 0) {
          s.bomSeen = true;
        }
      }
      const { text, rest } = decodeUtf8(bytes, start, s.fatal, stream);
      if (stream) s.pending = rest;
      else s.bomSeen = false;  // a non-streaming call ends the stream; the next one starts afresh
      return text;
    }
  }
  Object.defineProperty(TextDecoder.prototype, Symbol.toStringTag, { value: "TextDecoder", configurable: true });

  // The WHATWG UTF-8 decoder. With `stream`, an incomplete sequence at the end is returned as `rest`.
  function decodeUtf8(bytes, start, fatal, stream) {
    const parts = [];
    let units = [];
    const push = (cp) => {
      if (cp > 0xffff) {
        cp -= 0x10000;
        units.push(0xd800 + (cp >> 10), 0xdc00 + (cp & 0x3ff));
      } else units.push(cp);
      if (units.length >= 8192) {
        parts.push(String.fromCharCode.apply(null, units));
        units = [];
      }
    };
    const fail = () => {
      if (fatal) throw new TypeError("TextDecoder: the encoded data was not valid utf-8");
      push(0xfffd);
    };
    let cp = 0;
    let needed = 0;
    let seen = 0;
    let lower = 0x80;
    let upper = 0xbf;
    let seqStart = start;
    let i = start;
    while (i < bytes.length) {
      const b = bytes[i];
      if (needed === 0) {
        seqStart = i;
        if (b <= 0x7f) push(b);
        else if (b >= 0xc2 && b <= 0xdf) { needed = 1; cp = b & 0x1f; }
        else if (b >= 0xe0 && b <= 0xef) {
          if (b === 0xe0) lower = 0xa0;
          if (b === 0xed) upper = 0x9f;
          needed = 2; cp = b & 0xf;
        } else if (b >= 0xf0 && b <= 0xf4) {
          if (b === 0xf0) lower = 0x90;
          if (b === 0xf4) upper = 0x8f;
          needed = 3; cp = b & 0x7;
        } else fail();
        i++;
        continue;
      }
      if (b < lower || b > upper) {
        // The invalid byte is not consumed: it may start the next sequence.
        cp = needed = seen = 0;
        lower = 0x80; upper = 0xbf;
        fail();
        continue;
      }
      lower = 0x80; upper = 0xbf;
      cp = (cp << 6) | (b & 0x3f);
      seen++;
      i++;
      if (seen === needed) {
        push(cp);
        cp = needed = seen = 0;
      }
    }
    let rest = new Uint8Array(0);
    if (needed !== 0) {
      if (stream) rest = bytes.slice(seqStart);
      else fail();
    }
    parts.push(String.fromCharCode.apply(null, units));
    return { text: parts.join(""), rest };
  }

  define("TextEncoder", TextEncoder);
  define("TextDecoder", TextDecoder);
})();
