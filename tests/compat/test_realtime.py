"""Real-time subscriptions (WebSocket /rt) and logs through the official, unmodified packages, against a
real `statehost serve` that is restarted in the middle of the run.

smply 0.1.18 deploys realtime.ts (XState 4: `bump`, `start` -> `ticking` with `after: {1500: "idle"}`,
console.log/console.error lines, allowRead rejecting sub "blocked"); @statebacked/client 0.1.37 with the
`ws` package then runs tests/compat/realtime.mjs: fan-out of client and timer transitions to two
subscribers, publicContext-only frames, subscription errors (403 rejected-by-machine-authorizer, 404,
403 missing-user), reconnection after a dropped socket and after a server restart, and logs.watch
(each line once, no busy loop). Finally `smply logs watch` must print each machine log line once.
See tests/compat/README.md.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.common import free_port
from tests.compat.test_official_packages import HERE, ROOT, SMPLY, first_json, smply
from tests.support import need_tool, which_or_need

pytestmark = [pytest.mark.node, pytest.mark.slow]

MACHINE = "rt"
INSTANCE = "rt-1"


class Server:
    """`statehost serve` on a fixed port and data dir, which can be stopped and started again."""

    def __init__(self, port: int, data: Path, logs: Path, database_url: str | None = None) -> None:
        self.port = port
        self.data = data
        self.database = ["--database-url", database_url] if database_url else []
        self.logs = logs
        self.process: subprocess.Popen[str] | None = None
        self.starts = 0

    def start(self) -> None:
        for attempt in range(20):  # the port may still be held for a moment after a stop
            self.starts += 1
            log_path = self.logs / f"server-{self.starts}.log"
            with log_path.open("w") as log:
                self.process = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "server",
                        "serve",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(self.port),
                        "--data-dir",
                        str(self.data),
                        *self.database,
                    ],
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            deadline = time.monotonic() + 60
            while self.process.poll() is None and time.monotonic() < deadline:
                if "listening on" in log_path.read_text() and _accepts(self.port):
                    return
                time.sleep(0.05)
            output = log_path.read_text()
            if self.process.poll() is not None and "address already in use" in output.lower() and attempt < 19:
                time.sleep(0.5)
                continue
            self.kill()
            raise AssertionError(f"the server did not start: {output}")

    def stop(self) -> float:
        """SIGTERM; the server must exit 0. Returns how long it took."""
        assert self.process is not None
        began = time.monotonic()
        self.process.terminate()
        try:
            code = self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                "the server did not stop within 30 s of SIGTERM (open /rt WebSockets must be closed on shutdown, wire-api 4.5)"
            ) from None
        self.process = None
        assert code == 0, f"the server did not stop cleanly on SIGTERM (exit {code})"
        return time.monotonic() - began

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None


def _accepts(port: int) -> bool:
    # aiohttp runs on_startup (which prints "listening on") before it binds the port.
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _json_objects(text: str) -> list:
    """The pretty-printed JSON values smply writes one after another (a cut-off last one is dropped)."""
    decoder = json.JSONDecoder()
    values, i = [], 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return values
        try:
            value, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return values
        values.append(value)


def _stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.mark.timeout(420)
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_realtime_subscriptions_and_logs_survive_a_restart(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
):
    which_or_need("node", "node is not on PATH (install Node.js 20 or later)")
    if not SMPLY.exists() or not (HERE / "node_modules" / "ws").exists():
        need_tool("the pinned npm packages", "tests/compat/node_modules is incomplete (make setup installs them)")
    data = tmp_path / "data"
    data.mkdir()
    url = request.getfixturevalue("pg_url") if backend == "postgres" else None
    server = Server(free_port(), data, tmp_path, url)
    server.start()
    try:  # on failure the server is killed; on success it must stop cleanly
        credentials = json.loads((data / "admin.json").read_text())
        home = tmp_path / "home"
        home.mkdir()
        subprocess.run(
            [sys.executable, "-m", "server", "login", "--credentials", str(data / "admin.json"), "--home", str(home)],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        srv = {**credentials, "home": str(home)}

        created = first_json(smply(srv, "machines", "create", "--machine", MACHINE, "--node", "realtime.ts"))
        assert created["currentVersion"]["machineVersionId"].startswith("ver_"), created
        instance = first_json(
            smply(
                srv,
                "instances",
                "create",
                "--machine",
                MACHINE,
                "--instance",
                INSTANCE,
                "--auth-context",
                '{"sub":"cli"}',
            )
        )
        assert instance["state"] == "idle" and instance["publicContext"] == {"count": 0, "ticks": 0}, instance
        key = first_json(smply(srv, "keys", "create", "--use", "production", "--name", "rt"))
        assert key["id"].startswith("sbk_") and key["key"].startswith("sbsec_"), key

        # realtime.mjs, with the restart handshake through a file.
        signal = tmp_path / "restart-signal"
        signal.write_text("")
        out_path, err_path = tmp_path / "realtime.out", tmp_path / "realtime.err"
        env = {
            **os.environ,
            "STATEHOST_URL": srv["url"],
            "ORG_ID": srv["orgId"],
            "ADMIN_TOKEN": srv["adminToken"],
            "MACHINE": MACHINE,
            "INSTANCE": INSTANCE,
            "KEY_ID": key["id"],
            "KEY_SECRET": key["key"],
            "RESTART_SIGNAL_FILE": str(signal),
        }
        restart_seconds = None
        with out_path.open("w") as out, err_path.open("w") as err:
            node = subprocess.Popen(["node", "realtime.mjs"], cwd=HERE, env=env, stdout=out, stderr=err, text=True)
        try:
            deadline = time.monotonic() + 300
            while node.poll() is None:
                assert time.monotonic() < deadline, f"realtime.mjs did not finish: {out_path.read_text()}"
                if restart_seconds is None and signal.read_text().strip() == "restart":
                    began = time.monotonic()
                    server.stop()
                    server.start()
                    restart_seconds = time.monotonic() - began
                    signal.write_text("restarted")
                time.sleep(0.05)
        finally:
            _stop_process(node)
        stdout, stderr = out_path.read_text(), err_path.read_text()
        checks = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
        assert node.returncode == 0, f"realtime.mjs failed (exit {node.returncode}):\n{stderr}\n{stdout}"
        assert checks and all(c["ok"] for c in checks), stdout
        by_name = {c["check"]: c for c in checks}
        assert restart_seconds is not None and by_name["all"]["restart"] is True, stdout
        for name in (
            "subscribe-initial-state",
            "events-fan-out",
            "timer-fan-out",
            "blocked-subscriber",
            "missing-instance-subscriber",
            "invalid-token-subscriber",
            "reconnect-after-drop",
            "server-restart",
            "frames-public-context-only",
            "logs-watch",
        ):
            assert name in by_name, f"check {name} did not run: {stdout}"
        lines = by_name["logs-watch"]["lines"]
        assert "tick done 1" in lines and "bump 1" in lines, lines

        # smply logs watch (the same client's logs.watch, printed as pretty JSON objects).
        watch_out = tmp_path / "smply-logs.out"
        with watch_out.open("w") as out:
            watch = subprocess.Popen(
                [
                    str(SMPLY),
                    "--api-url",
                    srv["url"],
                    "logs",
                    "watch",
                    "--machine",
                    MACHINE,
                    "--instance",
                    INSTANCE,
                    "--from=-1h",
                ],
                cwd=HERE,
                env={**os.environ, "HOME": str(home)},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        try:
            deadline = time.monotonic() + 120

            def seen() -> list[str]:
                entries = [e for e in _json_objects(watch_out.read_text()) if isinstance(e, dict)]
                return [
                    line.strip()
                    for e in entries
                    if e.get("instanceName") == INSTANCE
                    for line in str(e.get("log", "")).splitlines()
                    if line.strip()
                ]

            while not set(lines) <= set(seen()) and watch.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(2)  # anything printed twice would show up now
            assert watch.poll() is None, f"smply logs watch exited: {watch_out.read_text()}"
        finally:
            _stop_process(watch)
        got = seen()
        for line in lines:
            assert got.count(line) == 1, f"smply logs watch printed {line!r} {got.count(line)} times: {got}"
    except BaseException:
        server.kill()
        raise
    server.stop()
