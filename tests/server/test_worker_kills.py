"""Worker kills under load: a real ``statehost serve --sandbox-workers 2`` whose worker processes
are SIGKILLed while clients send events (issue 17, part 2).

Clients each own one instance and send it numbered events one at a time, sending a number again
until it is acknowledged (a 503 says it was not stored). Checks, as the crash tests': every
acknowledged event is in its instance's history exactly once and in order (the history *is* the
acknowledged sequence: an event answered 503 was not stored); the server keeps answering; while one
worker is stopped and then killed, the other worker's instances keep being served; a request in
flight on the killed worker is answered 503 ``unavailable``; a killed worker is replaced; no worker
process outlives the server, whether it stops or is SIGKILLed.

A request is known to be in flight on a worker without a race: the load pauses, both workers are
SIGSTOPped, one event is sent, and the worker whose request pipe then holds unread bytes is the one
it went to (that is also the worker its instance hashes to); the other is resumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import random
import signal
import sqlite3
import struct
import termios
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientError, ClientSession

from server.actor_pool import actor_key
from tests.server.api_support import Api
from tests.server.test_storage_faults import ServeProcess, check_consistent
from tests.support import eventually

MACHINE = b"""import { createMachine, assign } from "xstate";
export const allowRead = () => true;
export const allowWrite = () => true;
export default createMachine({
  id: "k", predictableActionArguments: true, initial: "on", context: { public: { last: 0, count: 0 } },
  states: { on: { on: {
    add: { actions: assign({ public: (c, e) => ({ last: e.n, count: c.public.count + 1 }) }) },
  } } },
});
"""
WORKERS = 2
PER_WORKER = 3
"""Load instances on each worker (instances are created until each worker has this many)."""
STOPPED_KILLS = 3
PLAIN_KILLS = 3


# -- processes ---------------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")  # a zombie has exited


def worker_pids(server_pid: int) -> set[int]:
    """The server's live worker processes (children running runtime.worker_main)."""
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat(int(entry))
        if fields is None or int(fields[1]) != server_pid or not alive(int(entry)):
            continue
        with contextlib.suppress(OSError), open(f"/proc/{entry}/cmdline", "rb") as f:
            if b"runtime.worker_main" in f.read():
                pids.add(int(entry))
    return pids


def stopped(pid: int) -> bool:
    """Every thread of ``pid`` is stopped (SIGSTOP takes effect asynchronously, thread by thread)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tasks:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] not in ("T", "t"):
                return False
    return True


def unread_request_bytes(pid: int) -> int:
    """Bytes the front wrote to worker ``pid``'s request pipe that it has not read (FIONREAD)."""
    fd = os.open(f"/proc/{pid}/fd/0", os.O_RDONLY | os.O_NONBLOCK)
    try:
        return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])
    finally:
        os.close(fd)


