"""docs/quickstart.md, executed: every block, in order, against a real server (issue 7).

Each fenced block in the page follows a ``<!-- quickstart: KIND [ARG] -->`` comment:

- ``server``: run in the background from a clone of statehost; the test waits for the server's
  "listening" line;
- ``shell`` / ``shell fails``: run in "the second terminal", which keeps its directory and exported
  variables from block to block; must exit 0 (``fails``: must not);
- ``file NAME``: written to that terminal's current directory;
- ``output``: lines that the previous block's output must contain, in order (``…`` matches
  anything).

The clone is a directory of symlinks to this checkout (so ``make run`` finds the installed
environment, and the server's data directory is the test's own), ``HOME`` is a temporary directory,
and the only rewrite of the page is its port: the server listens on a free port
(``STATEHOST_PORT``), and ``8787`` in the blocks becomes that port.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.common import free_port, wait_for_line
from runtime.wasm_build import cache_dir

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "quickstart.md"
BLOCK = re.compile(r"^<!-- quickstart: (?P<kind>[a-z]+)(?: (?P<arg>\S+))? -->\n```\w*\n(?P<body>.*?)^```$", re.M | re.S)
NOT_LINKED = {".git", ".statehost", ".pytest_cache", ".mypy_cache", ".ruff_cache"}

pytestmark = pytest.mark.slow


@dataclass
class Block:
    kind: str
    arg: str | None
    body: str


def blocks() -> list[Block]:
    text = DOC.read_text()
    found = [Block(m["kind"], m["arg"], m["body"]) for m in BLOCK.finditer(text)]
    fences = len(re.findall(r"^```\w+$", text, re.M))
    assert fences == len(found), "every fenced block in docs/quickstart.md needs a <!-- quickstart: ... --> comment"
    return found


def test_every_block_is_marked_and_known():
    kinds = [(b.kind, b.arg) for b in blocks()]
    assert kinds[0] == ("server", None)
    assert {k for k, _ in kinds} <= {"server", "shell", "file", "output"}
    assert all(arg in (None, "fails") for k, arg in kinds if k in ("server", "shell", "output"))
    assert all(arg for k, arg in kinds if k == "file")


class Terminal:
    """A shell whose directory and exported variables carry over from one block to the next."""

    def __init__(self, cwd: Path, env: dict[str, str], state: Path) -> None:
        self.cwd = cwd
        self.env = env
        self.exports = state / "exports.sh"
        self.exports.write_text("")
        self.where = state / "cwd"

    def run(self, script: str, timeout: float = 180) -> tuple[int, str]:
        wrapper = (
            f"trap 'pwd > {shlex.quote(str(self.where))}; export -p > {shlex.quote(str(self.exports))}' EXIT\n"
            f"source {shlex.quote(str(self.exports))}\n"
            "set -eo pipefail\n" + script
        )
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-c", wrapper],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
        self.cwd = Path(self.where.read_text().strip())
        return done.returncode, done.stdout


def _expect(expected: str, output: str, what: str) -> None:
    lines = output.splitlines()
    at = 0
    for want in (line for line in expected.splitlines() if line.strip()):
        pattern = re.compile(".*".join(re.escape(part) for part in re.split(r"\s*…\s*", want.strip())))
        while at < len(lines) and not pattern.search(lines[at]):
            at += 1
        assert at < len(lines), f"{what}: expected a line like {want!r} (in order) in:\n{output}"
        at += 1


def _clone(tmp: Path) -> Path:
    clone = tmp / "statehost"
    clone.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in NOT_LINKED:
            (clone / entry.name).symlink_to(entry)
    return clone


def test_quickstart_runs_as_written(tmp_path: Path):
    port = free_port()
    home = tmp_path / "home"
    home.mkdir()
    clone = _clone(home)
    env = {
        **os.environ,
        "HOME": str(home),
        "STATEHOST_PORT": str(port),
        "NO_COLOR": "1",
        # npm's cache stays the machine's (installed packages come from it when it has them).
        "npm_config_cache": os.environ.get("npm_config_cache", str(Path.home() / ".npm")),  # noqa: SIM112 - npm reads lower case
        "npm_config_prefer_offline": "true",
        "npm_config_update_notifier": "false",
        # So does the WASM guest's build cache (`make setup` builds the guest only when it is missing).
        "STATEHOST_CACHE": str(cache_dir()),
    }
    for name in ("VIRTUAL_ENV", "STATEHOST_API_URL", "STATEHOST_TOKEN", "STATEHOST_ORG", "FORCE_COLOR"):
        env.pop(name, None)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not p.startswith(sys.prefix))
    state = tmp_path / "terminal"
    state.mkdir()
    terminal = Terminal(clone, env, state)
    server: subprocess.Popen[str] | None = None
    drained = threading.Thread()
    previous = ("", "")
    try:
        for number, block in enumerate(blocks(), 1):
            body = block.body.replace("8787", str(port))
            what = f"docs/quickstart.md block {number} ({block.kind})"
            if block.kind == "server":
                server = subprocess.Popen(
                    ["bash", "-c", body],
                    cwd=clone,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    start_new_session=True,
                )
                previous = (what, wait_for_line(server, "next: statehost login", what))
                assert server.stdout is not None
                # Keep reading, so that the server never blocks on a full pipe.
                drained = threading.Thread(target=server.stdout.read, daemon=True)
                drained.start()
            elif block.kind == "shell":
                code, out = terminal.run(body)
                if block.arg == "fails":
                    assert code != 0, f"{what} should fail:\n{body}\n{out}"
                else:
                    assert code == 0, f"{what} exited {code}:\n{body}\n{out}"
                previous = (what, out)
            elif block.kind == "file":
                (terminal.cwd / str(block.arg)).write_text(body)
            elif block.kind == "output":
                _expect(body, previous[1], previous[0])
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGINT)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                raise
            finally:
                if drained.is_alive():
                    drained.join(5)
                if server.stdout is not None:
                    server.stdout.close()
    # The server wrote its data where the page says, in the clone.
    assert (clone / ".statehost" / "admin.json").exists()
