"""Runs engine calls off the asyncio event loop, on worker threads with large C stacks.

The QuickJS binding releases the GIL while JS runs, so steps of different instances run in
parallel. A QuickJS context is used by one thread at a time (the settle loop awaits each call
before the next). Threads get 8 MiB stacks because the JS stack limit must stay well below the
real C stack of the thread running it (a larger limit segfaults on overflow).

**Lanes share the workers fairly.** A guest call may hold its worker until a limit stops it (up
to ``cpu_ms`` of CPU, or ``entry_wall_ms`` for a guest whose awaits the host answers). Calls made
through ``executor.lane(key)`` hold at most ``lane_limit`` workers per key at once (half of them;
the caller picks the key: the server uses the tenant), and wait in their lane for more. So one key
sending as many slow calls as there are workers cannot take every worker: the other half stays
for other keys. The default worker count is two per CPU, so one key alone still has one worker
per CPU (what it had before lanes) while another key's calls find free workers at once.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, Protocol, TypeVar

__all__ = ["THREAD_STACK_BYTES", "Executor", "Lane", "Runner", "default_workers"]

THREAD_STACK_BYTES = 8 * 1024 * 1024

P = ParamSpec("P")
T = TypeVar("T")


def default_workers() -> int:
    """Two worker threads per CPU, at least 4 (lanes get half each: one per CPU)."""
    return max(4, 2 * (os.cpu_count() or 2))


class Runner(Protocol):
    """What runs an engine call off the event loop: an :class:`Executor` or one of its lanes."""

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T: ...


class Executor:
    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or default_workers()
        self.lane_limit = max(1, self.workers // 2)
        """Workers one lane may hold at once."""
        # threading.stack_size applies to threads created afterwards; the pool creates its threads
        # lazily, so the size stays set for the life of the process.
        threading.stack_size(THREAD_STACK_BYTES)
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="statehost-sandbox")
        self._lanes: dict[str, Lane] = {}

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def lane(self, key: str) -> Lane:
        """The lane of ``key`` (made on first use; forgotten when no call is in it)."""
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = Lane(self, key)
        return lane

    def _forget(self, lane: Lane) -> None:
        if self._lanes.get(lane.key) is lane:
            del self._lanes[lane.key]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    async def __aenter__(self) -> Executor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class Lane:
    """Calls of one key: at most ``executor.lane_limit`` of them hold a worker at once."""

    def __init__(self, executor: Executor, key: str) -> None:
        self.key = key
        self._executor = executor
        self._slots = asyncio.Semaphore(executor.lane_limit)
        self._users = 0

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        self._users += 1
        try:
            async with self._slots:
                return await self._executor.run(fn, *args, **kwargs)
        finally:
            self._users -= 1
            if self._users == 0:
                self._executor._forget(self)
