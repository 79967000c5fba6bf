"""A statehost node as a subprocess for the crash tests: commands in on stdin, acks out on stdout.

    python -m tests.server.crash_node --db PATH --setup      # create org, machine, version; print ids
    python -m tests.server.crash_node --db PATH --org ORG    # serve commands until killed or SIGTERM

A command is a JSON line ``{"n": 17, "instance": "i3", "type": "inc"}``; the node answers
``{"ack": 17}`` only after the event's transition is committed (``{"nack": 17, ...}`` on errors).
SIGTERM stops the node gracefully (open windows finish) and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path

from runtime import FetchPolicy, Upload
from server.config import Settings
from server.engine import DurableEngine
from server.errors import Conflict

# Every event is handled in every state, so every acknowledged event leaves exactly one history row
# (re-arming re-enters `armed` and restarts its timer).
MACHINE = """
import { createMachine, assign } from "xstate";
export const allowRead = () => true;
export const allowWrite = () => true;
const inc = assign({ public: (c) => ({ count: c.public.count + 1 }) });
export default createMachine({
  id: "crash", predictableActionArguments: true, initial: "idle", context: { public: { count: 0 } },
  states: {
    idle: { on: { inc: { actions: inc }, arm: "armed" } },
    armed: { after: { 300: "fired" }, on: { inc: { actions: inc }, arm: "armed" } },
    fired: { on: { inc: { actions: inc }, arm: "armed" } },
  },
});
"""
MACHINE_SLUG = "crash"


async def setup(db: Path) -> None:
    engine = DurableEngine(Settings(database=db))
    await engine.start()
    org = await engine.store.create_org("crash-org", engine.clock.now_ms())
    await engine.store.create_machine(org, MACHINE_SLUG, [], engine.clock.now_ms())
    await engine.instances.create_version(org, MACHINE_SLUG, Upload("machine.ts", MACHINE.encode()))
    await engine.stop()
    print(json.dumps({"org": org}), flush=True)


async def serve(db: Path, org: str) -> None:
    engine = DurableEngine(Settings(database=db, fetch=FetchPolicy(), shutdown_grace_s=5.0))
    await engine.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    out = sys.stdout
    tasks: set[asyncio.Task[None]] = set()

    async def handle(command: dict) -> None:
        n, name = command["n"], command["instance"]
        try:
            with contextlib.suppress(Conflict):
                await engine.instances.create(org, MACHINE_SLUG, name)
            await engine.instances.send_event(org, MACHINE_SLUG, name, {"type": command["type"], "n": n}, {})
        except Exception as exc:
            out.write(json.dumps({"nack": n, "error": str(exc)}) + "\n")
        else:
            out.write(json.dumps({"ack": n}) + "\n")
        out.flush()

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"ready": True}), flush=True)
    stopped = asyncio.ensure_future(stop.wait())
    while not stop.is_set():
        line_task = asyncio.ensure_future(reader.readline())
        await asyncio.wait([line_task, stopped], return_when=asyncio.FIRST_COMPLETED)
        if not line_task.done():
            line_task.cancel()
            break
        line = line_task.result()
        if not line:
            await stop.wait()
            break
        task = asyncio.create_task(handle(json.loads(line)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks)
    await engine.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--setup", action="store_true")
    parser.add_argument("--org")
    args = parser.parse_args()
    asyncio.run(setup(args.db) if args.setup else serve(args.db, args.org))


if __name__ == "__main__":
    main()
