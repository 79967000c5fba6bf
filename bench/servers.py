"""The two servers the load driver compares, as subprocesses it starts, restarts and stops.

- ``StatehostServer``: ``statehost serve`` on a data folder (SQLite ``statehost.db``; first start
  writes ``admin.json``);
- ``BaselineServer``: ``node bench/baseline/server.mjs`` on one SQLite file.

Each writes its output to a log file in the data folder (no pipes to fill). ``start`` returns the
seconds from spawning the process to the first accepted TCP connection; ``stop`` sends SIGTERM and
waits (SIGKILL after a timeout). Both can be restarted on the same data.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import ROOT, free_port

__all__ = ["BaselineServer", "ServerProcess", "StatehostServer"]

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


class ServerProcess:
    """One server process: argv, a log file, and the line it prints once it is (about to be) ready."""

    name = "server"

    def __init__(self, argv: list[str], database: Path, log: Path, ready: re.Pattern[str]) -> None:
        self.argv = argv
        self.database = database
        """The SQLite file (its -wal and -shm files beside it)."""
        self.data_dir = database.parent
        self.log = log
        self.ready = ready
        self.url = ""
        self.process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} is not running"
        return self.process.pid

    async def start(self) -> float:
        """Start the process; the seconds until it accepts a connection."""
        assert self.process is None, f"{self.name} is already running"
        offset = self.log.stat().st_size if self.log.exists() else 0
        started = time.perf_counter()
        with self.log.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv, cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out
            )
        try:
            match = await self._wait_for_line(offset)
            self.url = match.group(1).rstrip("/")
            await self._wait_for_port()
        except BaseException:
            await self.stop()
            raise
        return time.perf_counter() - started

    async def _wait_for_line(self, offset: int) -> re.Match[str]:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process is not None
            with self.log.open("rb") as f:
                f.seek(offset)
                text = f.read().decode("utf-8", "replace")
            match = self.ready.search(text)
            if match is not None:
                return match
            if self.process.returncode is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{text[-3000:]}")
            await asyncio.sleep(0.005)
        raise TimeoutError(f"{self.name} did not start within {START_TIMEOUT_S} s (see {self.log})")

    async def _wait_for_port(self) -> None:
        # statehost prints its line from an on_startup hook, just before the socket is bound.
        host, port = re.sub(r"^https?://", "", self.url).split("/")[0].rsplit(":", 1)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                _, writer = await asyncio.open_connection(host, int(port))
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.002)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()

    def rss_kib(self) -> int:
        """The process's resident set (VmRSS), in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS in /proc/<pid>/status")


class StatehostServer(ServerProcess):
    name = "statehost"

    def __init__(self, data_dir: Path, *, command: Sequence[str] = (), extra: Sequence[str] = ()) -> None:
        """``command`` replaces ``.venv/bin/statehost`` (e.g. a script that patches a candidate fix
        in before calling ``server.cli.main``); ``extra`` goes after the serve options."""
        self.data_dir = data_dir
        self.port = free_port()
        if not command:
            venv_statehost = ROOT / ".venv" / "bin" / "statehost"
            command = [str(venv_statehost)] if venv_statehost.exists() else [sys.executable, "-m", "server"]
        argv = [
            *command,
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(data_dir),
            "--allow-private-fetch",
            *extra,
        ]
        super().__init__(
            argv, data_dir / "statehost.db", data_dir / "server.log", re.compile(r"statehost is listening on (\S+)")
        )

    def credentials(self) -> dict[str, Any]:
        """admin.json: ``{"url", "orgId", "userId", "adminToken"}``."""
        data: dict[str, Any] = json.loads((self.data_dir / "admin.json").read_text())
        return data


class BaselineServer(ServerProcess):
    name = "baseline"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("the baseline needs node (20 or later) on PATH")
        database = data_dir / "baseline.db"
        argv = [node, str(ROOT / "bench" / "baseline" / "server.mjs"), "--port", "0", "--db", str(database)]
        super().__init__(argv, database, data_dir / "server.log", re.compile(r"^listening (http://\S+)$", re.MULTILINE))
