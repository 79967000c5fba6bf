"""A worker process of :class:`runtime.workers.WorkerPool`: ``python -m runtime.worker_main``.

Reads framed pickles from stdin (the parent is trusted: it started this process), runs each call on
one of ``--threads`` threads (8 MiB C stacks, as runtime.executor's; the thread that read a request
runs it), and writes framed pickled replies
to ``--reply-fd``. Holds one :class:`~runtime.actors.ActorHost` per machine version loaded. Exits
at EOF on stdin (the parent closed the pipe or died) and when its parent pid changes; stdout is
pointed at stderr so that nothing printed can corrupt the replies.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import pickle
import sys
import threading
from collections.abc import Callable
from typing import Any

from .actors import ActorHost, ActorStep
from .bundle import MachineBundle
from .engine import Engine
from .engines import make_engine
from .executor import THREAD_STACK_BYTES
from .workers import PICKLE_PROTOCOL, read_frame, write_frame

_INSTANCE_METHODS = frozenset({"step", "deliver", "resume", "fire_timers", "end_window"})
_HOST_METHODS = frozenset({"evict", "live_ids", "measure", "stats", "footprint", "evict_idle_and_list"})


Op = tuple[str, int, "int | None", "bool | None"]


class WindowedHost(ActorHost):
    """An ActorHost that applies the parent's deferred ops (commit confirmations, window ends) only
    to the window they name. Each instance's window token (numbered by the parent, set by its step)
    is set and checked under the lock of the instance's VM, so an op of window t and the step that
    opens window t + 1 cannot interleave: either the op lands first, or it is stale and ignored.
    Only adds methods; ActorHost's own behaviour is unchanged."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.windows: dict[str, int] = {}

    def step_window(self, instance_id: str, token: int, *args: Any) -> ActorStep:
        vm = self._vm(self.vm_index(instance_id))
        with vm.lock:
            self.windows[instance_id] = token
            return self.step(instance_id, *args)

    def apply(self, ops: list[Op]) -> list[str]:
        """Returns the instances whose window end dropped them."""
        dropped: list[str] = []
        for instance_id, window, seq, keep in ops:
            vm = self._vms[self.vm_index(instance_id)]
            if vm is None:
                continue  # no VM, no actor: nothing to confirm or end
            with vm.lock:
                if self.windows.get(instance_id) != window:
                    continue
                if seq is not None:
                    self.committed(instance_id, seq)
                if keep is not None:
                    # Ended: a second copy of this op (a flush's and the next step's) is stale, so
                    # the end is not counted twice (it counts towards the heap measurements).
                    self.windows[instance_id] = -window
                    if not self.end_window(instance_id, keep):
                        dropped.append(instance_id)
                        self.windows.pop(instance_id, None)
        return dropped

    def forget_windows(self, live: set[str]) -> None:
        for instance_id in [k for k in self.windows if k not in live]:
            self.windows.pop(instance_id, None)


