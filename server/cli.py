"""The ``statehost`` command.

Today it has the local commands built on the sandbox runtime:

- ``statehost check FILE``: bundle and validate a machine module, as an upload would be;
- ``statehost run FILE --event E ...``: create an instance in memory and send it events, printing
  every transition, timer and log line (``--advance MS`` moves the clock and fires due timers).

The server commands (``serve``, ...) arrive with the durable engine and the HTTP API.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runtime import (
    BundleError,
    Bundler,
    Executor,
    FakeClock,
    FetchPolicy,
    InvalidMachineError,
    Limits,
    PreparedMachine,
    QuickJSNativeEngine,
    SandboxError,
    Upload,
)
from runtime.local import LocalInstance
from runtime.settle import WindowResult

from .fetch import AiohttpTransport

EXAMPLES = """examples:
  statehost check fixtures/machines/toggle/v4/machine.ts
  statehost run fixtures/machines/toggle/v4/machine.ts --event toggle --event toggle
  statehost run fixtures/machines/traffic_light/v5/machine.ts --xstate 5 --advance 30000 --event emergency
  statehost run machine.ts --context '{"public": {"n": 1}}' --auth-context '{"userId": "u1"}' --event '{"type": "inc"}'
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="statehost",
        description="Run unmodified XState machines as persistent backends.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def machine_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("file", type=Path, help="a .ts/.js module, or a .tar.gz/.zip project (see --entry)")
        p.add_argument(
            "--xstate", type=int, choices=(4, 5), help="the XState major (default: from the imports, else 4)"
        )
        p.add_argument("--entry", help="entry module inside an archive")

    check = sub.add_parser(
        "check",
        help="bundle and validate a machine module",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    machine_args(check)

    run = sub.add_parser(
        "run",
        help="run a machine locally, in memory",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    machine_args(run)
    run.add_argument("--context", type=json.loads, default=None, help="initial context (JSON object)")
    run.add_argument("--auth-context", type=json.loads, default={}, help="authContext for allowWrite (JSON)")
    run.add_argument(
        "--event",
        action="append",
        dest="steps",
        type=lambda v: ("event", v),
        default=[],
        help="an event type, or a JSON event object; repeatable, applied in order",
    )
    run.add_argument(
        "--advance",
        action="append",
        dest="steps",
        type=lambda v: ("advance", int(v)),
        help="move the clock by MS milliseconds, firing due timers; repeatable",
    )
    run.add_argument(
        "--allow-private-fetch",
        action="store_true",
        help="let the machine fetch loopback and private addresses",
    )
    run.add_argument("--json", action="store_true", help="print one JSON object per step")
    return parser


def _prepare(args: argparse.Namespace) -> tuple[Bundler, PreparedMachine]:
    bundler = Bundler()
    upload = Upload(args.file.name, args.file.read_bytes(), entry=args.entry, xstate_major=args.xstate)
    bundle = bundler.bundle(upload)
    return bundler, QuickJSNativeEngine(bundler.runtime_api).prepare(bundle)


def _event(value: str) -> dict[str, Any]:
    if value.lstrip().startswith("{"):
        parsed = json.loads(value)
        if not isinstance(parsed, dict):
            raise ValueError("an event must be a JSON object")
        return parsed
    return {"type": value}


class _Printer:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.logs_seen = 0

    def step(self, label: str, inst: LocalInstance, results: Sequence[WindowResult]) -> None:
        errors = [r.error or r.outcome.value for r in results if not r.ok]
        errors += [r.late_fault.error or "" for r in results if r.late_fault is not None]
        transitions = [t for r in results for round_ in r.committed for t in round_.transitions]
        logs = inst.logs[self.logs_seen :]
        self.logs_seen = len(inst.logs)
        if self.as_json:
            print(
                json.dumps(
                    {
                        "step": label,
                        "errors": errors,
                        "transitions": [
                            {
                                "state": t.state,
                                "publicContext": t.public_context,
                                "tags": list(t.tags),
                                "done": t.done,
                                "event": t.event,
                            }
                            for t in transitions
                        ],
                        "timers": [
                            {"id": row.key, "dueMs": row.due_ms, "event": row.event} for row in inst.timers.values()
                        ],
                        "logs": [{"stream": line.stream, "text": line.text} for line in logs],
                    }
                )
            )
            return
        print(f"» {label}")
        for line in logs:
            print(f"    [{line.stream}] {line.text}")
        for t in transitions:
            event = (t.event or {}).get("type", "?")
            tags = f"  tags={list(t.tags)}" if t.tags else ""
            done = "  (done)" if t.done else ""
            print(f"    {event:<28} → {json.dumps(t.state)}  public={json.dumps(t.public_context)}{tags}{done}")
        if not transitions and not errors:
            print("    (no transition)")
        for error in errors:
            print(f"    ✗ {error}")
        for row in sorted(inst.timers.values(), key=lambda r: r.due_ms):
            print(f"    ⏲ {row.event.get('type')} due in {row.due_ms - inst.clock.now_ms()} ms (id {row.key})")


async def _run(args: argparse.Namespace, prepared: PreparedMachine) -> int:
    clock = FakeClock()
    transport = AiohttpTransport(FetchPolicy(allow_private=args.allow_private_fetch))
    executor = Executor()
    printer = _Printer(args.json)
    try:
        inst = LocalInstance(prepared, executor, transport, clock, name="local")
        created = await inst.create(args.context, args.auth_context)
        printer.step("create", inst, [created])
        if not created.ok:
            return 1
        for kind, value in args.steps:
            if kind == "event":
                result = await inst.send(_event(value), args.auth_context)
                printer.step(f"event {value}", inst, [result])
            else:
                windows = await inst.advance_to(clock.now_ms() + value, clock.set)
                printer.step(f"advance {value} ms", inst, windows)
    finally:
        await transport.close()
        executor.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        _, prepared = _prepare(args)
    except FileNotFoundError as exc:
        print(f"statehost: {exc.filename}: no such file", file=sys.stderr)
        return 2
    except (BundleError, InvalidMachineError) as exc:
        print(f"statehost: {args.file}: {exc}", file=sys.stderr)
        return 1
    except SandboxError as exc:
        print(f"statehost: {exc}", file=sys.stderr)
        return 2
    if args.command == "check":
        limits = Limits()
        print(
            f"{args.file}: ok — XState {prepared.major}, exports {', '.join(prepared.exports)}, "
            f"bundle {len(prepared.bundle.code)} bytes, memory limit {limits.memory_bytes // 2**20} MiB"
        )
        return 0
    return asyncio.run(_run(args, prepared))


if __name__ == "__main__":
    raise SystemExit(main())
