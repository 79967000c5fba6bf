"""Live actors in worker processes: the :class:`~runtime.actors.ActorHost` interface, one process per core.

One Python process runs every guest entry under one GIL; an event costs ~3.5 ms of CPU of which the
GIL is held about half, so the second core idles (issue 17, part 2). A :class:`WorkerPool` starts
``workers`` processes (``python -m runtime.worker_main``, one per CPU by default); each holds, per
machine version, an in-process :class:`~runtime.actors.ActorHost` for its shard of the instances.
:meth:`WorkerPool.host` makes a :class:`WorkerActorHost`, which has the interface the server and
:func:`~runtime.actors.run_actor_window` call (:class:`~runtime.actors.LiveActorHost`): the asyncio
front keeps HTTP, auth, the single writer and effects; the executor thread that calls a method blocks
on the worker's pipe with the GIL released while the guest runs on another core.

- **Sharding**: an instance always lands on worker ``blake2b(id) % workers`` (a hash independent of
  the ActorHost's own ``crc32(id) % vms``, so each worker's VMs all get actors). A version is loaded
  into a worker on its first call there: the parent sends the bundle's code (and, for a
  self-contained bundle, the runtime API text), its limits and the actor settings, and the worker
  prepares it with its own engine: on the WASM engine from the persisted machine image cache
  (runtime/engines/image_cache.py; the parent has usually written the image already), so loading is
  a file read. Each worker gets ``ceil(settings.vms / workers)`` VMs of the version.
- **Messages**: a 4-byte length and a pickle, both ways; many calls in flight per worker (a call id
  each), answered by a thread pool in the worker (one VM's entries are still serialised by its lock,
  so a CPU-bound actor stalls only its VM). The parent unpickles replies with an allow-list: only
  the runtime's own value classes (Round and its parts, ActorStep, LostActor, MemoryPressure,
  ActorHostStats, Outcome) can be built, never a callable of the worker's choosing, so a
  compromised worker (a QuickJS bug under the native engine) cannot run code in the parent through
  its replies. Pickle against JSON: docs/decisions.md.
- **A worker that dies** (SIGKILL, the OOM killer, a crash; also a reply that does not decode, or a
  call that outlives ``call_timeout_s``, after which the parent kills it) is restarted at once.
  Every call in flight on it raises :class:`WorkerLost` (retryable: nothing of it was acknowledged;
  a round already returned was committed by the caller before any effect, as usual), and every
  actor the parent knows may have been live there is reported by :meth:`WorkerActorHost.take_lost`,
  like a VM fault: its next step restores it from its committed snapshot. Other workers serve on.
- **Limits** are applied inside the worker exactly as in-process (the same ActorHost and engine:
  CPU, memory, stack, jobs, wall time per entry); the 90 s settle window is run by the caller
  (``runtime.settle.drive``), as before.
- **No orphans**: a worker reads its requests from a pipe and exits when it reads EOF (the parent
  closed it, or the parent died: the kernel closes its end), and also when its parent pid changes.
  ``close()`` closes the pipes, waits a bounded time, then kills.

The parent confirms commits without a round trip (:meth:`WorkerActorHost.committed` is called on
the event loop): the seq rides on the instance's next call (``end_window``, ``resume``, ...), which
the worker applies first, so the order of confirm and next entry is the same as in-process.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import io
import itertools
import logging
import math
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, BinaryIO

from .actors import (
    ActorHostStats,
    ActorSandbox,
    ActorSettings,
    ActorStep,
    LostActor,
    MemoryPressure,
    step_each,
)
from .clock import Clock
from .engine import PreparedMachine, SandboxInstance
from .errors import HostError, InvalidMachineError, SandboxError
from .limits import Outcome
from .protocol import EffectResult, FetchRequest, LogLine, Round, StepRequest, TimerOp, Transition, Usage

__all__ = ["WorkerActorHost", "WorkerLost", "WorkerPool", "default_worker_count"]

log = logging.getLogger("statehost")

_HEADER = struct.Struct("<I")
MAX_FRAME_BYTES = 512 * 1024 * 1024
"""A reply larger than this is treated as a broken worker (a round is bounded far below it)."""
PICKLE_PROTOCOL = pickle.HIGHEST_PROTOCOL


def default_worker_count() -> int:
    """One worker process per CPU."""
    return max(1, os.cpu_count() or 1)


class WorkerLost(SandboxError):
    """The worker process running this call died (killed, out of memory, crashed) or was killed
    for not answering. Nothing of the call was acknowledged: the caller answers a retryable error
    (or retries). The worker is restarted; the actors it held are reported by ``take_lost``."""

    retryable = True


# -- framing and the reply allow-list ---------------------------------------------------------------------


def write_frame(fd: int, payload: bytes) -> None:
    data = _HEADER.pack(len(payload)) + payload
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def read_frame(stream: BinaryIO) -> bytes | None:
    """One frame, or None at a clean EOF. Raises EOFError for a truncated frame, ValueError for a
    length beyond :data:`MAX_FRAME_BYTES`."""
    head = stream.read(_HEADER.size)
    if not head:
        return None
    if len(head) < _HEADER.size:
        raise EOFError("truncated frame header")
    (length,) = _HEADER.unpack(head)
    if length > MAX_FRAME_BYTES:
        raise ValueError(f"frame of {length} bytes")
    body = stream.read(length)
    if len(body) < length:
        raise EOFError("truncated frame")
    return body


_REPLY_CLASSES: dict[tuple[str, str], type] = {
    (cls.__module__, cls.__qualname__): cls
    for cls in (
        Round,
        Transition,
        TimerOp,
        LogLine,
        FetchRequest,
        Usage,
        Outcome,
        ActorStep,
        LostActor,
        MemoryPressure,
        ActorHostStats,
    )
}


class _ReplyUnpickler(pickle.Unpickler):
    """Builds only the runtime's value classes: a reply cannot name any other global."""

    def find_class(self, module: str, name: str) -> Any:
        cls = _REPLY_CLASSES.get((module, name))
        if cls is None:
            raise pickle.UnpicklingError(f"a worker reply may not contain {module}.{name}")
        return cls


