"""QuickJS-NG compiled to WebAssembly, under wasmtime: the hardened engine.

The same QuickJS-NG as the native engine, built by runtime/wasm_build.py with our own small ABI
(wasm/guest.c), behind the same host loop (guest_loop.py), so callers cannot tell the engines apart.
A QuickJS memory-safety bug reachable from JavaScript now corrupts or traps one instance's linear
memory, not the server. Facts behind each choice: ../shared/spec/runtime-semantics.md section 4.

Decision log:

- **A pristine instance per sandbox** (each window's, unless the server parked the instance's last
  one, and each one-shot call's). The guest with the prelude loaded is a
  pre-initialised module (its data section rewritten to hold the memory image, Wizer-style, in
  :func:`preinitialise`), compiled once and cached serialized on disk; instantiating it is
  copy-on-write (about 0.1 ms). Each prepared machine keeps the pages that evaluating its bundle and
  ``attach`` changed (a memory diff against that image) and writes them into every new instance, so
  a window starts at the machine's pristine state without evaluating the bundle again.
- **Memory**: QuickJS's own limit (correct here: the guest wires in ``malloc_usable_size``) gives a
  catchable-by-the-host ``out of memory``; ``Store.set_limits`` caps linear memory a little above it
  as the hard wall.
- **CPU**: QuickJS's interrupt handler polls ``host.interrupt``, which compares deadlines: ``cpu_ms``
  of this thread's CPU time per call into the guest (the guest runs on the calling thread, so a busy
  server does not make it fire early, unlike the native engine's process CPU clock) and
  ``entry_wall_ms`` of wall time per entry (uncatchable in JS). Epoch interruption is the backstop
  for code that never polls: a trap after twice ``cpu_ms`` plus 2 s of wall time.
- **Stack**: QuickJS's stack check against the shadow stack (2 MiB, laid out first by zig, so an
  overflow traps instead of corrupting data), and ``max_wasm_stack`` = 2 MiB (larger aborts the
  process in wasmtime-py). The JS limit is clamped to ``JS_STACK_MAX`` so that JS recursion meets
  QuickJS's catchable RangeError before the native wasm stack runs out.
- **Any trap discards the instance** (its heap is in an undefined state) and is a guest fault.
- **No WASI**: the few WASI functions the C library imports are stubs (no files, no environment);
  the clock has millisecond resolution.
- **Few, cheap calls**: exports are looked up lazily (an eager lookup costs milliseconds) and called
  through the C API directly (``Func.__call__`` looks the type up on every call); one entry is two
  calls (alloc, call) plus one to pump jobs. wasmtime is pinned exactly in pyproject.toml because
  this module uses its ctypes layer (``wasmtime._ffi``).
- Serialized modules are trusted input: only files this module wrote, in the 0700 cache directory.
- **Persisted machine images** (``image_cache_bytes`` > 0; ``statehost serve`` gives 512 MB): what
  preparing a version produced (its changed pages, the attach reply) is kept on disk
  (image_cache.py) under a key of everything that determines it, so a restarted server prepares a
  version by reading a file instead of evaluating its bundle (docs/runtime.md).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi

from ..bundle import MachineBundle
from ..engine import PreparedMachine
from ..errors import HostError
from ..limits import Limits, Outcome
from ..shims import load_lazy_shims, prelude, prelude_hash
from ..wasm_build import SHADOW_STACK_BYTES, cache_dir, guest_wasm
from .guest_loop import (
    VM,
    GuestDataError,
    GuestLoopEngine,
    RuntimeApiSource,
    VMError,
    VMProvider,
    _Prepared,
)
from .image_cache import ImageCache

__all__ = ["QuickJSWasmEngine", "WasmRuntime", "preinitialise"]

MAX_WASM_STACK = 2 * 1024 * 1024
JS_STACK_MAX = 576 * 1024
"""The JS stack limit is clamped to this. The real bound is the 2 MiB native wasm stack: measured
here, JS recursion exhausts it before QuickJS's check fires from about 768 KiB of JS stack (a clean
trap, reported as exceeded_stack, but the machine cannot catch it as a RangeError). C recursion that
uses little shadow stack (JSON.parse of deeply nested input) can still trap that way."""
MEMORY_HEADROOM = 16 * 1024 * 1024
"""Linear memory allowed above the QuickJS heap limit: the image (stack, static data), fragmentation."""
EPOCH_TICK_S = 0.05
EPOCH_GRACE_MS = 2_000
PAGE = 65536
DIFF_CHUNK = 4096

_TAG_TEXT, _TAG_NONE, _TAG_EXCEPTION, _TAG_STACK, _TAG_NOT_TEXT, _TAG_NO_MEMORY = range(6)
_WASI_EBADF = 8

log = logging.getLogger("statehost")

_current = threading.local()
"""The VM whose export the current thread is running (the interrupt callback consults it)."""


def _interrupt() -> int:
    vm: _WasmVM | None = getattr(_current, "vm", None)
    if vm is None:
        return 0
    if time.thread_time() > vm.call_deadline:
        vm.interrupt_reason = Outcome.EXCEEDED_CPU
        return 1
    if time.monotonic() > vm.entry_deadline:
        vm.interrupt_reason = Outcome.EXCEEDED_WALL_TIME
        return 1
    return 0


# ---- the Wizer-style rewrite ----------------------------------------------------------------------


def _uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _sleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if (value == 0 and not byte & 0x40) or (value == -1 and byte & 0x40):
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def _read_uleb(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def _sections(wasm: bytes) -> Iterator[tuple[int, bytes]]:
    if wasm[:8] != b"\0asm\x01\0\0\0":
        raise ValueError("not a wasm module (version 1)")
    pos = 8
    while pos < len(wasm):
        sid = wasm[pos]
        size, pos = _read_uleb(wasm, pos + 1)
        yield sid, wasm[pos : pos + size]
        pos += size


def _section(sid: int, body: bytes) -> bytes:
    return bytes([sid]) + _uleb(len(body)) + body


def _nonzero_runs(image: bytes, chunk: int = DIFF_CHUNK) -> list[tuple[int, int]]:
    """(start, end) of the runs of chunks that hold any non-zero byte."""
    runs: list[tuple[int, int]] = []
    zero = bytes(chunk)
    view = memoryview(image)
    for start in range(0, len(image), chunk):
        if view[start : start + chunk] != zero[: min(chunk, len(image) - start)]:
            end = min(start + chunk, len(image))
            if runs and runs[-1][1] == start:
                runs[-1] = (runs[-1][0], end)
            else:
                runs.append((start, end))
    return runs


def preinitialise(wasm: bytes, memory: bytes, globals_: dict[int, int]) -> bytes:
    """The module ``wasm`` rewritten so that an instance starts where a running one stood: its data
    section holds ``memory`` (as active segments of the non-zero runs), its memory minimum fits it,
    and the mutable i32 globals named by index in ``globals_`` start at those values. The caller must
    then not run ``_initialize`` again."""
    pages = -(-len(memory) // PAGE)
    out = bytearray(wasm[:8])
    wrote_data = False
    for sid, body in _sections(wasm):
        if sid == 5:  # memory: one memory, minimum raised to the image
            count, pos = _read_uleb(body, 0)
            if count != 1:
                raise ValueError("expected exactly one memory")
            flags, pos = _read_uleb(body, pos)
            _, pos = _read_uleb(body, pos)
            rest = body[pos:]
            out += _section(5, _uleb(1) + _uleb(flags) + _uleb(pages) + rest)
        elif sid == 6:  # globals: mutable i32 globals initialised to their snapshot values
            count, pos = _read_uleb(body, 0)
            new = bytearray(_uleb(count))
            for index in range(count):
                valtype, mutable = body[pos], body[pos + 1]
                start = pos
                pos += 2
                while body[pos] != 0x0B:  # the init expression: skip to its `end`
                    pos += 1
                pos += 1
                if index in globals_:
                    if valtype != 0x7F or not mutable:
                        raise ValueError(f"global {index} is not a mutable i32")
                    new += bytes([valtype, mutable, 0x41]) + _sleb(globals_[index]) + b"\x0b"
                else:
                    new += body[start:pos]
            out += _section(6, bytes(new))
        elif sid == 11:
            runs = _nonzero_runs(memory)
            data = bytearray(_uleb(len(runs)))
            for start, end in runs:
                data += b"\x00\x41" + _sleb(start) + b"\x0b" + _uleb(end - start) + memory[start:end]
            out += _section(11, bytes(data))
            wrote_data = True
        elif sid == 12:  # data count: must match the data section
            out += _section(12, _uleb(len(_nonzero_runs(memory))))
        else:
            out += _section(sid, body)
    if not wrote_data:
        raise ValueError("the module has no data section to replace")
    return bytes(out)


def _global_index(wasm: bytes, name: str) -> int:
    """The index of an exported global (imported globals count first; the guest imports none)."""
    for sid, body in _sections(wasm):
        if sid == 7:
            count, pos = _read_uleb(body, 0)
            for _ in range(count):
                length, pos = _read_uleb(body, pos)
                export = body[pos : pos + length].decode()
                kind = body[pos + length]
                index, pos = _read_uleb(body, pos + length + 1)
                if kind == 3 and export == name:
                    return index
    raise ValueError(f"no exported global {name!r}")


# ---- the process-wide runtime: engine, linker, modules ---------------------------------------------


def _wasi_stub(errno: int) -> Callable[..., int]:
    return lambda *args: errno


def _clock_time_get(caller: wasmtime.Caller, clock_id: int, precision: int, out: int) -> int:
    """Millisecond resolution only (no high-resolution timers for guests)."""
    now_ns = (time.time_ns() if clock_id == 0 else time.monotonic_ns()) // 1_000_000 * 1_000_000
    memory = caller.get("memory")
    if not isinstance(memory, wasmtime.Memory):
        return _WASI_EBADF
    memory.write(caller, struct.pack("<Q", now_ns), out)
    return 0


class WasmRuntime:
    """The wasmtime engine, the linker and the pre-initialised prelude module: one per process.

    Building it compiles (or loads from the cache) the guest and its prelude image: about a second
    the first time on a machine, milliseconds afterwards."""

    _instance: WasmRuntime | None = None
    _lock = threading.Lock()

    @classmethod
    def get(cls) -> WasmRuntime:
        with cls._lock:
            if cls._instance is None:
                cls._instance = WasmRuntime()
            return cls._instance

    def __init__(self) -> None:
        config = wasmtime.Config()
        config.epoch_interruption = True
        config.max_wasm_stack = MAX_WASM_STACK
        self.config_key = f"wasmtime={version('wasmtime')};epoch=1;stack={MAX_WASM_STACK}"
        self.engine = wasmtime.Engine(config)
        self.guest_path = guest_wasm()
        self.guest_bytes = self.guest_path.read_bytes()
        self.guest_digest = hashlib.sha256(self.guest_bytes).hexdigest()
        self._cache_key = hashlib.sha256(self.config_key.encode() + b"\0" + self.guest_bytes)
        """Hashed once: every cache file's key starts with the configuration and the guest."""
        self.linker = self._linker()
        self.stack_pointer_index = _global_index(self.guest_bytes, "__stack_pointer")
        self.image_limits = Limits()
        self.timings: dict[str, float] = {}
        self._base: wasmtime.Module | None = None
        self._compiler: ThreadPoolExecutor | None = None
        self.image = self._prelude_image()
        self.pre = self.linker.instantiate_pre(self.image)
        started = time.perf_counter()
        probe = _WasmVM(self, self.image_limits, fresh=False)
        self.image_memory = probe.memory_bytes()
        self.image_stack_pointer = probe.stack_pointer()
        self.image_digest = hashlib.sha256(self.image_memory).hexdigest()
        """Names the prelude image (guest, prelude, lazy shims) in persisted machine images' keys."""
        probe.close()
        self.timings["read_image_s"] = time.perf_counter() - started
        self._ticker = threading.Thread(target=self._tick, name="statehost-wasm-epoch", daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        while True:
            time.sleep(EPOCH_TICK_S)
            self.engine.increment_epoch()

    def _linker(self) -> wasmtime.Linker:
        """host.interrupt, and stubs for the WASI functions wasi-libc imports (no files, no env)."""
        linker = wasmtime.Linker(self.engine)
        i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
        linker.define_func("host", "interrupt", wasmtime.FuncType([], [i32]), _interrupt)
        wasi = "wasi_snapshot_preview1"
        clock = wasmtime.FuncType([i32, i64, i32], [i32])
        linker.define_func(wasi, "clock_time_get", clock, _clock_time_get, access_caller=True)
        for name, params in (
            ("fd_close", [i32]),
            ("fd_fdstat_get", [i32, i32]),
            ("fd_seek", [i32, i64, i32, i32]),
            ("fd_write", [i32, i32, i32, i32]),
        ):
            linker.define_func(wasi, name, wasmtime.FuncType(params, [i32]), _wasi_stub(_WASI_EBADF))
        return linker

    def base(self) -> wasmtime.Module:
        """The guest as built (only needed to make the prelude image)."""
        if self._base is None:
            self._base = self._compiled("guest", self.guest_bytes, lambda: self.guest_bytes)
        return self._base

    def _cache_path(self, kind: str, key_bytes: bytes) -> Path:
        key = self._cache_key.copy()
        key.update(key_bytes)
        return cache_dir() / f"{kind}-{key.hexdigest()[:24]}.cwasm"

    def _load(self, path: Path) -> wasmtime.Module | None:
        if path.exists():
            try:
                return wasmtime.Module.deserialize_file(self.engine, str(path))
            except wasmtime.WasmtimeError:
                path.unlink(missing_ok=True)  # another wasmtime or a torn file: compile again
        return None

    def cached_machine_module(self, key: bytes) -> wasmtime.InstancePre | None:
        module = self._load(self._cache_path("machine", key))
        return None if module is None else self.linker.instantiate_pre(module)

    def compile_machine_module(self, machine: MachineImage) -> None:
        """Compile a hot machine's own pre-initialised module in the background (one at a time)."""

        def work() -> None:
            try:
                wasm = preinitialise(
                    self.guest_bytes, machine.memory(), {self.stack_pointer_index: self.image_stack_pointer}
                )
                module = self._compiled("machine", machine.key, lambda: wasm)
                machine.pre = self.linker.instantiate_pre(module)
            except Exception:  # the patch tier keeps working; nothing depends on this
                log.exception("could not compile a machine's pre-initialised module")

        with self._lock:
            if self._compiler is None:
                self._compiler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="statehost-wasm-compile")
            self._compiler.submit(work)

    def _compiled(self, kind: str, key_bytes: bytes, make: Callable[[], bytes]) -> wasmtime.Module:
        """A module from the serialized cache, or compiled (and cached) from ``make()``."""
        path = self._cache_path(kind, key_bytes)
        cached = self._load(path)
        if cached is not None:
            return cached
        wasm = make()
        started = time.perf_counter()
        module = wasmtime.Module(self.engine, wasm)
        self.timings[f"compile_{kind}_s"] = time.perf_counter() - started
        partial = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        partial.write_bytes(module.serialize())
        os.replace(partial, path)
        return module

    def _prelude_image(self) -> wasmtime.Module:
        limits = self.image_limits
        key = prelude_hash().encode() + b"+lazy-shims-loaded" + repr(_guest_limits(limits)).encode()

        def make() -> bytes:
            started = time.perf_counter()
            vm = _WasmVM(self, limits, fresh=True)
            vm.eval(prelude())
            # Every sandbox starts from this image: the shims lazy on the native engine are compiled
            # into it once, instead of in every event that touches fetch, URL or crypto.
            vm.eval(load_lazy_shims())
            if vm.call_i32("g_capture_entry") != 0:
                raise HostError("the prelude did not define __statehost_entry")
            memory, sp = vm.memory_bytes(), vm.stack_pointer()
            vm.close()
            self.timings["initialise_prelude_s"] = time.perf_counter() - started
            return preinitialise(self.guest_bytes, memory, {self.stack_pointer_index: sp})

        return self._compiled("prelude-image", key, make)


