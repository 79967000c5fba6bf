"""Storage faults, each injected for real (docs/durability.md, "Storage faults"):

- **Disk full**: the SQLite database lives on a small tmpfs this test mounts (we run as root), filled
  to the last byte by a filler file; freeing the filler is "space returns".
- **I/O errors during commit**: a real ``statehost serve`` process whose file-size limit
  (RLIMIT_FSIZE) is lowered from outside with prlimit(1), so the kernel refuses its WAL writes
  (EFBIG: SQLite's SQLITE_IOERR_WRITE), then raised again (docs/decisions.md says why this
  mechanism: no device-mapper, no FUSE library here).
- **PostgreSQL connection killed mid-transaction**: ``pg_terminate_backend`` on the backend of a
  commit that waits on a row lock held by the test, so the kill lands inside the transaction.

Expected each time: a 503 with a ``code`` and a message naming the problem, nothing acknowledged
lost, nothing half-written visible (state and history agree, no orphan rows), reads still served,
and recovery without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import ClientError, ClientSession, ClientTimeout
from aiohttp.test_utils import TestClient, TestServer

from bench.common import free_port
from runtime import FakeClock
from server.app import create_app
from server.config import Settings
from server.db import SqliteDatabase, storage_error
from server.errors import StorageFull, StorageUnavailable
from tests.server.api_support import Api, api_client, bearer, key_token
from tests.support import eventually, need_tool

ROOT = Path(__file__).resolve().parents[2]

COUNTER = b"""import { createMachine, assign } from "xstate";
export const allowRead = () => { console.log("read"); return true; };
export const allowWrite = () => true;
export default createMachine({
  id: "c", predictableActionArguments: true, initial: "on", context: { public: { seen: [], pad: "" } },
  states: {
    on: { on: {
      add: { actions: assign({ public: (c, e) => ({ seen: [...c.public.seen, e.n], pad: e.pad || "" }) }) },
      arm: "armed",
    } },
    armed: { after: { 1000: "fired" } },
    fired: {},
  },
});
"""
PAD = "x" * 20_000
# allowRead logs a line: a read stores it, and must still be served when that write fails.
"""Each event writes its pad about five times (event, state, context, persisted, history)."""


def need_root_tool(reason: str) -> None:
    """This fault cannot be injected here (no root, no mount, no prlimit): ``need_tool`` fails the
    test under STATEHOST_REQUIRE_ALL_TOOLS (CI), else skips it."""
    need_tool("a fault injection mechanism", reason)


# -- consistency ---------------------------------------------------------------------------------


def check_consistent(db: Path) -> dict[str, list[dict[str, Any]]]:
    """Fail unless the SQLite file is intact, has no orphan rows, and every instance's row agrees
    with the last entry of its gap-free history. Returns each instance's history (events)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == [], "orphan rows"
        histories: dict[str, list[dict[str, Any]]] = {}
        for instance_id, name, seq, state_json, public_json in conn.execute(
            "SELECT id, name, seq, state_json, public_json FROM instances"
        ).fetchall():
            rows = conn.execute(
                "SELECT seq, ts, state_json, public_json, event_json FROM transitions WHERE instance_id = ?"
                " ORDER BY seq",
                (instance_id,),
            ).fetchall()
            assert [r[0] for r in rows] == list(range(1, seq + 1)), f"{name}: history has gaps or extra rows"
            stamps = [r[1] for r in rows]
            assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps), f"{name}: ts not monotonic"
            assert (rows[-1][2], rows[-1][3]) == (state_json, public_json), f"{name}: row and history disagree"
            histories[name] = [json.loads(r[4]) for r in rows]
        return histories
    finally:
        conn.close()


# -- a small disk ---------------------------------------------------------------------------------


