"""Helpers shared by tests: build and prepare a machine from source, run it in a LocalInstance."""

from __future__ import annotations

from pathlib import Path

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