def load_reply(data: bytes) -> Any:
    return _ReplyUnpickler(io.BytesIO(data)).load()


_ERRORS: dict[str, type[Exception]] = {
    "HostError": HostError,
    "InvalidMachineError": InvalidMachineError,
    "RuntimeError": RuntimeError,
    "ValueError": ValueError,
    "TypeError": TypeError,
}


def _raise_remote(kind: object, message: object) -> None:
    cls = _ERRORS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise HostError(f"the worker failed: {kind}: {message}")
    raise cls(str(message))


# -- the worker processes ---------------------------------------------------------------------------------


class _Worker:
    """One incarnation of a worker process and the parent's side of its pipes."""

    def __init__(self, pool: WorkerPool, index: int, generation: int) -> None:
        self.pool = pool
        self.index = index
        self.generation = generation
        self.loaded: set[str] = set()
        self.pending: dict[int, Future[Any]] = {}
        self.lock = threading.Lock()
        self.write_lock = threading.Lock()
        self.dead = False
        self.reported = False
        """Its death was handled (actors reported): a successor may be started."""
        self.reason = ""
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        args = [
            sys.executable,
            "-m",
            "runtime.worker_main",
            "--engine",
            pool.engine_name,
            "--threads",
            str(pool.threads),
            "--image-cache-bytes",
            str(pool.image_cache_bytes),
            "--parent",
            str(os.getpid()),
            "--reply-fd",
            str(from_child_w),
        ]
        try:
            self.proc = subprocess.Popen(
                args,
                stdin=to_child_r,
                stdout=subprocess.DEVNULL,
                pass_fds=(from_child_w,),
                close_fds=True,
                env=pool.env,
            )
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self.pid = self.proc.pid
        self.answered = False
        self.wfd = to_child_w
        self.rfile = os.fdopen(from_child_r, "rb", buffering=1 << 16)
        self.reader = threading.Thread(target=self._read_loop, name=f"statehost-worker{index}-reader", daemon=True)
        self.reader.start()

    def _read_loop(self) -> None:
        reason = "its pipe closed"
        try:
            while True:
                frame = read_frame(self.rfile)
                if frame is None:
                    break
                call_id, ok, value = load_reply(frame)
                self.answered = True
                with self.lock:
                    future = self.pending.pop(call_id, None)
                if future is None:
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(_remote_error(value))
        except Exception as exc:  # a reply that does not decode: the worker is not to be trusted
            reason = f"it sent a malformed reply ({exc!r})"
        self.pool._died(self, reason)

    def call(self, message: tuple[Any, ...], timeout: float | None) -> Any:
        future: Future[Any] = Future()
        with self.lock:
            if self.dead:
                raise WorkerLost(self._lost_message())
            call_id = next(self.pool._ids)
            self.pending[call_id] = future
        data = pickle.dumps((call_id, *message), protocol=PICKLE_PROTOCOL)
        try:
            with self.write_lock:
                if self.wfd < 0:
                    raise OSError("the pipe is closed")
                write_frame(self.wfd, data)
        except OSError:
            self.kill()  # the reader sees EOF and fails every pending call, this one included
        try:
            return future.result(timeout)
        except TimeoutError:
            self.kill()
            self.pool._died(self, f"a call did not answer within {timeout:.0f} s (killed)")
            raise WorkerLost(self._lost_message()) from None

    def _lost_message(self) -> str:
        return (
            f"worker process {self.index} (pid {self.pid}) died: {self.reason or 'unknown'}; "
            "the call was not acknowledged (retry)"
        )

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.send_signal(signal.SIGKILL)

    def close_pipe(self) -> None:
        """Close the request pipe once (the worker reads EOF and exits). Never twice: the fd number
        may belong to another file by then."""
        with self.write_lock:
            if self.wfd >= 0:
                with contextlib.suppress(OSError):
                    os.close(self.wfd)
                self.wfd = -1

    def close(self, timeout: float) -> None:
        self.close_pipe()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.proc.wait()
        self.reader.join(timeout)
        if not self.reader.is_alive():
            self.rfile.close()