def _guest_limits(limits: Limits) -> tuple[int, int]:
    """What the guest is told: the QuickJS heap limit and a JS stack limit below the shadow stack."""
    stack = max(64 * 1024, min(limits.stack_bytes, JS_STACK_MAX, SHADOW_STACK_BYTES // 2))
    return min(limits.memory_bytes, 2**32 - 1), stack


# ---- one instance ------------------------------------------------------------------------------------


class _Trapped(Exception):
    pass


class _WasmVM(VM):
    """One wasm instance in its own store. ``fresh``: the plain guest (run ``_initialize`` and
    ``g_init``); otherwise the pre-initialised prelude image (plus ``patch``, a machine's pages)."""

    def __init__(
        self, runtime: WasmRuntime, limits: Limits, fresh: bool = False, machine: MachineImage | None = None
    ) -> None:
        self.runtime = runtime
        self.limits = limits
        self.call_deadline = self.entry_deadline = float("inf")
        self.interrupt_reason: Outcome | None = None
        self._exports: dict[str, Any] = {}
        self.dead: str | None = None
        store = wasmtime.Store(runtime.engine)
        self.memory_cap = limits.memory_bytes + MEMORY_HEADROOM + SHADOW_STACK_BYTES
        store.set_limits(memory_size=self.memory_cap)
        store.set_epoch_deadline(1 << 40)
        self.store: wasmtime.Store | None = store
        self._ctx = store._context()
        self.machine = machine
        module_pre = machine.pre if machine is not None else None
        if fresh:
            self.instance = runtime.linker.instantiate(store, runtime.base())
        else:
            self.instance = (module_pre or runtime.pre).instantiate(store)
        self._memory = self._export("memory").memory
        mem_limit, stack = _guest_limits(limits)
        if fresh:
            self.call_i32("_initialize", results=0)
            if self.call_i32("g_init", mem_limit, stack, 1) != 0:
                raise HostError("the WASM guest failed to initialise")
        else:
            if machine is not None:
                if module_pre is None:
                    machine.apply(self)
                machine.used += 1
                self.attached = True
            image_limits = machine.guest_limits if machine is not None else _guest_limits(runtime.image_limits)
            if (mem_limit, stack) != image_limits:
                self.call_i32("g_set_limits", mem_limit, stack, results=0)

    # -- the C API, directly ------------------------------------------------------------------------------

    def _export(self, name: str) -> Any:
        item = self._exports.get(name)
        if item is None:
            item = ffi.wasmtime_extern_t()
            raw = name.encode()
            if not ffi.wasmtime_instance_export_get(
                self._ctx, ctypes.byref(self.instance._instance), raw, len(raw), ctypes.byref(item)
            ):
                raise HostError(f"the WASM guest does not export {name}")
            self._exports[name] = item
        return item.of

    def call_i32(self, name: str, *args: int, results: int = 1) -> int:
        """Call an export with i32 arguments; its i32 result. A trap kills the instance."""
        store = self.store
        if store is None:
            raise VMError(f"the sandbox was discarded after {self.dead or 'closing'}", Outcome.GUEST_ERROR)
        func = self._export(name).func
        params = (ffi.wasmtime_val_t * max(len(args), 1))()
        for i, arg in enumerate(args):
            params[i].kind = 0  # type: ignore[assignment]  # WASMTIME_I32
            params[i].of.i32 = arg
        out = (ffi.wasmtime_val_t * 1)()
        trap = ctypes.POINTER(ffi.wasm_trap_t)()
        self.call_deadline = time.thread_time() + self.limits.cpu_ms / 1000
        self.interrupt_reason = None
        ticks = (2 * self.limits.cpu_ms + EPOCH_GRACE_MS) / 1000 / EPOCH_TICK_S
        store.set_epoch_deadline(int(ticks) + 1)
        _current.vm = self
        try:
            error = ffi.wasmtime_func_call(
                self._ctx, ctypes.byref(func), params, len(args), out, results, ctypes.byref(trap)
            )
        finally:
            _current.vm = None
        if error:
            self._die(str(wasmtime.WasmtimeError._from_ptr(error)), None)
        if trap:
            caught = wasmtime.Trap._from_ptr(trap)
            code = caught.trap_code
            self._die(code.name.lower().replace("_", " ") if code else caught.message.split("\n", 1)[0], code)
        return int(out[0].of.i32) if results else 0

    def _die(self, message: str, code: wasmtime.TrapCode | None) -> None:
        self.dead = f"a trap ({message})"
        outcome = Outcome.GUEST_ERROR
        if code is wasmtime.TrapCode.INTERRUPT:
            outcome = self.interrupt_reason or Outcome.EXCEEDED_CPU
        elif code is wasmtime.TrapCode.STACK_OVERFLOW:
            outcome = Outcome.EXCEEDED_STACK
        elif self.memory_size() + 2 * PAGE > self.memory_cap:
            outcome = Outcome.EXCEEDED_MEMORY
        self.close()
        raise VMError(f"the sandbox trapped: {message}", outcome)

    def _base(self) -> int:
        return ctypes.addressof(ffi.wasmtime_memory_data(self._ctx, ctypes.byref(self._memory)).contents)

    def memory_size(self) -> int:
        if self.store is None:
            return 0
        return int(ffi.wasmtime_memory_data_size(self._ctx, ctypes.byref(self._memory)))

    def memory_bytes(self) -> bytes:
        return ctypes.string_at(self._base(), self.memory_size())

    def grow_to(self, size: int) -> None:
        current = self.memory_size()
        if size > current:
            prev = ctypes.c_uint64()
            error = ffi.wasmtime_memory_grow(
                self._ctx, ctypes.byref(self._memory), (size - current) // PAGE, ctypes.byref(prev)
            )
            if error:
                raise HostError(f"could not grow the sandbox's memory: {wasmtime.WasmtimeError._from_ptr(error)}")

    def write(self, offset: int, data: bytes) -> None:
        ctypes.memmove(self._base() + offset, data, len(data))

    def stack_pointer(self) -> int:
        value = ffi.wasmtime_val_t()
        ffi.wasmtime_global_get(self._ctx, ctypes.byref(self._export("__stack_pointer").global_), ctypes.byref(value))
        return int(value.of.i32)

    def _reply(self, ptr: int) -> tuple[int, bytes]:
        base = self._base()
        tag, length = struct.unpack("<II", ctypes.string_at(base + ptr, 8))
        return tag, ctypes.string_at(base + ptr + 8, length)

    def _text_or_raise(self, ptr: int) -> tuple[int, str]:
        tag, data = self._reply(ptr)
        text = data.decode("utf-8", "replace")
        if tag == _TAG_EXCEPTION:
            wall = "interrupted" in text.split("\n", 1)[0] and self.interrupt_reason is Outcome.EXCEEDED_WALL_TIME
            raise VMError(text, Outcome.EXCEEDED_WALL_TIME if wall else None)
        if tag == _TAG_STACK:
            raise VMError(text, Outcome.EXCEEDED_STACK)
        if tag == _TAG_NO_MEMORY:
            raise VMError("InternalError: out of memory", Outcome.EXCEEDED_MEMORY)
        return tag, text

    def _pass(self, data: bytes, extra: int = 0) -> int:
        """Copy ``data`` into a fresh guest allocation (``extra`` more bytes, zeroed)."""
        ptr = self.call_i32("g_alloc", len(data) + extra)
        if ptr == 0:
            raise VMError("InternalError: out of memory", Outcome.EXCEEDED_MEMORY)
        self.write(ptr, data + bytes(extra))
        return ptr

    # -- VM ----------------------------------------------------------------------------------------------

    def eval(self, code: str) -> str | None:
        data = code.encode()
        tag, text = self._text_or_raise(self.call_i32("g_eval", self._pass(data, extra=1), len(data)))
        return text if tag == _TAG_TEXT else None

    def call_entry(self, op: str, arg: str) -> str | None:
        raw_op, raw_arg = op.encode(), arg.encode()
        ptr = self._pass(raw_op + raw_arg)
        tag, text = self._text_or_raise(self.call_i32("g_call_entry", ptr, len(raw_op), len(raw_arg)))
        if tag == _TAG_NOT_TEXT:
            raise GuestDataError(f"the sandbox answered {op} with {text}, not JSON text")
        return text if tag == _TAG_TEXT else None

    def run_jobs(self, max_jobs: int, deadline: float) -> int:
        ran = self.call_i32("g_run_jobs", max(0, min(max_jobs, 2**31 - 1)))
        if ran >= 0:
            return ran
        # g_take_exception runs no guest code, but call_i32 clears the interrupt's reason: keep the
        # reason of the job that failed (a wall-time interrupt was reported as a CPU one).
        reason = self.interrupt_reason
        ptr = self.call_i32("g_take_exception")
        self.interrupt_reason = reason
        self._text_or_raise(ptr)
        raise VMError("a promise job failed")

    def start_entry(self, deadline: float) -> None:
        self.entry_deadline = deadline

    def footprint(self) -> int:
        # Linear memory never shrinks, and its untouched pages (zeros, or the image's pages mapped
        # copy-on-write) are not resident: an upper bound of what the instance keeps in RAM.
        return self.memory_size()

    def mem_used(self) -> int:
        return self.call_i32("g_mem_used") & 0xFFFFFFFF

    def heap_used(self) -> int:
        return 0 if self.store is None else self.mem_used()

    @property
    def alive(self) -> bool:
        return self.store is not None

    footprint_is_cheap = True  # the size of linear memory

    def close(self) -> None:
        self.store = None  # the store (and its memory) go with it
        self._exports.clear()


class MachineImage:
    """A machine's pristine state (after its bundle and ``attach``), in two tiers:

    1. the pages that differ from the prelude image, written into each new instance of that image
       (no compile; about 0.5 ms per instance for a 1.2 MB XState bundle, the page faults of the copy);
    2. once the machine is hot (``COMPILE_AFTER`` instances), a pre-initialised module of its own,
       compiled on a background thread and cached on disk by content hash: instances then map its
       memory copy-on-write (about 0.05 ms). A restarted server finds it in the cache at once.
    """

    COMPILE_AFTER = 32

    def __init__(
        self,
        runtime: WasmRuntime,
        size: int,
        runs: tuple[tuple[int, bytes], ...],
        guest_limits: tuple[int, int],
        key: bytes,
    ) -> None:
        self.runtime = runtime
        self.size = size
        self.runs = runs
        self.guest_limits = guest_limits
        self.key = key
        """The whole memory's hash and the guest limits: names the compiled module of a hot machine."""
        self.pre: wasmtime.InstancePre | None = runtime.cached_machine_module(self.key)
        self.used = 0
        self._compiling = False

    @classmethod
    def of_memory(cls, runtime: WasmRuntime, memory: bytes, guest_limits: tuple[int, int]) -> MachineImage:
        key = hashlib.sha256(memory).digest() + repr(guest_limits).encode()
        return cls(runtime, len(memory), _diff(runtime.image_memory, memory), guest_limits, key)

    @property
    def patch_bytes(self) -> int:
        return sum(len(data) for _, data in self.runs)

    def apply(self, vm: _WasmVM) -> None:
        vm.grow_to(self.size)
        base = vm._base()
        for offset, data in self.runs:
            ctypes.memmove(base + offset, data, len(data))
        if self.used + 1 >= self.COMPILE_AFTER and not self._compiling:
            self._compiling = True
            self.runtime.compile_machine_module(self)

    def memory(self) -> bytes:
        full = bytearray(self.runtime.image_memory)
        full.extend(bytes(self.size - len(full)))
        for offset, data in self.runs:
            full[offset : offset + len(data)] = data
        return bytes(full)


def _diff(before: bytes, after: bytes) -> tuple[tuple[int, bytes], ...]:
    """The runs of DIFF_CHUNK-sized chunks of ``after`` that differ from ``before`` (zero-extended)."""
    # bytes slices, not memoryviews: comparing two memoryviews goes item by item (10x slower here).
    runs: list[tuple[int, bytes]] = []
    zero = bytes(DIFF_CHUNK)
    start = -1
    for offset in range(0, len(after), DIFF_CHUNK):
        chunk = after[offset : offset + DIFF_CHUNK]
        old = before[offset : offset + DIFF_CHUNK] if offset < len(before) else zero[: len(chunk)]
        if chunk != old:
            if start < 0:
                start = offset
        elif start >= 0:
            runs.append((start, after[start:offset]))
            start = -1
    if start >= 0:
        runs.append((start, after[start:]))
    return tuple(runs)


class _WasmProvider(VMProvider):
    def __init__(self, runtime: WasmRuntime | None = None) -> None:
        self._runtime = runtime

    @property
    def runtime(self) -> WasmRuntime:
        if self._runtime is None:
            self._runtime = WasmRuntime.get()
        return self._runtime

    def open(self, scripts: Sequence[str], limits: Limits) -> VM:
        vm = _WasmVM(self.runtime, limits)
        try:
            for script in scripts:
                vm.eval(script)
        except BaseException:
            vm.close()
            raise
        return vm

    def opener(
        self, scripts: Sequence[str], limits: Limits, attach: str, attached: VM | None = None
    ) -> Callable[[Limits], VM]:
        """Evaluate the bundle and attach once (or take ``attached``, a VM that just did), keep the
        changed pages, start every VM from them."""
        runtime = self.runtime
        if (
            isinstance(attached, _WasmVM)
            and attached.store is not None
            and attached.stack_pointer() == runtime.image_stack_pointer
        ):
            return _ImageOpener(MachineImage.of_memory(runtime, attached.memory_bytes(), _guest_limits(limits)))
        vm = _WasmVM(runtime, limits)
        try:
            vm.start_entry(time.monotonic() + limits.entry_wall_ms / 1000)
            for script in scripts:
                vm.eval(script)
            reply = vm.call_entry("attach", json.dumps({"runtimeApi": attach}))
            if not reply or "fault" in json.loads(reply) or vm.stack_pointer() != runtime.image_stack_pointer:
                raise GuestDataError("attach failed")
            image = MachineImage.of_memory(runtime, vm.memory_bytes(), _guest_limits(limits))
        except (VMError, GuestDataError, ValueError, RecursionError):
            # Leave it to each window to meet (and report) the fault the same way.
            return lambda current: self.open(scripts, current)
        finally:
            vm.close()
        return _ImageOpener(image)


class _ImageOpener:
    """Opens the VMs of a prepared machine from its image (``VMProvider.opener``'s result)."""

    def __init__(self, image: MachineImage) -> None:
        self.image = image

    def __call__(self, current: Limits) -> VM:
        return _WasmVM(self.image.runtime, current, machine=self.image)


class _RestoredProvider(VMProvider):
    """Hands a machine image read from disk to a prepared machine, instead of evaluating its bundle."""

    def __init__(self, provider: _WasmProvider, image: MachineImage) -> None:
        self._provider = provider
        self._image = image

    def open(self, scripts: Sequence[str], limits: Limits) -> VM:
        return self._provider.open(scripts, limits)

    def opener(
        self, scripts: Sequence[str], limits: Limits, attach: str, attached: VM | None = None
    ) -> Callable[[Limits], VM]:
        return _ImageOpener(self._image)


IMAGE_FORMAT = 1
"""Part of every persisted image's key: bump it when what an image holds, or means, changes."""


class QuickJSWasmEngine(GuestLoopEngine):
    """QuickJS-NG in WebAssembly under wasmtime, a pristine instance per sandbox.

    ``image_cache_bytes`` > 0 keeps prepared machine images on disk (``image_dir``, default
    ``<cache dir>/machine-images``; runtime/engines/image_cache.py), keyed by everything that
    determines one: the wasmtime configuration and guest, the prelude image (its memory's hash),
    the bundle, the limits and the engine. ``prepare`` then loads a version it (or another process)
    prepared before without evaluating its bundle: same pages, same attach reply, so machines
    cannot tell (top-level code runs before any entry set the clock or seeded the DRBG)."""

    name = "quickjs-wasm"

    def __init__(
        self,
        runtime_api: RuntimeApiSource | None = None,
        runtime: WasmRuntime | None = None,
        *,
        image_cache_bytes: int = 0,
        image_dir: Path | None = None,
    ) -> None:
        self._wasm = _WasmProvider(runtime)
        super().__init__(self._wasm, runtime_api)
        self.images: ImageCache | None = None
        if image_cache_bytes > 0:
            self.images = ImageCache(image_dir or cache_dir() / "machine-images", image_cache_bytes)
        self._lock = threading.Lock()
        self.prepare_stats = {"evaluated": 0, "loaded": 0}
        """Since start: versions prepared by evaluating their bundle, and loaded from a persisted image."""

    def _count(self, name: str) -> None:
        with self._lock:
            self.prepare_stats[name] += 1

    def image_key(self, bundle: MachineBundle, limits: Limits) -> str:
        runtime = self._wasm.runtime
        key = hashlib.sha256()
        for part in (
            f"format={IMAGE_FORMAT};engine={self.name}",
            runtime.config_key,
            runtime.guest_digest,
            runtime.image_digest,
            f"sp={runtime.image_stack_pointer}",
            # the code's own hash (not the stored one: a key must not trust what it keys)
            f"bundle={hashlib.sha256(bundle.code.encode()).hexdigest()};xstate={bundle.xstate_major}",
            repr(limits),
        ):
            key.update(part.encode() + b"\0")
        return key.hexdigest()[:40]

    def prepare(self, bundle: MachineBundle, limits: Limits | None = None) -> PreparedMachine:
        limits = limits or Limits()
        if self.images is None:
            prepared = super().prepare(bundle, limits)
            self._count("evaluated")
            return prepared
        key = self.image_key(bundle, limits)
        restored = self._restore(key, bundle, limits)
        if restored is not None:
            self._count("loaded")
            return restored
        prepared = super().prepare(bundle, limits)
        self._count("evaluated")
        self._persist(key, prepared)
        return prepared

    def _restore(self, key: str, bundle: MachineBundle, limits: Limits) -> PreparedMachine | None:
        assert self.images is not None
        entry = self.images.get(key)
        if entry is None:
            return None
        head = entry.header
        try:
            major, exports, api_hash = int(head["major"]), tuple(head["exports"]), head["runtime_api"]
            size, guest_limits, memory_key = int(head["size"]), tuple(head["guest_limits"]), head["memory_key"]
            runs: list[tuple[int, bytes]] = []
            pos = 0
            for offset, length in head["runs"]:
                runs.append((int(offset), entry.body[pos : pos + length]))
                pos += length
            if pos != len(entry.body) or len(guest_limits) != 2:
                raise ValueError("the runs do not cover the body")
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("machine image %s has a malformed header (%s): rebuilding", key, exc)
            return None
        runtime_api = None
        if api_hash is not None:  # self-contained: the runtime API beside it must be the one imaged
            if self._runtime_api is None:
                return None
            runtime_api = self._runtime_api(major)
            if hashlib.sha256(runtime_api.encode()).hexdigest() != api_hash:
                return None
        image = MachineImage(
            self._wasm.runtime,
            size,
            tuple(runs),
            (int(guest_limits[0]), int(guest_limits[1])),
            bytes.fromhex(memory_key),
        )
        return _Prepared(bundle, major, exports, limits, runtime_api, _RestoredProvider(self._wasm, image))

    def _persist(self, key: str, prepared: PreparedMachine) -> None:
        assert self.images is not None
        opener = getattr(prepared, "_opener", None)
        if not isinstance(prepared, _Prepared) or not isinstance(opener, _ImageOpener):
            return  # no image (the bundle failed to attach once; each window meets that itself)
        image = opener.image
        runtime_api = None
        if prepared.runtime_api_mode == "global":
            if self._runtime_api is None:
                return
            runtime_api = self._runtime_api(prepared.major)
        header = {
            "major": prepared.major,
            "exports": list(prepared.exports),
            "runtime_api": None if runtime_api is None else hashlib.sha256(runtime_api.encode()).hexdigest(),
            "size": image.size,
            "guest_limits": list(image.guest_limits),
            "memory_key": image.key.hex(),
            "runs": [[offset, len(data)] for offset, data in image.runs],
        }
        self.images.put(key, header, b"".join(data for _, data in image.runs))
