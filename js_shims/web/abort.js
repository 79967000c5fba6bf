// web/abort.js: Event, EventTarget (only when the engine lacks them), AbortController and AbortSignal.
// XState v5's fromPromise hands every promise actor an AbortSignal, so these must behave like the
// browser's: listeners run synchronously on abort, in registration order, and once only.

(() => {
  const define = (name, value) =>
    Object.defineProperty(globalThis, name, { value, writable: true, configurable: true, enumerable: false });
  const illegal = {};  // passed by this file to constructors that user code may not call

  function reportListenerError(e) {
    // A throwing listener must not stop the others (browsers report it and carry on).
    const text = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
    H.log("stderr", "error", `Uncaught exception in event listener: ${text}`);
  }

  // ---- Event ----------------------------------------------------------------------------------
  const eventState = new WeakMap();
  const ev = (self) => {
    const s = eventState.get(self);
    if (!s) throw new TypeError("Illegal invocation: not an Event");
    return s;
  };

  class Event {
    constructor(type, init = undefined) {
      if (arguments.length === 0) throw new TypeError("Event: the type argument is required");
      if (init !== undefined && init !== null && typeof init !== "object") throw new TypeError("Event: init must be an object");
      const o = init || {};
      eventState.set(this, {
        type: String(type),
        bubbles: !!o.bubbles,
        cancelable: !!o.cancelable,
        composed: !!o.composed,
        target: null,
        currentTarget: null,
        defaultPrevented: false,
        stopImmediate: false,
        dispatching: false,
        timeStamp: H.now(),
      });
    }
    get type() { return ev(this).type; }
    get bubbles() { return ev(this).bubbles; }
    get cancelable() { return ev(this).cancelable; }
    get composed() { return ev(this).composed; }
    get target() { return ev(this).target; }
    get srcElement() { return ev(this).target; }
    get currentTarget() { return ev(this).currentTarget; }
    get defaultPrevented() { return ev(this).defaultPrevented; }
    get returnValue() { return !ev(this).defaultPrevented; }
    get eventPhase() { return ev(this).dispatching ? 2 : 0; }
    get isTrusted() { return false; }
    get timeStamp() { return ev(this).timeStamp; }
    composedPath() { const s = ev(this); return s.dispatching && s.currentTarget ? [s.currentTarget] : []; }
    preventDefault() { const s = ev(this); if (s.cancelable) s.defaultPrevented = true; }
    stopPropagation() { ev(this); }
    stopImmediatePropagation() { ev(this).stopImmediate = true; }
  }
  for (const [k, v] of Object.entries({ NONE: 0, CAPTURING_PHASE: 1, AT_TARGET: 2, BUBBLING_PHASE: 3 })) {
    Object.defineProperty(Event, k, { value: v, enumerable: true });
    Object.defineProperty(Event.prototype, k, { value: v, enumerable: true });
  }
  Object.defineProperty(Event.prototype, Symbol.toStringTag, { value: "Event", configurable: true });

  // ---- EventTarget ----------------------------------------------------------------------------
  const listenerMap = new WeakMap();  // target -> Map(type -> [{callback, capture, once, removed}])
  const listenersOf = (self) => {
    const m = listenerMap.get(self);
    if (!m) throw new TypeError("Illegal invocation: not an EventTarget");
    return m;
  };

  // `passive` only matters for scrolling in browsers; it is accepted and has no effect anywhere.
  function flattenOptions(options) {
    if (typeof options === "boolean") return { capture: options, once: false, signal: undefined };
    if (options === undefined || options === null) return { capture: false, once: false, signal: undefined };
    return { capture: !!options.capture, once: !!options.once, signal: options.signal };
  }

  class EventTarget {
    constructor() {
      listenerMap.set(this, new Map());
    }

    addEventListener(type, callback, options = undefined) {
      const all = listenersOf(this);
      if (callback === null || callback === undefined) return;
      if (typeof callback !== "function" && typeof callback !== "object") {
        throw new TypeError("addEventListener: the listener must be a function or an object with handleEvent");
      }
      const { capture, once, signal } = flattenOptions(options);
      if (signal !== undefined && !isSignal(signal)) throw new TypeError("addEventListener: options.signal must be an AbortSignal");
      if (signal && signal.aborted) return;
      type = String(type);
      let list = all.get(type);
      if (!list) all.set(type, (list = []));
      if (list.some((l) => l.callback === callback && l.capture === capture)) return;
      list.push({ callback, capture, once, removed: false });
      if (signal) signal.addEventListener("abort", () => this.removeEventListener(type, callback, { capture }));
    }

    removeEventListener(type, callback, options = undefined) {
      const all = listenersOf(this);
      const { capture } = flattenOptions(options);
      const list = all.get(String(type));
      if (!list) return;
      const i = list.findIndex((l) => l.callback === callback && l.capture === capture);
      if (i >= 0) {
        list[i].removed = true;
        list.splice(i, 1);
      }
    }

    dispatchEvent(event) {
      const all = listenersOf(this);
      const s = eventState.get(event);
      if (!s) throw new TypeError("dispatchEvent: the argument must be an Event");
      if (s.dispatching) throw new DOMException("The event is already being dispatched", "InvalidStateError");
      s.dispatching = true;
      s.target = this;
      s.currentTarget = this;
      s.stopImmediate = false;
      try {
        const list = all.get(s.type);
        // Snapshot: listeners added during dispatch do not run; removed ones are skipped.
        for (const l of list ? list.slice() : []) {
          if (l.removed) continue;
          if (l.once) this.removeEventListener(s.type, l.callback, { capture: l.capture });
          try {
            if (typeof l.callback === "function") l.callback.call(this, event);
            else if (typeof l.callback.handleEvent === "function") l.callback.handleEvent(event);
          } catch (e) {
            reportListenerError(e);
          }
          if (s.stopImmediate) break;
        }
      } finally {
        s.dispatching = false;
        s.currentTarget = null;
      }
      return !s.defaultPrevented;
    }
  }
  Object.defineProperty(EventTarget.prototype, Symbol.toStringTag, { value: "EventTarget", configurable: true });

  // ---- AbortSignal ----------------------------------------------------------------------------
  const signalState = new WeakMap();
  const sig = (self) => {
    const s = signalState.get(self);
    if (!s) throw new TypeError("Illegal invocation: not an AbortSignal");
    return s;
  };
  function isSignal(value) {
    return value !== null && typeof value === "object" && signalState.has(value);
  }

  function signalAbort(signal, reason) {
    const s = sig(signal);
    if (s.aborted) return;
    s.aborted = true;
    s.reason = reason === undefined ? new DOMException("signal is aborted without reason", "AbortError") : reason;
    // Dependents (AbortSignal.any) are marked before any listener runs, as the spec requires.
    const dependents = [];
    for (const ref of s.dependents) {
      const d = ref.deref();
      if (d && !sig(d).aborted) {
        sig(d).aborted = true;
        sig(d).reason = s.reason;
        dependents.push(d);
      }
    }
    s.dependents.clear();
    fireAbort(signal);
    for (const d of dependents) fireAbort(d);
  }

  function fireAbort(signal) {
    signal.dispatchEvent(new Event("abort"));
  }

  class AbortSignal extends EventTarget {
    constructor(token) {
      if (token !== illegal) throw new TypeError("Illegal constructor: use new AbortController().signal");
      super();
      signalState.set(this, { aborted: false, reason: undefined, onabort: null, onabortListener: null, dependents: new Set(), sources: null });
    }

    get aborted() { return sig(this).aborted; }
    get reason() { return sig(this).reason; }

    get onabort() { return sig(this).onabort; }
    set onabort(fn) {
      const s = sig(this);
      if (s.onabortListener) this.removeEventListener("abort", s.onabortListener);
      s.onabort = typeof fn === "function" ? fn : null;
      s.onabortListener = null;
      if (s.onabort) {
        const handler = s.onabort;
        s.onabortListener = function (event) { return handler.call(this, event); };
        this.addEventListener("abort", s.onabortListener);
      }
    }

    throwIfAborted() {
      const s = sig(this);
      if (s.aborted) throw s.reason;
    }

    static abort(reason = undefined) {
      const signal = new AbortSignal(illegal);
      signalAbort(signal, reason);
      return signal;
    }

    static timeout(ms) {
      const delay = Number(ms);
      if (!Number.isFinite(delay) || delay < 0 || delay > Number.MAX_SAFE_INTEGER) {
        throw new TypeError("AbortSignal.timeout: ms must be a non-negative finite number");
      }
      const signal = new AbortSignal(illegal);
      globalThis.setTimeout(() => signalAbort(signal, new DOMException("signal timed out", "TimeoutError")), Math.floor(delay));
      return signal;
    }

    static any(signals) {
      if (signals === null || signals === undefined || typeof signals[Symbol.iterator] !== "function") {
        throw new TypeError("AbortSignal.any: the argument must be an iterable of AbortSignals");
      }
      const list = Array.from(signals);
      for (const s of list) if (!isSignal(s)) throw new TypeError("AbortSignal.any: every element must be an AbortSignal");
      const result = new AbortSignal(illegal);
      for (const s of list) {
        if (sig(s).aborted) {
          sig(result).aborted = true;
          sig(result).reason = sig(s).reason;
          return result;
        }
      }
      // A dependent signal follows the sources of its own sources (so any(any(x)) aborts with x).
      // WeakRefs: a long-lived source signal must not keep every dependent alive.
      const sources = new Set();
      for (const s of list) for (const src of sig(s).sources || [s]) sources.add(src);
      sig(result).sources = Array.from(sources);
      for (const src of sources) sig(src).dependents.add(new WeakRef(result));
      return result;
    }
  }
  Object.defineProperty(AbortSignal.prototype, Symbol.toStringTag, { value: "AbortSignal", configurable: true });

  // ---- AbortController --------------------------------------------------------------------------
  const controllerSignal = new WeakMap();
  class AbortController {
    constructor() {
      controllerSignal.set(this, new AbortSignal(illegal));
    }
    get signal() {
      const s = controllerSignal.get(this);
      if (!s) throw new TypeError("Illegal invocation: not an AbortController");
      return s;
    }
    abort(reason = undefined) {
      signalAbort(this.signal, reason);
    }
  }
  Object.defineProperty(AbortController.prototype, Symbol.toStringTag, { value: "AbortController", configurable: true });

  if (typeof globalThis.Event !== "function") define("Event", Event);
  if (typeof globalThis.EventTarget !== "function") define("EventTarget", EventTarget);
  define("AbortSignal", AbortSignal);
  define("AbortController", AbortController);
})();
