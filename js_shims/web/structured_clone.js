// web/structured_clone.js: structuredClone after the HTML structured serialize/deserialize steps,
// done in one pass. Identity is preserved (cycles, shared references, typed arrays sharing one
// buffer). Built-ins are recognised by brand checks (their own getters/methods throw on anything
// else), never by instanceof or Symbol.toStringTag, which user code can fake.

(() => {
  const dataCloneError = (what) => new DOMException(`${what} could not be cloned`, "DataCloneError");

  const getter = (proto, name) => Object.getOwnPropertyDescriptor(proto, name).get;
  const brand = (fn) => (v) => {
    try {
      fn.call(v);
      return true;
    } catch (e) {
      return false;
    }
  };
  const TypedArrayProto = Object.getPrototypeOf(Int8Array.prototype);
  const typedArrayName = getter(TypedArrayProto, Symbol.toStringTag);
  const isArrayBuffer = brand(getter(ArrayBuffer.prototype, "byteLength"));
  const isSharedArrayBuffer = typeof SharedArrayBuffer === "function" ? brand(getter(SharedArrayBuffer.prototype, "byteLength")) : () => false;
  const isDataView = brand(getter(DataView.prototype, "byteLength"));
  const isDate = brand(Date.prototype.getTime);
  const isRegExp = (v) => v !== RegExp.prototype && brand(getter(RegExp.prototype, "source"))(v);
  const isMap = brand(getter(Map.prototype, "size"));
  const isSet = brand(getter(Set.prototype, "size"));
  const isBoolean = brand(Boolean.prototype.valueOf);
  const isNumber = brand(Number.prototype.valueOf);
  const isString = brand(String.prototype.valueOf);
  const isBigInt = brand(BigInt.prototype.valueOf);
  const isSymbolObject = brand(Symbol.prototype.valueOf);
  const isDOMException = brand(getter(DOMException.prototype, "code"));
  const isError = typeof Error.isError === "function" ? Error.isError : (v) => Object.prototype.toString.call(v) === "[object Error]";
  const isPromise = brand(function () { Promise.prototype.then.call(this, undefined, undefined); });
  const isWeakMap = brand(function () { WeakMap.prototype.has.call(this, {}); });
  const isWeakSet = brand(function () { WeakSet.prototype.has.call(this, {}); });
  const isWeakRef = brand(WeakRef.prototype.deref);

  const TYPED_ARRAYS = {
    Int8Array, Uint8Array, Uint8ClampedArray, Int16Array, Uint16Array, Int32Array, Uint32Array,
    Float32Array, Float64Array, BigInt64Array, BigUint64Array,
  };
  if (typeof Float16Array === "function") TYPED_ARRAYS.Float16Array = Float16Array;

  const ERROR_TYPES = { Error, EvalError, RangeError, ReferenceError, SyntaxError, TypeError, URIError };

  // Objects of the other Web API shims carry their state in closures, so a field-by-field copy would
  // be a broken husk. Browsers refuse to clone these platform objects too.
  const PLATFORM_TAGS = new Set([
    "AbortController", "AbortSignal", "Event", "EventTarget", "TextEncoder", "TextDecoder", "URL",
    "URLSearchParams", "Crypto", "CryptoKey", "SubtleCrypto", "Headers", "Request", "Response",
    "Generator", "AsyncGenerator", "FinalizationRegistry", "WeakRef",
  ]);

  function cloneBuffer(buf) {
    const len = buf.byteLength;
    const out = buf.resizable ? new ArrayBuffer(len, { maxByteLength: buf.maxByteLength }) : new ArrayBuffer(len);
    new Uint8Array(out).set(new Uint8Array(buf, 0, len));
    return out;
  }

  function clone(value, memory) {
    if (typeof value === "symbol") throw dataCloneError("Symbol()");
    if (typeof value === "function") throw dataCloneError(`function ${value.name || "anonymous"}`);
    if (value === null || typeof value !== "object") return value;
    if (memory.has(value)) return memory.get(value);

    let out;
    const remember = (o) => {
      memory.set(value, o);
      return o;
    };

    if (Array.isArray(value)) {
      out = remember(new Array(value.length));
      copyProperties(value, out, memory);
      return out;
    }
    if (isBoolean(value)) return remember(Object(Boolean.prototype.valueOf.call(value)));
    if (isNumber(value)) return remember(Object(Number.prototype.valueOf.call(value)));
    if (isBigInt(value)) return remember(Object(BigInt.prototype.valueOf.call(value)));
    if (isString(value)) return remember(Object(String.prototype.valueOf.call(value)));
    if (isSymbolObject(value)) throw dataCloneError("Symbol object");
    if (isDate(value)) return remember(new Date(Date.prototype.getTime.call(value)));
    if (isRegExp(value)) return remember(new RegExp(getter(RegExp.prototype, "source").call(value), getter(RegExp.prototype, "flags").call(value)));
    if (isSharedArrayBuffer(value)) throw dataCloneError("SharedArrayBuffer");
    if (isArrayBuffer(value)) {
      if (value.detached) throw dataCloneError("detached ArrayBuffer");
      return remember(cloneBuffer(value));
    }
    const taName = typedArrayName.call(value);
    if (taName !== undefined) {
      const buffer = clone(value.buffer, memory);
      return remember(new TYPED_ARRAYS[taName](buffer, value.byteOffset, value.length));
    }
    if (isDataView(value)) {
      const buffer = clone(value.buffer, memory);
      return remember(new DataView(buffer, value.byteOffset, value.byteLength));
    }
    if (isMap(value)) {
      out = remember(new Map());
      // Copy the entries first: getters run while cloning must not see a half-built map.
      const entries = Array.from(Map.prototype.entries.call(value));
      for (const [k, v] of entries) out.set(clone(k, memory), clone(v, memory));
      return out;
    }
    if (isSet(value)) {
      out = remember(new Set());
      const values = Array.from(Set.prototype.values.call(value));
      for (const v of values) out.add(clone(v, memory));
      return out;
    }
    if (isDOMException(value)) {
      return remember(new DOMException(String(value.message), String(value.name)));
    }
    if (isError(value)) {
      const name = value.name;
      const Ctor = Object.prototype.hasOwnProperty.call(ERROR_TYPES, name) ? ERROR_TYPES[name] : Error;
      const messageDesc = Object.getOwnPropertyDescriptor(value, "message");
      out = remember(messageDesc && "value" in messageDesc ? new Ctor(String(messageDesc.value)) : new Ctor());
      const stack = value.stack;
      if (typeof stack === "string") Object.defineProperty(out, "stack", { value: stack, writable: true, configurable: true });
      if (Object.prototype.hasOwnProperty.call(value, "cause")) {
        Object.defineProperty(out, "cause", { value: clone(value.cause, memory), writable: true, configurable: true });
      }
      return out;
    }
    if (isPromise(value)) throw dataCloneError("Promise");
    if (isWeakMap(value)) throw dataCloneError("WeakMap");
    if (isWeakSet(value)) throw dataCloneError("WeakSet");
    if (isWeakRef(value)) throw dataCloneError("WeakRef");
    const tag = Object.prototype.toString.call(value).slice(8, -1);
    if (PLATFORM_TAGS.has(tag)) throw dataCloneError(tag);

    // Any other object (including instances of user classes) becomes a plain object of its own
    // enumerable string-keyed properties, as in browsers: the prototype is not carried over.
    out = remember({});
    copyProperties(value, out, memory);
    return out;
  }

  function copyProperties(from, to, memory) {
    for (const key of Object.keys(from)) {
      // Keys are re-checked because a getter run earlier may have deleted them.
      if (!Object.prototype.hasOwnProperty.call(from, key)) continue;
      const v = clone(from[key], memory);
      Object.defineProperty(to, key, { value: v, writable: true, enumerable: true, configurable: true });
    }
  }

  function structuredClone(value, options = undefined) {
    if (arguments.length === 0) throw new TypeError("structuredClone: 1 argument required");
    if (options !== undefined && options !== null) {
      if (typeof options !== "object") throw new TypeError("structuredClone: options must be an object");
      const transfer = options.transfer;
      if (transfer !== undefined) {
        if (transfer === null || typeof transfer[Symbol.iterator] !== "function") {
          throw new TypeError("structuredClone: options.transfer must be an iterable");
        }
        if (Array.from(transfer).length > 0) throw new H.NotSupportedError("structuredClone's transfer option");
      }
    }
    return clone(value, new Map());
  }

  Object.defineProperty(globalThis, "structuredClone", { value: structuredClone, writable: true, configurable: true, enumerable: false });
})();