class SmallDisk:
    """A tmpfs of ``size_mb`` mounted at ``path``; ``fill()`` takes every free byte, ``free()``
    gives them back."""

    def __init__(self, path: Path, size_mb: int) -> None:
        self.path = path
        self.size_mb = size_mb
        self.filler = path / "filler"

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m,mode=0700", "tmpfs", str(self.path)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            need_root_tool(f"cannot mount a tmpfs for the disk-full test (needs root): {result.stderr.strip()}")

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)

    def fill(self) -> int:
        """Write the filler until the disk refuses (ENOSPC); the bytes written."""
        written = 0
        with open(self.filler, "ab", buffering=0) as f:
            for chunk in (1 << 20, 1 << 12, 1):
                block = b"\0" * chunk
                while True:
                    try:
                        f.write(block)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
                    written += chunk
        return written

    def free(self) -> None:
        self.filler.unlink()

    def available(self) -> int:
        stat = os.statvfs(self.path)
        return stat.f_bavail * stat.f_frsize


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    disk = SmallDisk(tmp_path / "disk", 24)
    disk.mount()
    try:
        yield disk
    finally:
        disk.unmount()


@pytest.fixture
async def disk_api(small_disk: SmallDisk, bundler) -> AsyncIterator[tuple[Api, FakeClock]]:
    """The real app on loopback, its SQLite database on the small disk, on a clock the test moves
    (started at the real time, so that tokens are valid)."""
    import time

    clock = FakeClock(int(time.time() * 1000))
    settings = Settings(database=small_disk.path / "statehost.db", bootstrap_file=small_disk.path / "admin.json")
    app = create_app(settings, clock=clock, bundler=bundler)
    async with TestClient(TestServer(app)) as client:
        credentials = json.loads((small_disk.path / "admin.json").read_text())
        yield Api(client, credentials["adminToken"], credentials["orgId"]), clock


async def _send(api: Api, instance: str, event: dict[str, Any]) -> tuple[int, Any]:
    return await api.call("POST", f"/machines/c/i/{instance}/events", body={"event": event})


# -- disk full --------------------------------------------------------------------------------------


async def test_a_full_disk_is_a_503_storage_full_loses_nothing_and_recovers_when_space_returns(
    small_disk: SmallDisk, disk_api: tuple[Api, FakeClock]
):
    api, clock = disk_api
    engine = api.engine
    await api.deploy("c", COUNTER)
    for name in ("i1", "timed"):
        status, body = await api.call("POST", "/machines/c", body={"slug": name})
        assert status == 200, body
    acked: list[int] = []
    for n in range(3):  # the instance's live actor stays between these events
        status, body = await _send(api, "i1", {"type": "add", "n": n, "pad": PAD})
        assert status == 200, body
        acked.append(n)
    status, body = await _send(api, "timed", {"type": "arm"})
    assert status == 200 and body["state"] == "armed", body
    key_id, secret = await api.key(use="production")
    user = bearer(key_token(key_id, secret, {"sub": "u1"}))  # reads as this user run allowRead

    filled = small_disk.fill()
    assert small_disk.available() == 0
    # The WAL may still have room inside it: events commit until the disk must grow. Every event
    # is either acknowledged (200) or refused with storage-full, never anything else.
    refused: list[int] = []
    failed_batches = engine.store.db.failed_batches  # type: ignore[attr-defined]
    for n in range(3, 400):
        status, body = await _send(api, "i1", {"type": "add", "n": n, "pad": PAD})
        if status == 200:
            acked.append(n)
            continue
        assert status == 503, body
        assert body["code"] == "storage-full", body
        assert "disk is full" in body["error"], body
        refused.append(n)
        break
    assert refused, f"the disk never filled up ({filled} bytes of filler, {len(acked)} events acknowledged)"
    assert engine.store.db.failed_batches > failed_batches  # type: ignore[attr-defined]

    # More refusals while full: the writer thread survives each failed batch.
    for n in range(refused[0] + 1, refused[0] + 4):
        status, body = await _send(api, "i1", {"type": "add", "n": n, "pad": PAD})
        assert (status, body["code"]) == (503, "storage-full"), body
        refused.append(n)
    # A creation is refused the same way, and leaves no half-made instance behind.
    status, body = await api.call("POST", "/machines/c", body={"slug": "new"})
    assert (status, body["code"]) == (503, "storage-full"), body

    # Reads are still served: the last acknowledged state, nothing of the refused events.
    status, state = await api.call("GET", "/machines/c/i/i1")
    assert status == 200 and state["publicContext"]["seen"] == acked, state
    status, state = await api.call("GET", "/machines/c/i/i1", headers=user)  # its log line is dropped
    assert status == 200 and state["publicContext"]["seen"] == acked, state
    status, _ = await api.call("GET", "/machines/c/i/new")
    assert status == 404

    # A timer that comes due while the disk is full is held back, not counted as a failed delivery.
    timers = engine.timers
    assert timers is not None
    clock.advance(2_000)

    async def held_back() -> bool:
        return timers.held_back >= 1

    await eventually(held_back, within_s=30)
    row = await engine.store.find_instance(await engine.store.machine_id(api.org_id, "c"), "timed")
    assert row is not None and row.state == "armed"
    (timer,) = await engine.store.timers_of(row.id)
    assert timer.attempts == 0

    # Space returns: no restart, the next event commits, the held-back timer fires.
    small_disk.free()
    n = refused[-1] + 1
    status, body = await _send(api, "i1", {"type": "add", "n": n, "pad": PAD})
    assert status == 200, body
    acked.append(n)
    # Built on the committed state, not on the live actor that saw the refused events.
    assert body["publicContext"]["seen"] == acked, body

    async def fired() -> bool:
        status, state = await api.call("GET", "/machines/c/i/timed")
        return status == 200 and state["state"] == "fired"

    await eventually(fired, within_s=30)
    assert timers.dropped == 0
    status, body = await api.call("POST", "/machines/c", body={"slug": "new"})
    assert status == 200, body

    histories = check_consistent(small_disk.path / "statehost.db")
    assert [e["n"] for e in histories["i1"] if e.get("type") == "add"] == acked
    assert [e["type"] for e in histories["timed"]][1:] == ["arm", "xstate.after(1000)#c.armed"]
    assert set(histories) == {"i1", "timed", "new"}


