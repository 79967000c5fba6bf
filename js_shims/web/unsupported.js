// web/unsupported.js: globals that statehost deliberately does not provide. They exist so that
// `typeof X` and `x instanceof X` work as feature probes, but any real use throws NotSupportedError
// naming the API, instead of a confusing ReferenceError or "undefined is not a function".
// (Deno stays undefined on purpose: State Backed does not have it either.)

(() => {
  const define = (name, value) =>
    Object.defineProperty(globalThis, name, { value, writable: true, configurable: true, enumerable: false });

  // What stays readable on the stand-ins: enough for typeof, instanceof, String(X) and inspection.
  const passThrough = (prop) => typeof prop === "symbol" || prop === "prototype" || prop === "name" || prop === "length";

  function unsupportedConstructor(name) {
    // A plain function (not an arrow), so `prototype` exists and `x instanceof X` is simply false.
    const target = { [name]: function () {} }[name];
    return new Proxy(target, {
      apply() { throw new H.NotSupportedError(name); },
      construct() { throw new H.NotSupportedError(name); },
      get(t, prop, receiver) {
        if (passThrough(prop)) return Reflect.get(t, prop, receiver);
        throw new H.NotSupportedError(`${name}.${String(prop)}`);
      },
      set(t, prop) { throw new H.NotSupportedError(`${name}.${String(prop)}`); },
      defineProperty(t, prop) { throw new H.NotSupportedError(`${name}.${String(prop)}`); },
    });
  }

  function unsupportedNamespace(name) {
    return new Proxy(Object.create(null, { [Symbol.toStringTag]: { value: name } }), {
      get(t, prop, receiver) {
        if (typeof prop === "symbol") return Reflect.get(t, prop, receiver);
        throw new H.NotSupportedError(`${name}.${String(prop)}`);
      },
      has(t, prop) { throw new H.NotSupportedError(`${name}.${String(prop)}`); },
      set(t, prop) { throw new H.NotSupportedError(`${name}.${String(prop)}`); },
      defineProperty(t, prop) { throw new H.NotSupportedError(`${name}.${String(prop)}`); },
      deleteProperty(t, prop) { throw new H.NotSupportedError(`${name}.${String(prop)}`); },
      ownKeys() { throw new H.NotSupportedError(name); },
      getOwnPropertyDescriptor(t, prop) { throw new H.NotSupportedError(`${name}.${String(prop)}`); },
    });
  }

  for (const name of ["WebAssembly", "Intl"]) {
    if (globalThis[name] === undefined) define(name, unsupportedNamespace(name));
  }
  for (const name of [
    "FormData", "Blob", "File", "ReadableStream", "WritableStream", "TransformStream", "CompressionStream",
    "DecompressionStream", "WebSocket", "XMLHttpRequest",
  ]) {
    if (globalThis[name] === undefined) define(name, unsupportedConstructor(name));
  }
})();
