"""Runs engine calls off the asyncio event loop, on worker threads with large C stacks.

The QuickJS binding releases the GIL while JS runs, so steps of different instances run in
parallel. A QuickJS context is used by one thread at a time (the settle loop awaits each call
before the next). Threads get 8 MiB stacks because the JS stack limit must stay well below the
real C stack of the thread running it (a larger limit segfaults on overflow).
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

__all__ = ["THREAD_STACK_BYTES", "Executor"]

THREAD_STACK_BYTES = 8 * 1024 * 1024

P = ParamSpec("P")
T = TypeVar("T")


class Executor:
    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or max(2, os.cpu_count() or 2)
        # threading.stack_size applies to threads created afterwards; the pool creates its threads
        # lazily, so the size stays set for the life of the process.
        threading.stack_size(THREAD_STACK_BYTES)
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="statehost-sandbox")

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    async def __aenter__(self) -> Executor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