async def test_the_sqlite_writer_fails_only_the_batch_whose_commit_failed(small_disk: SmallDisk):
    """Group commit (server/db.py): a batch whose transaction cannot be committed (the disk is full)
    fails every operation in it, with StorageFull; operations queued behind it form the next batch
    and commit; the writer thread and its connection carry on."""
    import threading

    db = SqliteDatabase(small_disk.path / "w.db")
    await db.open()
    try:

        async def make(tx: Any) -> None:
            await tx.execute("CREATE TABLE blobs (k INTEGER PRIMARY KEY, v BLOB)")

        await db.write(make)
        big = os.urandom(2 << 20)  # larger than any slack left in the WAL
        started, release = threading.Event(), threading.Event()

        def blob(k: int, *, hold: bool = False, frees: bool = False) -> Any:
            async def op(tx: Any) -> int:
                if hold:  # keep batch 1 running (on the writer thread) until batch 2 is queued
                    started.set()
                    assert release.wait(30)
                if frees:  # batch 2 gives the space back before it writes
                    small_disk.free()
                await tx.execute("INSERT INTO blobs (k, v) VALUES (?, ?)", (k, big))
                return k

            return op

        small_disk.fill()
        batches = db.batches
        # Queued in one go, before the writer task runs: they form one batch.
        batch1 = [asyncio.ensure_future(db.write(blob(k, hold=k == 1))) for k in (1, 2, 3)]
        assert await asyncio.to_thread(started.wait, 30)
        batch2 = [asyncio.ensure_future(db.write(blob(4, frees=True))), asyncio.ensure_future(db.write(blob(5)))]

        async def queued() -> bool:  # both wait in the queue while batch 1 still runs
            return db._queue.qsize() == 2

        await eventually(queued)
        release.set()
        outcomes1 = await asyncio.gather(*batch1, return_exceptions=True)
        outcomes2 = await asyncio.gather(*batch2, return_exceptions=True)
        assert all(isinstance(o, StorageFull) for o in outcomes1), outcomes1
        assert "disk is full" in str(outcomes1[0])
        assert outcomes2 == [4, 5], outcomes2
        assert db.batches == batches + 1  # batch 2, in one transaction
        assert {r[0] for r in await db.read("SELECT k FROM blobs")} == {4, 5}
    finally:
        await db.close()


# -- I/O errors during commit ---------------------------------------------------------------------