def worker_index(db: Path, name: str) -> int:
    """The worker an instance's actor lives on (runtime.WorkerPool.worker_index of its actor key)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        row_id, created_ms = conn.execute("SELECT id, created_ms FROM instances WHERE name = ?", (name,)).fetchone()
    finally:
        conn.close()
    digest = hashlib.blake2b(actor_key(row_id, created_ms).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % WORKERS


# -- the load ------------------------------------------------------------------------------------------


class Load:
    """One client per instance: numbered events, each sent until acknowledged."""

    def __init__(self, api: Api, names: list[str]) -> None:
        self.api = api
        self.names = names
        self.acked: dict[str, list[int]] = {name: [] for name in names}
        self.unavailable = 0
        self.outstanding = 0
        self.go = asyncio.Event()
        self.go.set()
        self.stopping = False
        self.tasks = [asyncio.ensure_future(self._client(name)) for name in names]

    async def _client(self, name: str) -> None:
        n = 0
        while not self.stopping:
            await self.go.wait()
            if self.stopping:
                return
            n += 1
            while True:
                self.outstanding += 1
                try:
                    status, body = await send(self.api, name, n)
                finally:
                    self.outstanding -= 1
                if status == 200:
                    assert body["publicContext"]["last"] == n, body
                    self.acked[name].append(n)
                    break
                assert (status, body["code"]) == (503, "unavailable"), body
                self.unavailable += 1

    def total(self, names: list[str] | None = None) -> int:
        return sum(len(self.acked[name]) for name in names or self.names)

    async def pause(self) -> None:
        self.go.clear()

        async def idle() -> bool:
            return self.outstanding == 0

        await eventually(idle, within_s=120, what="the clients idle")

    async def progress(self, names: list[str], events: int, what: str) -> None:
        """Wait until each of ``names`` has ``events`` more acknowledged events."""
        start = {name: len(self.acked[name]) for name in names}

        async def moved() -> bool:
            for task in self.tasks:
                if task.done():
                    task.result()  # a client's failed check fails the test here
            return all(len(self.acked[name]) >= start[name] + events for name in names)

        await eventually(moved, within_s=180, what=what, every_s=0.02)

    async def stop(self) -> None:
        self.stopping = True
        self.go.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks), 180)


async def send(api: Api, name: str, n: int) -> tuple[int, Any]:
    try:
        return await api.call("POST", f"/machines/k/i/{name}/events", body={"event": {"type": "add", "n": n}})
    except ClientError as exc:  # the server keeps answering: a broken connection fails the test
        raise AssertionError(f"the server did not answer event {n} of {name}: {exc!r}") from exc


# -- the test ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_worker_kills_under_load_lose_nothing_acknowledged(tmp_path: Path):
    data = tmp_path / "data"
    db = data / "statehost.db"
    node = ServeProcess(data, "--sandbox-mode", "actors", "--sandbox-workers", str(WORKERS), "--workers", "0")
    await node.start()
    assert node.process is not None
    server_pid = node.process.pid
    seen_workers: set[int] = set()
    rng = random.Random("worker-kills")
    try:
        await eventually(
            lambda: asyncio.to_thread(lambda: len(worker_pids(server_pid)) == WORKERS),
            within_s=60,
            what="two worker processes",
        )
        async with ClientSession(base_url=node.base) as session:
            api = node.api(session)
            await api.deploy("k", MACHINE)
            by_worker: dict[int, list[str]] = {i: [] for i in range(WORKERS)}
            probes: dict[int, list[str]] = {i: [] for i in range(WORKERS)}
            k = 0
            while any(len(v) < PER_WORKER for v in by_worker.values()) or any(len(v) < 2 for v in probes.values()):
                k += 1
                name = f"i{k}"
                status, body = await api.call("POST", "/machines/k", body={"slug": name})
                assert status == 200, body
                index = worker_index(db, name)
                (by_worker if len(by_worker[index]) < PER_WORKER else probes)[index].append(name)
            names = [name for group in by_worker.values() for name in group]
            load = Load(api, names)
            await load.progress(names, 3, "the load under way")
            probe_n = 1_000_000
            for kill in range(STOPPED_KILLS):
                # Pause the load, stop both workers, send one event: its worker is the one whose
                # request pipe now holds it. Resume the other; its instances are served meanwhile.
                await load.pause()
                workers = worker_pids(server_pid)
                assert len(workers) == WORKERS, workers
                seen_workers |= workers
                for pid in workers:
                    os.kill(pid, signal.SIGSTOP)

                def all_stopped(pids: set[int] = workers) -> bool:
                    return all(stopped(pid) for pid in pids)

                await eventually(lambda: asyncio.to_thread(all_stopped), within_s=60, what="the workers stopped")
                index = kill % WORKERS
                probe = probes[index][kill // WORKERS % len(probes[index])]
                probe_n += 1
                probe_request = asyncio.ensure_future(send(api, probe, probe_n))

                def queued(pids: set[int] = workers) -> list[int]:
                    return [pid for pid in pids if unread_request_bytes(pid) > 0]

                await eventually(
                    lambda: asyncio.to_thread(lambda: len(queued()) > 0),
                    within_s=60,
                    what="the probe's request written to its worker",
                )
                (victim,) = queued()
                for pid in workers - {victim}:
                    os.kill(pid, signal.SIGCONT)
                load.go.set()
                others = [name for i, group in by_worker.items() if i != index for name in group]
                await load.progress(others, 5, "the other worker's instances served while one is stopped")
                os.kill(victim, signal.SIGKILL)
                status, body = await asyncio.wait_for(probe_request, 120)
                assert (status, body["code"]) == (503, "unavailable"), body
                assert "worker" in body["error"], body
                status, body = await send(api, probe, probe_n)  # sent again: stored once
                assert status == 200 and body["publicContext"]["last"] == probe_n, body

                def replaced(gone: int = victim) -> bool:
                    now = worker_pids(server_pid)
                    return len(now) == WORKERS and gone not in now

                await eventually(lambda: asyncio.to_thread(replaced), within_s=120, what="the killed worker replaced")
                await load.progress(names, 3, "every instance served after the kill")
            for _ in range(PLAIN_KILLS):  # and at whatever moment the load is in
                workers = worker_pids(server_pid)
                seen_workers |= workers
                victim = rng.choice(sorted(workers))
                os.kill(victim, signal.SIGKILL)

                def replaced_plain(gone: int = victim) -> bool:
                    now = worker_pids(server_pid)
                    return len(now) == WORKERS and gone not in now

                await eventually(lambda: asyncio.to_thread(replaced_plain), within_s=120, what="the worker replaced")
                await load.progress(names, 3, "every instance served after the kill")
            seen_workers |= worker_pids(server_pid)
            await load.stop()
            acked = load.acked
    finally:
        with contextlib.suppress(ProcessLookupError):
            for pid in worker_pids(server_pid):
                os.kill(pid, signal.SIGCONT)  # a failed check must not leave a stopped worker behind
        assert await node.stop() == 0, node.tail()

    # No worker outlives the server.
    assert len(seen_workers) >= WORKERS + STOPPED_KILLS + PLAIN_KILLS
    assert [pid for pid in seen_workers if alive(pid)] == []
    # The history is exactly the acknowledged sequence, per instance (an event answered 503 was not
    # stored; each was sent again until acknowledged).
    histories = check_consistent(db)
    for name, numbers in acked.items():
        stored = [event["n"] for event in histories[name] if event.get("type") == "add"]
        assert stored == numbers, f"{name}: history {stored[-10:]} != acknowledged {numbers[-10:]}"
    for group in probes.values():
        for name in group:
            stored = [event["n"] for event in histories[name] if event.get("type") == "add"]
            assert len(stored) == len(set(stored)), f"{name}: a probe stored twice"
    assert sum(len(v) for v in acked.values()) > 100, "the load was too light to mean anything"


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_a_sigkilled_server_leaves_no_worker_behind(tmp_path: Path):
    node = ServeProcess(tmp_path / "data", "--sandbox-mode", "actors", "--sandbox-workers", str(WORKERS))
    await node.start()
    assert node.process is not None
    server_pid = node.process.pid
    await eventually(
        lambda: asyncio.to_thread(lambda: len(worker_pids(server_pid)) == WORKERS),
        within_s=60,
        what="two worker processes",
    )
    async with ClientSession(base_url=node.base) as session:  # the workers have work: a live actor
        api = node.api(session)
        await api.deploy("k", MACHINE)
        status, body = await api.call("POST", "/machines/k", body={"slug": "i1"})
        assert status == 200, body
        status, body = await send(api, "i1", 1)
        assert status == 200, body
    workers = worker_pids(server_pid)
    assert len(workers) == WORKERS
    node.process.kill()
    assert await node.exit_code() == -signal.SIGKILL

    def gone() -> bool:
        return not any(alive(pid) for pid in workers)

    await eventually(lambda: asyncio.to_thread(gone), within_s=60, what="the workers exited after the server died")
