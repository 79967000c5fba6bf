"""Executor lanes: one key's slow calls hold at most half the workers; other keys still run."""

from __future__ import annotations

import asyncio
import threading

from runtime import Executor
from runtime.executor import default_workers


class Gate:
    """Calls that block their worker thread until released, counting how many have started."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    def call(self) -> str:
        with self._lock:
            self.started += 1
            self._changed.notify_all()
        assert self.release.wait(60), "never released"
        return "done"

    def wait_started(self, n: int) -> None:
        with self._lock:
            assert self._changed.wait_for(lambda: self.started >= n, 60), f"{self.started} of {n} started"


def test_default_is_two_workers_per_cpu_and_a_lane_gets_half():
    executor = Executor()
    try:
        assert executor.workers == default_workers() >= 4
        assert executor.lane_limit == executor.workers // 2
    finally:
        executor.close()


async def test_a_lane_that_fills_its_share_leaves_the_rest_to_other_lanes():
    executor = Executor(workers=4)
    gate = Gate()
    try:
        hostile = executor.lane("org-hostile")
        # Twice as many blocking calls as there are workers: without lanes they would take all four.
        held = [asyncio.create_task(hostile.run(gate.call)) for _ in range(8)]
        await asyncio.to_thread(gate.wait_started, executor.lane_limit)
        # Another lane's call runs to its end while the first lane's calls still block.
        assert await asyncio.wait_for(executor.lane("org-ordinary").run(lambda: "ordinary"), 60) == "ordinary"
        # The lane's other calls never reached a worker: only its share started.
        assert gate.started == executor.lane_limit
        assert not any(task.done() for task in held)
        gate.release.set()
        assert await asyncio.gather(*held) == ["done"] * 8
        assert gate.started == 8
    finally:
        gate.release.set()
        executor.close()


async def test_a_lane_is_forgotten_when_no_call_is_in_it():
    executor = Executor(workers=4)
    try:
        lane = executor.lane("org-a")
        assert executor.lane("org-a") is lane
        assert await lane.run(lambda: 1) == 1
        assert executor.lane("org-a") is not lane  # a fresh lane: nothing kept for an idle key
    finally:
        executor.close()