class ServeProcess:
    """A real ``statehost serve`` (``python -m server serve``) on a free loopback port. Its output
    goes to a pipe that a task drains (a pipe, not a file: a file would meet the fault too)."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.data_dir = data_dir
        self.extra = extra
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process: asyncio.subprocess.Process | None = None
        self.output: list[str] = []
        self._drain: asyncio.Task[None] | None = None

    async def start(self, *, wait: bool = True) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "server",
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "--workers",
            "2",
            "--engine",
            "quickjs-native",
            *self.extra,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=ROOT,
        )
        self._drain = asyncio.ensure_future(self._read())
        if wait:
            await self._wait_healthy()

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        while line := await self.process.stdout.readline():
            self.output.append(line.decode(errors="replace"))

    def tail(self) -> str:
        return "".join(self.output[-40:])

    async def _wait_healthy(self) -> None:
        assert self.process is not None
        deadline = asyncio.get_running_loop().time() + 90
        async with ClientSession() as session:
            while True:
                if self.process.returncode is not None:
                    raise AssertionError(f"statehost serve exited ({self.process.returncode}):\n{self.tail()}")
                with contextlib.suppress(OSError, TimeoutError, ClientError):
                    async with session.get(f"{self.base}/health", timeout=ClientTimeout(total=2)) as response:
                        if response.status == 200:
                            return
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError(f"statehost serve did not become healthy:\n{self.tail()}")
                await asyncio.sleep(0.05)

    async def exit_code(self, within_s: float = 60) -> int:
        assert self.process is not None
        code = await asyncio.wait_for(self.process.wait(), within_s)
        if self._drain is not None:
            await asyncio.wait_for(self._drain, 10)
        return code

    async def stop(self) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        return await self.exit_code()

    def api(self, session: ClientSession) -> Api:
        credentials = json.loads((self.data_dir / "admin.json").read_text())
        return Api(session, credentials["adminToken"], credentials["orgId"])  # type: ignore[arg-type]


def set_file_size_limit(pid: int, limit: str) -> None:
    """prlimit(1) on another process: RLIMIT_FSIZE soft limit (bytes, or "unlimited")."""
    subprocess.run(["prlimit", f"--pid={pid}", f"--fsize={limit}:unlimited"], check=True, capture_output=True)


async def test_an_io_error_during_commit_is_a_503_storage_unavailable_and_the_node_recovers(tmp_path: Path):
    """The kernel refuses the server's writes to its WAL (RLIMIT_FSIZE of 32 bytes, the WAL header's
    size: every frame write fails with EFBIG, SQLite's SQLITE_IOERR_WRITE) while a commit runs."""
    if shutil.which("prlimit") is None:
        need_root_tool("prlimit(1) (util-linux) is needed to inject I/O errors")
    node = ServeProcess(tmp_path / "data")
    await node.start()
    try:
        async with ClientSession(base_url=node.base) as session:
            api = node.api(session)
            await api.deploy("c", COUNTER)
            status, body = await api.call("POST", "/machines/c", body={"slug": "i1"})
            assert status == 200, body
            for n in (0, 1):
                status, body = await _send(api, "i1", {"type": "add", "n": n})
                assert status == 200, body
            assert node.process is not None
            set_file_size_limit(node.process.pid, "32")
            for n in (2, 3):
                status, body = await _send(api, "i1", {"type": "add", "n": n})
                assert status == 503, body
                assert body["code"] == "storage-unavailable", body
                assert "I/O error" in body["error"], body
            status, body = await api.call("POST", "/machines/c", body={"slug": "i2"})
            assert (status, body["code"]) == (503, "storage-unavailable"), body
            assert node.process.returncode is None  # SIGXFSZ is ignored: the node lives on
            status, state = await api.call("GET", "/machines/c/i/i1")
            assert status == 200 and state["publicContext"]["seen"] == [0, 1], state
            set_file_size_limit(node.process.pid, "unlimited")
            status, body = await _send(api, "i1", {"type": "add", "n": 4})
            assert status == 200 and body["publicContext"]["seen"] == [0, 1, 4], body
            status, body = await api.call("POST", "/machines/c", body={"slug": "i2"})
            assert status == 200, body
    finally:
        assert await node.stop() == 0, node.tail()
    histories = check_consistent(tmp_path / "data" / "statehost.db")
    assert [e["n"] for e in histories["i1"] if e.get("type") == "add"] == [0, 1, 4]
    assert set(histories) == {"i1", "i2"}