class Worker:
    def __init__(self, engine_name: str, image_cache_bytes: int, reply_fd: int) -> None:
        self._apis: dict[int, str] = {}
        self.engine: Engine = make_engine(engine_name, self._runtime_api, image_cache_bytes=image_cache_bytes)
        self.hosts: dict[str, WindowedHost] = {}
        self._hosts_lock = threading.Lock()
        self._reply_fd = reply_fd
        self._write_lock = threading.Lock()

    def _runtime_api(self, major: int) -> str:
        return self._apis[major]

    def handle(self, frame: bytes) -> None:
        call_id, *message = pickle.loads(frame)
        try:
            reply: tuple[Any, ...] = (call_id, True, self._dispatch(message))
        except Exception as exc:
            reply = (call_id, False, (type(exc).__name__, str(exc)))
        data = pickle.dumps(reply, protocol=PICKLE_PROTOCOL)
        try:
            with self._write_lock:
                write_frame(self._reply_fd, data)
        except OSError:
            os._exit(0)  # the parent is gone

    def _dispatch(self, message: list[Any]) -> Any:
        op = message[0]
        if op == "load":
            self._load(message[1], message[2])
            return None
        if op == "unload":
            with self._hosts_lock:
                host = self.hosts.pop(message[1], None)
            if host is not None:
                host.close()
            return None
        if op != "call":
            raise ValueError(f"unknown operation {op!r}")
        key, kind, args = message[1], message[2], message[3]
        if kind == "pid":
            return os.getpid()
        host = self.hosts.get(key)
        if host is None:
            raise RuntimeError(f"version {key} is not loaded in this worker")
        ops, method, *rest = args
        dropped = host.apply(ops)
        if kind == "instance":
            instance_id, token, *rest = rest
            if method not in _INSTANCE_METHODS:
                raise ValueError(f"unknown instance method {method!r}")
            if method == "step":
                value: Any = host.step_window(instance_id, token, *rest)
            else:
                value = getattr(host, method)(instance_id, *rest)
            return value, host.is_live(instance_id), host.take_lost(), host.take_memory_pressure(), dropped
        if kind == "host":
            if method not in _HOST_METHODS:
                raise ValueError(f"unknown host method {method!r}")
            if method == "evict_idle_and_list":
                value = (host.evict_idle(*rest), host.live_ids())
                host.forget_windows(set(value[1]))
            else:
                value = getattr(host, method)(*rest)
            return value, host.take_lost(), host.take_memory_pressure(), dropped
        raise ValueError(f"unknown call kind {kind!r}")

    def _load(self, key: str, spec: dict[str, Any]) -> None:
        with self._hosts_lock:
            if key in self.hosts:
                return
        if spec["runtime_api"] is not None:
            self._apis[int(spec["major"])] = spec["runtime_api"]
        bundle = MachineBundle(spec["code"], spec["xstate_major"], spec["hash"])
        prepared = self.engine.prepare(bundle, spec["limits"])
        label = spec.get("seed_label")
        if label is not None:
            prepared.entropy = _seeded(label)  # type: ignore[attr-defined]
        host = WindowedHost(prepared, spec["settings"])
        with self._hosts_lock:
            if key in self.hosts:
                host.close()
            else:
                self.hosts[key] = host


def _seeded(label: str) -> Callable[[int], bytes]:
    """Deterministic seeds (tests and benchmarks compare runs): as tests/runtime's ``deterministic``."""
    counter = itertools.count()

    def entropy(n: int) -> bytes:
        return hashlib.sha256(f"{label}:{next(counter)}".encode()).digest()[:n]

    return entropy


def _watch_parent(parent: int) -> None:
    stop = threading.Event()
    while not stop.wait(0.5):
        if os.getppid() != parent:
            os._exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m runtime.worker_main")
    parser.add_argument("--engine", required=True)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--image-cache-bytes", type=int, default=0)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--reply-fd", type=int, required=True)
    args = parser.parse_args(argv)
    if os.getppid() != args.parent:
        os._exit(0)
    os.dup2(2, 1)  # a stray print goes to stderr, never into the replies
    sys.stdout = sys.stderr
    threading.Thread(target=_watch_parent, args=(args.parent,), name="parent-watch", daemon=True).start()
    threading.stack_size(THREAD_STACK_BYTES)
    worker = Worker(args.engine, args.image_cache_bytes, args.reply_fd)
    requests = os.fdopen(0, "rb", buffering=1 << 16)
    reading = threading.Lock()

    def serve() -> None:
        """Leader/followers: the thread that reads a request runs it (no hand-off between threads);
        meanwhile the next idle thread reads. So up to ``threads`` calls run at once."""
        while True:
            with reading:
                try:
                    frame = read_frame(requests)
                except (EOFError, ValueError, OSError):
                    frame = None
                if frame is None:
                    os._exit(0)  # EOF: the parent closed the pipe or died; nothing here is durable
            worker.handle(frame)

    threads = [threading.Thread(target=serve, name=f"statehost-worker-{n}") for n in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main()
