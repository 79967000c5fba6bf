"""Sampling profiles of the statehost server while the load driver runs (py-spy, optional).

``Profiler(folder).record(name, pid)`` attaches ``py-spy record --format raw --threads`` to the
server for the duration of the block and then writes ``<name>.txt`` (collapsed stacks) and
``<name>-summary.txt``: samples per thread, and the functions with the most samples, on their own
(the innermost Python frame) and inclusive (anywhere on the stack). py-spy leaves out idle threads
(blocked in a system call, or waiting for the GIL), so percentages are of the samples in which a
thread was running Python or native code called from it.

    python -m bench.profile FILE.txt     # summarize a collapsed-stack file again
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from .common import ROOT

__all__ = ["Profiler", "summarize"]

_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")


def _pyspy() -> str | None:
    local = ROOT / ".venv" / "bin" / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


class Profiler:
    def __init__(self, folder: Path | None, rate: int = 250, options: tuple[str, ...] = ()) -> None:
        self.folder = folder
        self.rate = rate
        self.options = options
        """More py-spy options, e.g. ("--gil",) or ("--idle",)."""
        if folder is not None:
            if _pyspy() is None:
                raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
            folder.mkdir(parents=True, exist_ok=True)

    @contextlib.asynccontextmanager
    async def record(self, name: str, pid: int) -> AsyncIterator[None]:
        if self.folder is None:
            yield
            return
        pyspy = _pyspy()
        assert pyspy is not None
        out = self.folder / f"{name}.txt"
        with (self.folder / f"{name}.log").open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                pyspy,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(self.rate),
                "--format",
                "raw",
                "--threads",
                *self.options,
                "--output",
                str(out),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
            await asyncio.sleep(0.5)  # attached
            try:
                yield
            finally:
                process.send_signal(signal.SIGINT)
                await process.wait()
        if out.exists():
            (self.folder / f"{name}-summary.txt").write_text(summarize(out.read_text()))


def _function(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = match.group("file")
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        with contextlib.suppress(ValueError):
            path = str(Path(path).relative_to(ROOT))
    return f"{match.group('fn')} ({path})"


# Where a sample's time belongs: the first area one of whose markers is on its stack.
AREAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("sandbox: free a QuickJS context (_NativeGuest.close)", ("_NativeGuest.close (",)),
    ("sandbox: create a QuickJS context (_Sandbox.__init__)", ("_Sandbox.__init__ (",)),
    ("sandbox: a step (_NativeGuest._enter)", ("_NativeGuest._enter (", "_Sandbox.call (")),
    ("auth: key row + JWT verification (authenticate)", ("authenticate (server/auth.py",)),
    ("store: the writer's transactions (Store._write_loop)", ("Store._write_loop (",)),
    ("store: reads (Store._read)", ("Store._read (", "_execute_fetchall (")),
    (
        "instances: windows, commits, parking (server/instances.py, runtime/settle.py)",
        (
            "server/instances.py",
            "runtime/settle.py",
        ),
    ),
    ("routes: handlers, JSON bodies, answers (server/routes, server/app.py)", ("server/routes/", "server/app.py")),
    (
        "aiohttp: HTTP parsing, dispatch, writing",
        ("aiohttp/web_protocol", "aiohttp/web_app", "aiohttp/web_re", "aiohttp/http"),
    ),
    ("aiosqlite: thread hand-offs", ("aiosqlite/",)),
    ("asyncio: the loop itself (callbacks, selector, wake-ups)", ("",)),
)


def summarize(collapsed: str, top: int = 30) -> str:
    threads: collections.Counter[str] = collections.Counter()
    areas: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        stack, count = match.group(1).split(";"), int(match.group(2))
        total += count
        threads[stack[0]] += count
        frames = [_function(f) for f in stack[1:]] or ["(no Python frame)"]
        own[frames[-1]] += count
        for fn in set(frames):
            inclusive[fn] += count
        for area, markers in AREAS:
            if any(marker in frame for frame in frames for marker in markers):
                areas[area] += count
                break
    if not total:
        return "no samples\n"
    out = [f"{total} samples", "", "by thread:"]
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in threads.most_common(12)]
    out += ["", "by area (the first that matches a frame of the stack):"]
    out += [f"  {100 * areas[area] / total:5.1f}%  {area}" for area, _ in AREAS]
    out += ["", "own time (innermost frame):"]
    out += [f"  {100 * n / total:5.1f}%  {fn}" for fn, n in own.most_common(top)]
    out += ["", "inclusive (anywhere on the stack):"]
    out += [f"  {100 * n / total:5.1f}%  {fn}" for fn, n in inclusive.most_common(top)]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(summarize(Path(arg).read_text()))