def _remote_error(value: object) -> Exception:
    kind, message = value if isinstance(value, tuple) and len(value) == 2 else ("HostError", repr(value))
    try:
        _raise_remote(kind, message)
    except Exception as exc:
        return exc
    return HostError("unreachable")  # pragma: no cover


class WorkerPool:
    """``workers`` worker processes for live actors, shared by every machine version.

    ``engine``: the engine name each worker makes (runtime.engines). ``runtime_api``: the source of
    XState's runtime API text for self-contained bundles (the Bundler's ``runtime_api``), sent to a
    worker with such a version. ``threads``: calls one worker runs at once (different VMs).
    ``call_timeout_s``: a call not answered by then gets its worker killed (a limit stops every
    guest entry long before; this is the backstop for a wedged process).
    """

    def __init__(
        self,
        engine: str,
        *,
        workers: int | None = None,
        runtime_api: Callable[[int], str] | None = None,
        image_cache_bytes: int = 0,
        threads: int = 4,
        call_timeout_s: float = 120.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.engine_name = engine
        self.size = workers or default_worker_count()
        if self.size < 1 or threads < 1:
            raise ValueError("workers and threads must be at least 1")
        self.runtime_api = runtime_api
        self.image_cache_bytes = image_cache_bytes
        self.threads = threads
        self.call_timeout_s = call_timeout_s
        self.env = dict(env) if env is not None else None
        self.restarts = 0
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._closed = False
        self._generations = itertools.count(1)
        self._hosts: weakref.WeakSet[WorkerActorHost] = weakref.WeakSet()
        self._workers: list[_Worker] = [_Worker(self, i, next(self._generations)) for i in range(self.size)]

    # -- the factory -------------------------------------------------------------------------------------

    def host(
        self, prepared: PreparedMachine, settings: ActorSettings | None = None, *, seed_label: str | None = None
    ) -> WorkerActorHost:
        """The live actors of one prepared version, spread over this pool's workers. ``seed_label``
        (tests, benchmarks): the workers seed the guests from a counter instead of os.urandom."""
        host = WorkerActorHost(self, prepared, settings, seed_label=seed_label)
        with self._lock:
            self._hosts.add(host)
        return host

    def worker_index(self, instance_id: str) -> int:
        digest = hashlib.blake2b(instance_id.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") % self.size

    # -- calls -------------------------------------------------------------------------------------------

    def _worker(self, index: int) -> _Worker:
        with self._lock:
            if self._closed:
                raise RuntimeError("the worker pool is closed")
            worker = self._workers[index]
            if worker.dead and worker.reported:  # its restart failed earlier: try again now
                self._replace(worker)
                worker = self._workers[index]
            return worker

    def _replace(self, worker: _Worker) -> None:
        """Start the successor of a dead worker. Caller holds ``self._lock``."""
        try:
            self._workers[worker.index] = _Worker(self, worker.index, next(self._generations))
            self.restarts += 1
        except OSError as exc:  # the next call tries again (and raises WorkerLost meanwhile)
            log.error("could not restart worker process %d: %s", worker.index, exc)

    def call(self, index: int, version: _Version | None, method: str, *args: Any) -> Any:
        """Run ``method`` of the version's host in worker ``index`` (loading the version first)."""
        worker = self._worker(index)
        if version is not None and version.key not in worker.loaded:
            worker.call(("load", version.key, version.spec), self.call_timeout_s)
            worker.loaded.add(version.key)
        return worker.call(("call", None if version is None else version.key, method, args), self.call_timeout_s)

    def _died(self, worker: _Worker, reason: str) -> None:
        """A worker incarnation is gone: report its actors, fail its calls, start its successor."""
        with worker.lock:
            if worker.dead:
                return
            worker.dead = True
            worker.reason = reason
            pending, worker.pending = worker.pending, {}
        worker.kill()
        with self._lock:
            hosts = list(self._hosts)
        # The order is the contract: the actors are reported lost before the restart is visible and
        # before any caller learns of the death (so a retry finds them in take_lost already).
        for host in hosts:
            host._worker_died(worker.index, f"worker process {worker.index} (pid {worker.pid}) died: {reason}")
        worker.reported = True
        with self._lock:
            # A worker that dies before it answered anything (a broken install, a crash at start) is
            # restarted by the next call that needs it, not at once: no hot restart loop.
            if not self._closed and self._workers[worker.index] is worker and worker.answered:
                log.warning("worker process %d (pid %d) died: %s; restarting it", worker.index, worker.pid, reason)
                self._replace(worker)
        error = WorkerLost(worker._lost_message())
        for future in pending.values():
            future.set_exception(error)
        threading.Thread(target=_reap, args=(worker,), daemon=True).start()

    # -- operations ------------------------------------------------------------------------------------

    def pids(self) -> list[int]:
        with self._lock:
            return [w.pid for w in self._workers]

    def kill(self, index: int) -> int:
        """SIGKILL worker ``index`` (tests, drills); returns its pid. It is restarted."""
        worker = self._worker(index)
        worker.kill()
        return worker.pid

    def rss(self) -> list[int]:
        """Resident bytes of each worker process (from /proc)."""
        out = []
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/statm") as f:
                    out.append(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
            except OSError:
                out.append(0)
        return out

    def ping(self, index: int) -> int:
        """Round trip to worker ``index``; returns its pid (waits until it is up)."""
        return int(self.call(index, None, "pid"))

    def close(self, timeout: float = 10.0) -> None:
        """Stop every worker (EOF on its pipe; killed after ``timeout``). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers = list(self._workers)
        for worker in workers:
            with worker.lock:
                worker.dead = True
                worker.reason = "the pool closed"
                pending, worker.pending = worker.pending, {}
            for future in pending.values():
                future.set_exception(WorkerLost(worker._lost_message()))
            worker.close(timeout)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reap(worker: _Worker) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):  # SIGKILL was sent
        worker.proc.wait(30)
    worker.close_pipe()
    worker.reader.join(30)
    if not worker.reader.is_alive():
        worker.rfile.close()


# -- the host ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Version:
    key: str
    spec: Mapping[str, Any]


@dataclasses.dataclass
class _Op:
    """Deferred for one window of one instance: its commit confirmation and its end."""

    instance_id: str
    window: int
    seq: int | None = None
    keep: bool | None = None

    def wire(self) -> tuple[str, int, int | None, bool | None]:
        return (self.instance_id, self.window, self.seq, self.keep)


@dataclasses.dataclass
class _Known:
    """The parent's view of one actor that may be live in a worker (a superset: it may be gone)."""

    open_window: bool = True
    inflight: int = 0
    touched: int = 0
    window: int = 0
    """The token of its latest window (numbered by the parent: deferred ops name the window)."""
    last: _Op | None = None
    """The deferred ops of its latest window (sent with its next call, and maybe with a flush)."""


FLUSH_AFTER = 64
"""Deferred window ends of a worker that ride on the next call to it, whatever its instance."""


class WorkerActorHost:
    """An :class:`~runtime.actors.ActorHost` whose actors live in a :class:`WorkerPool`'s processes.

    The same methods and results; in addition any call may raise :class:`WorkerLost` (retryable).
    ``is_live`` answers from the parent's record, which may say True for an actor the worker has
    dropped (then ``end_window`` just returns False), never False for a live one.
    """

    def __init__(
        self,
        pool: WorkerPool,
        prepared: PreparedMachine,
        settings: ActorSettings | None = None,
        *,
        seed_label: str | None = None,
    ) -> None:
        self.pool = pool
        self.prepared = prepared
        self.settings = settings or ActorSettings()
        per_worker = dataclasses.replace(self.settings, vms=max(1, math.ceil(self.settings.vms / pool.size)))
        self.worker_settings = per_worker
        mode = getattr(prepared, "runtime_api_mode", "bundle")
        runtime_api = None
        if mode == "global":
            if pool.runtime_api is None:
                raise HostError("a self-contained bundle needs the pool's runtime_api source")
            runtime_api = pool.runtime_api(prepared.major)
        spec: dict[str, Any] = {
            "code": prepared.bundle.code,
            "xstate_major": prepared.bundle.xstate_major,
            "hash": prepared.bundle.hash,
            "limits": prepared.limits,
            "settings": per_worker,
            "runtime_api": runtime_api,
            "major": prepared.major,
            "seed_label": seed_label,
        }
        key = hashlib.sha256(
            "\0".join(
                [
                    pool.engine_name,
                    hashlib.sha256(prepared.bundle.code.encode()).hexdigest(),
                    repr(prepared.bundle.xstate_major),
                    repr(prepared.limits),
                    repr(per_worker),
                    "" if runtime_api is None else hashlib.sha256(runtime_api.encode()).hexdigest(),
                    repr(spec["seed_label"]),
                    str(id(self)),  # one worker-side host per parent-side host
                ]
            ).encode()
        ).hexdigest()[:32]
        self._version = _Version(key, spec)
        self._lock = threading.Lock()
        self._known: list[dict[str, _Known]] = [{} for _ in range(pool.size)]
        self._pending: list[dict[str, _Op]] = [{} for _ in range(pool.size)]
        self._lost: list[LostActor] = []
        self._pressure: list[MemoryPressure] = []
        self._touch = itertools.count(1)
        self._closed = False

    # -- plumbing ----------------------------------------------------------------------------------------

    def worker_index(self, instance_id: str) -> int:
        return self.pool.worker_index(instance_id)

    def _begin(
        self, instance_id: str, index: int, new_window: bool
    ) -> tuple[int, list[tuple[str, int, int | None, bool | None]], _Known]:
        with self._lock:
            if self._closed:
                raise RuntimeError("the actor host is closed")
            known = self._known[index].get(instance_id)
            if known is None:
                known = self._known[index][instance_id] = _Known()
            known.inflight += 1
            known.touched = next(self._touch)
            ops = self._take_ops(index, instance_id)
            if new_window:
                # The previous window's ops go with its successor's step even if a flush took them
                # already (which may still be on its way): applying them twice is harmless, and
                # this way they are never applied after the step (then they would be stale).
                if known.last is not None and known.last.wire() not in ops:
                    ops.append(known.last.wire())
                known.last = None
                known.window += 1
            return known.window, ops, known

    def _take_ops(self, index: int, instance_id: str | None) -> list[tuple[str, int, int | None, bool | None]]:
        """The deferred ops to send with a call: the instance's own, or all of the worker's when
        there are many (or for a host call). Caller holds ``self._lock``."""
        pending = self._pending[index]
        if instance_id is None or len(pending) >= FLUSH_AFTER:
            ops = [op.wire() for op in pending.values()]
            pending.clear()
            return ops
        op = pending.pop(instance_id, None)
        return [] if op is None else [op.wire()]

    def _instance_call(self, instance_id: str, method: str, *args: Any, new_window: bool = False) -> Any:
        """Call an instance's method in its worker; the reply carries whether it is still live."""
        index = self.worker_index(instance_id)
        token, ops, known = self._begin(instance_id, index, new_window)
        live: bool | None = None
        try:
            value, live, lost, pressure, dropped = self.pool.call(
                index, self._version, "instance", ops, method, instance_id, token, *args
            )
            self._absorb(index, lost, pressure, dropped)
            return value
        finally:
            with self._lock:
                known.inflight -= 1
                known.touched = next(self._touch)
                table = self._known[index]
                if live is False and known.inflight == 0 and table.get(instance_id) is known:
                    del table[instance_id]

    def _absorb(
        self, index: int, lost: Sequence[LostActor], pressure: Sequence[MemoryPressure], dropped: Sequence[str]
    ) -> None:
        if not lost and not pressure and not dropped:
            return
        with self._lock:
            table = self._known[index]
            gone = [a.instance_id for a in lost] + [k for e in pressure for k in e.evicted] + list(dropped)
            for key in gone:
                known = table.get(key)
                if known is not None and known.inflight == 0:
                    del table[key]
            self._lost.extend(lost)
            self._pressure.extend(pressure)

    def _host_call(self, index: int, method: str, *args: Any) -> Any:
        with self._lock:
            ops = self._take_ops(index, None)
        value, lost, pressure, dropped = self.pool.call(index, self._version, "host", ops, method, *args)
        self._absorb(index, lost, pressure, dropped)
        return value

    def _worker_died(self, index: int, reason: str) -> None:
        with self._lock:
            table = self._known[index]
            self._lost.extend(LostActor(key, reason, known.open_window) for key, known in table.items())
            table.clear()
            self._pending[index].clear()

    def _started_workers(self) -> list[int]:
        return [i for i in range(self.pool.size) if self._version.key in self.pool._worker(i).loaded]

    # -- the ActorHost interface ---------------------------------------------------------------------------

    def step(self, instance_id: str, committed_seq: int | None, request: StepRequest, now_ms: int) -> ActorStep:
        step: ActorStep = self._instance_call(instance_id, "step", committed_seq, request, now_ms, new_window=True)
        with self._lock:
            known = self._known[self.worker_index(instance_id)].get(instance_id)
            if known is not None:
                known.open_window = True
        return step

    def step_many(
        self, steps: Sequence[tuple[str, int | None, StepRequest]], clock: Clock
    ) -> list[ActorStep | Exception]:
        """:meth:`step` for several instances (a batch of due timers): per entry its step or the
        exception it raised (a lost worker fails its own entries, not the others')."""
        return step_each(self, steps, clock)

    def vm_index(self, instance_id: str) -> int:
        """Entries of one worker are serialised by its pipe: a batch is grouped by worker."""
        return self.worker_index(instance_id)

    def deliver(
        self, instance_id: str, event: Mapping[str, Any], auth_context: Mapping[str, Any] | None, now_ms: int
    ) -> Round:
        round_: Round = self._instance_call(instance_id, "deliver", event, auth_context, now_ms)
        return round_

    def resume(self, instance_id: str, results: Sequence[EffectResult], now_ms: int) -> Round:
        round_: Round = self._instance_call(instance_id, "resume", tuple(results), now_ms)
        return round_

    def fire_timers(self, instance_id: str, now_ms: int) -> Round:
        round_: Round = self._instance_call(instance_id, "fire_timers", now_ms)
        return round_

    def committed(self, instance_id: str, seq: int) -> None:
        """No round trip: the confirmation rides on the instance's next call (applied first)."""
        self._defer(instance_id, seq=seq)

    def end_window(self, instance_id: str, keep: bool) -> bool:
        """No round trip: the end rides on the instance's next call, or on the next call to its
        worker once :data:`FLUSH_AFTER` ends wait (a stale end, of a window that another step has
        replaced meanwhile, is ignored by its window token). Returns whether the actor is expected
        to stay live (``keep`` and known to the parent); the worker may still drop it."""
        return self._defer(instance_id, keep=keep)

    def end_window_now(self, instance_id: str, keep: bool) -> bool:
        """:meth:`end_window` never waits on the pipe, so it is always done here, on the caller's
        thread (the event loop)."""
        self.end_window(instance_id, keep)
        return True

    def _defer(self, instance_id: str, *, seq: int | None = None, keep: bool | None = None) -> bool:
        index = self.worker_index(instance_id)
        with self._lock:
            known = self._known[index].get(instance_id)
            if known is None:
                return False  # not live (its worker died, or it was dropped): nothing to confirm or end
            op = known.last
            if op is None or op.window != known.window:
                op = known.last = _Op(instance_id, known.window)
            self._pending[index][instance_id] = op
            if seq is not None:
                op.seq = seq
            if keep is not None:
                op.keep = keep
                known.open_window = not keep
            return keep is True

    def evict(self, instance_ids: Sequence[str]) -> int:
        groups: dict[int, list[str]] = collections.defaultdict(list)
        for instance_id in instance_ids:
            groups[self.worker_index(instance_id)].append(instance_id)
        count = 0
        for index, ids in groups.items():
            if index not in self._started_workers():
                continue
            count += int(self._host_call(index, "evict", ids))
            with self._lock:
                for key in ids:
                    known = self._known[index].get(key)
                    if known is not None and known.inflight == 0:
                        del self._known[index][key]
        return count

    def evict_idle(self, now_ms: int) -> list[str]:
        """Also reconciles the parent's record with each worker's live actors."""
        evicted: list[str] = []
        for index in self._started_workers():
            with self._lock:
                mark = next(self._touch)
            ids, live = self._host_call(index, "evict_idle_and_list", now_ms)
            evicted.extend(ids)
            alive = set(live)
            with self._lock:
                table = self._known[index]
                for key in [k for k, v in table.items() if v.inflight == 0 and v.touched < mark and k not in alive]:
                    del table[key]
        return evicted

    def take_lost(self) -> list[LostActor]:
        with self._lock:
            lost, self._lost = self._lost, []
        return lost

    @property
    def lost_actors(self) -> tuple[LostActor, ...]:
        with self._lock:
            return tuple(self._lost)

    def take_memory_pressure(self) -> list[MemoryPressure]:
        with self._lock:
            events, self._pressure = self._pressure, []
        return events

    def is_live(self, instance_id: str) -> bool:
        with self._lock:
            return instance_id in self._known[self.worker_index(instance_id)]

    def live_ids(self) -> list[str]:
        return [key for index in self._started_workers() for key in self._host_call(index, "live_ids")]

    def measure(self) -> tuple[int, ...]:
        return tuple(h for index in self._started_workers() for h in self._host_call(index, "measure"))

    def stats(self) -> ActorHostStats:
        parts: list[ActorHostStats] = [self._host_call(index, "stats") for index in self._started_workers()]
        return ActorHostStats(
            live=sum(p.live for p in parts),
            vms_open=sum(p.vms_open for p in parts),
            steps=sum(p.steps for p in parts),
            live_steps=sum(p.live_steps for p in parts),
            restores=sum(p.restores for p in parts),
            vm_discards=sum(p.vm_discards for p in parts),
            evictions=sum(p.evictions for p in parts),
            heap_bytes=tuple(h for p in parts for h in p.heap_bytes),
        )

    def footprint(self) -> int:
        return sum(int(self._host_call(index, "footprint")) for index in self._started_workers())

    def close(self) -> None:
        """Drop this version's actors in every worker (the pool stays up for other versions)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for table in self._known:
                table.clear()
        for index in range(self.pool.size):
            try:
                worker = self.pool._worker(index)
            except RuntimeError:
                return  # the pool is closed: the workers are gone
            if self._version.key in worker.loaded:
                with contextlib.suppress(WorkerLost):
                    worker.call(("unload", self._version.key), self.pool.call_timeout_s)
                worker.loaded.discard(self._version.key)

    def sandbox(self, instance_id: str) -> SandboxInstance:
        return ActorSandbox(self, instance_id)
