"""Helpers shared by tests: build and prepare a machine from source, run it in a LocalInstance; stop a
test whose tool is missing (``need_tool``: a skip for a developer, a failure in CI); wait for a
condition with a bound (``eventually``)."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NoReturn

import pytest

from runtime import (
    Bundler,
    Engine,
    Executor,
    FakeClock,
    Limits,
    PreparedMachine,
    Transport,
    Upload,
)
from runtime.local import LocalInstance

HEADER = {
    4: 'import { createMachine, assign, send, raise, cancel } from "xstate";\n',
    5: 'import { createMachine, setup, assign, raise, cancel, fromPromise, sendTo } from "xstate";\n',
}
ALLOW_ALL = "export const allowRead = () => true;\nexport const allowWrite = () => true;\n"


def prepare(
    bundler: Bundler,
    engine: Engine,
    body: str,
    major: int,
    limits: Limits | None = None,
    header: bool = True,
) -> PreparedMachine:
    """Bundle ``body`` (prefixed with the major's imports and allow-all authorizers) and prepare it."""
    source = (HEADER[major] + ALLOW_ALL + body) if header else body
    bundle = bundler.bundle(Upload("machine.ts", source.encode(), xstate_major=major))
    return engine.prepare(bundle, limits)


def local(
    prepared: PreparedMachine, executor: Executor, transport: Transport, clock: FakeClock, name: str = "i1"
) -> LocalInstance:
    return LocalInstance(prepared, executor, transport, clock, name=name)


DATABASE_URLS: dict[Path, str] = {}
"""db_dir -> the PostgreSQL database of a test that runs on PostgreSQL (the db_dir fixture)."""


# -- missing tools: skip for a developer, fail in CI -----------------------------------------------

REQUIRE_ALL_TOOLS = "STATEHOST_REQUIRE_ALL_TOOLS"
"""When this environment variable is set (to anything but "" or "0"; `.ci/run` sets it to 1), a test
whose tool is missing fails instead of skipping, and a run with any skipped test fails (tests/conftest.py)."""


def tools_required() -> bool:
    """Whether every tool must be there (the STATEHOST_REQUIRE_ALL_TOOLS switch is on)."""
    return os.environ.get(REQUIRE_ALL_TOOLS, "") not in ("", "0")


def need_tool(name: str, reason: str) -> NoReturn:
    """Stop the current test because ``name`` (a program, a package, a server binary) is missing;
    ``reason`` says what is missing and how to install it. Fails the test when the
    STATEHOST_REQUIRE_ALL_TOOLS switch is on (CI), else skips it (a developer's `make test-fast`).
    The only sanctioned way for a test to skip for a missing tool."""
    message = f"{name} is missing: {reason}"
    if tools_required():
        pytest.fail(f"{message} ({REQUIRE_ALL_TOOLS} is set: a missing tool fails the test)", pytrace=False)
    pytest.skip(message)


def which_or_need(program: str, reason: str) -> str:
    """The path of ``program`` on PATH; ``need_tool(program, reason)`` when there is none."""
    found = shutil.which(program)
    if found is None:
        need_tool(program, reason)
    return found


# -- waiting for a condition, with a bound ---------------------------------------------------------


async def eventually(
    check: Callable[[], Awaitable[bool]], within_s: float = 60.0, *, what: str = "the condition", every_s: float = 0.005
) -> None:
    """Wait until ``await check()`` is true, polling every ``every_s``; an AssertionError naming
    ``what`` after ``within_s`` seconds. Set ``within_s`` generously: it bounds a wait for something
    that must happen, it is never a figure the test checks (a loaded machine is slow)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"{what} did not become true within {within_s:g} s")
        await asyncio.sleep(every_s)


def eventually_sync(
    check: Callable[[], bool], within_s: float = 60.0, *, what: str = "the condition", every_s: float = 0.05
) -> None:
    """``eventually`` for synchronous code (subprocesses, files)."""
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not become true within {within_s:g} s")
        time.sleep(every_s)
