// web/timers.js: setTimeout / setInterval / clearTimeout / clearInterval owned by the host.
// They never sleep. Callbacks run when the host's clock reaches them inside the event's settle window
// (H.fireDue); XState's own timers of the instance never come here (the harness persists them).

(() => {
  function setTimeout(fn, ms, ...args) {
    if (typeof fn !== "function") throw new TypeError("setTimeout: the callback must be a function (strings are not evaluated)");
    return H.setTimer(fn, ms, args, false);
  }
  function setInterval(fn, ms, ...args) {
    if (typeof fn !== "function") throw new TypeError("setInterval: the callback must be a function (strings are not evaluated)");
    return H.setTimer(fn, ms, args, true);
  }
  function clearTimeout(id) {
    if (id !== undefined && id !== null) H.clearTimer(id);
  }
  function setImmediate(fn, ...args) {
    return setTimeout(fn, 0, ...args);
  }
  for (const [name, fn] of Object.entries({ setTimeout, setInterval, clearTimeout, clearInterval: clearTimeout, setImmediate, clearImmediate: clearTimeout })) {
    Object.defineProperty(globalThis, name, { value: fn, writable: true, configurable: true, enumerable: false });
  }
})();