# -- PostgreSQL: the connection killed mid-transaction -------------------------------------------


async def test_a_postgres_connection_killed_mid_commit_is_a_503_and_nothing_of_it_is_stored(
    tmp_path: Path, pg_url: str, bundler
):
    """The test holds the instance's row lock, so the node's commit waits inside its transaction;
    then another connection terminates that backend (pg_terminate_backend)."""
    async for api in api_client(tmp_path, bundler, pg_url):
        await api.deploy("c", COUNTER)
        status, body = await api.call("POST", "/machines/c", body={"slug": "i1"})
        assert status == 200, body
        status, body = await _send(api, "i1", {"type": "add", "n": 0})
        assert status == 200, body
        locker = await asyncpg.connect(pg_url)
        killer = await asyncpg.connect(pg_url)
        try:
            lock = locker.transaction()
            await lock.start()
            await locker.execute("SELECT id FROM instances WHERE name = 'i1' FOR UPDATE")
            request = asyncio.ensure_future(_send(api, "i1", {"type": "add", "n": 1}))
            waiting: list[int] = []

            async def commit_waits(killer: Any = killer, waiting: list[int] = waiting) -> bool:
                waiting[:] = [
                    r["pid"]
                    for r in await killer.fetch(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock' AND state = 'active' AND pid <> pg_backend_pid()"
                    )
                ]
                return len(waiting) == 1

            await eventually(commit_waits, within_s=30)
            assert await killer.fetchval("SELECT pg_terminate_backend($1)", waiting[0]) is True
            status, body = await asyncio.wait_for(request, 30)
            await lock.rollback()
            assert status == 503, body
            assert body["code"] == "unavailable", body
            assert "database" in body["error"] and "terminat" in body["error"], body
            # reads are served meanwhile, from another pooled connection
            status, state = await api.call("GET", "/machines/c/i/i1")
            assert status == 200 and state["publicContext"]["seen"] == [0], state
            # the node goes on at once (the pool replaces the dead connection), on the committed state
            status, body = await _send(api, "i1", {"type": "add", "n": 2})
            assert status == 200 and body["publicContext"]["seen"] == [0, 2], body
            rows = await killer.fetch(
                "SELECT t.seq, t.state_json, t.public_json, t.event_json, i.seq AS last, i.state_json AS state,"
                " i.public_json AS public FROM transitions t JOIN instances i ON i.id = t.instance_id"
                " WHERE i.name = 'i1' ORDER BY t.seq"
            )
            assert [r["seq"] for r in rows] == list(range(1, rows[0]["last"] + 1))
            assert (rows[-1]["state_json"], rows[-1]["public_json"]) == (rows[-1]["state"], rows[-1]["public"])
            assert [json.loads(r["event_json"]).get("n") for r in rows][1:] == [0, 2]
        finally:
            await locker.close()
            await killer.close()


def test_sqlite_storage_errors_map_to_503s_and_others_do_not(tmp_path: Path):
    """``storage_error`` on real SQLite errors: a read-only file is a storage fault (503
    storage-unavailable, named), a constraint or a bad statement is not (None: the caller's bug or
    the request's conflict)."""
    db = tmp_path / "x.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
        conn.execute("INSERT INTO t VALUES (1)")
    conn.close()
    readonly = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    writable = sqlite3.connect(db)
    try:
        with pytest.raises(sqlite3.OperationalError) as caught:
            readonly.execute("INSERT INTO t VALUES (2)")
        error = storage_error(caught.value)
        assert isinstance(error, StorageUnavailable) and error.status == 503
        assert error.code == "storage-unavailable" and "read-only" in error.message
        with pytest.raises(sqlite3.IntegrityError) as caught:
            writable.execute("INSERT INTO t VALUES (1)")
        assert storage_error(caught.value) is None
        with pytest.raises(sqlite3.OperationalError) as caught:
            writable.execute("SELECT nope FROM t")
        assert storage_error(caught.value) is None
    finally:
        readonly.close()
        writable.close()
