"""Time, injected. Nothing else in the runtime or server reads the wall clock for scheduling.

:class:`SystemClock` is the real one; :class:`FakeClock` moves only when a test advances it (and
never backwards), so timers years ahead are tested in milliseconds.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol

__all__ = ["Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch."""
        ...

    async def sleep_until(self, when_ms: int) -> None:
        """Return once ``now_ms() >= when_ms``."""
        ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    async def sleep_until(self, when_ms: int) -> None:
        while True:
            remaining = when_ms - self.now_ms()
            if remaining <= 0:
                return
            await asyncio.sleep(remaining / 1000)


class FakeClock:
    """A clock that only moves when told to. Sleepers wake in due order as it passes them."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self._now = start_ms
        self._sleepers: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now_ms(self) -> int:
        return self._now

    async def sleep_until(self, when_ms: int) -> None:
        if when_ms <= self._now:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (when_ms, next(self._seq), future))
        await future

    def advance(self, ms: int) -> None:
        self.set(self._now + ms)

    def set(self, when_ms: int) -> None:
        if when_ms < self._now:
            raise ValueError(f"FakeClock cannot go backwards ({when_ms} < {self._now})")
        self._now = when_ms
        while self._sleepers and self._sleepers[0][0] <= when_ms:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)
