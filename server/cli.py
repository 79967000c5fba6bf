"""The ``statehost`` command.

- ``statehost serve``: the server (SQLite in ``--data-dir``; on first start it creates an org and an
  admin user and writes their credentials to ``<data-dir>/admin.json``);
- ``statehost login``: stores the API URL and an admin token for the client commands
  (``~/.statehost/config.json``) and writes the smply credential files, so that the official
  ``smply`` CLI works against this server with ``--api-url``;
- ``statehost machines|machine-versions|instances ...``: the client commands (``client/cli.py``);
- ``statehost check FILE``: bundle and validate a machine module, as an upload would be;
- ``statehost run FILE --event E ...``: create an instance in memory and send it events, printing
  every transition, timer and log line (``--advance MS`` moves the clock and fires due timers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from client.cli import CLIENT_COMMANDS, add_client_commands, run_client_command
from client.config import config_path, save_login
from runtime import (
    ENGINE_NAMES,
    BundleError,
    Bundler,
    Executor,
    FakeClock,
    FetchPolicy,
    InvalidMachineError,
    Limits,
    LocalInstance,
    PreparedMachine,
    SandboxError,
    Upload,
    WindowResult,
    make_engine,
    resources,
)

from .config import add_serve_flags, settings_from_args
from .fetch import AiohttpTransport

EXAMPLES = """examples:
  statehost serve                                   # http://127.0.0.1:8787, data in ./.statehost
  statehost login --credentials .statehost/admin.json
  statehost machines create --machine toggle --node fixtures/machines/toggle/v4/machine.ts
  statehost instances send-event --machine toggle --instance i1 --event toggle --auth-context '{"sub": "u1"}'
  statehost check fixtures/machines/toggle/v4/machine.ts
  statehost run fixtures/machines/toggle/v4/machine.ts --event toggle --event toggle
  statehost run fixtures/machines/traffic_light/v5/machine.ts --xstate 5 --advance 30000 --event emergency
  statehost run machine.ts --context '{"public": {"n": 1}}' --auth-context '{"userId": "u1"}' --event '{"type": "inc"}'
"""


def version_text() -> str:
    """statehost's version, then the versions of the JavaScript packages it carries (issue 19)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        own = version("statehost")
    except PackageNotFoundError:
        own = "(not installed)"
    where = "installed" if resources.installed() else "checkout"
    js = resources.js_versions()
    lines = [f"statehost {own} ({where}: {resources.root()})", f"  esbuild {js['esbuild']}"]
    lines += [f"  xstate {js['xstate4']}", f"  xstate {js['xstate5']}"]
    lines.append(f"  @statebacked/machine {js['@statebacked/machine']}")
    return "\n".join(lines)


class _Version(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any, **__: Any) -> None:
        print(version_text())
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="statehost",
        description="Run unmodified XState machines as persistent backends.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
    )
    parser.add_argument(
        "--version", action=_Version, help="print statehost's version and the JavaScript it bundles with, and exit"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def machine_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("file", type=Path, help="a .ts/.js module, or a .tar.gz/.zip project (see --entry)")
        p.add_argument(
            "--xstate", type=int, choices=(4, 5), help="the XState major (default: from the imports, else 4)"
        )
        p.add_argument("--entry", help="entry module inside an archive")
        p.add_argument("--engine", choices=ENGINE_NAMES, default="quickjs-native", help="the engine to run it on")

    serve = sub.add_parser(
        "serve", help="run the server", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # One flag per exposed setting, declared with the setting (server/config.py).
    add_serve_flags(serve)

    login = sub.add_parser(
        "login",
        help="store credentials for the client commands and for smply",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    login.add_argument("--credentials", type=Path, help="an admin.json written by statehost serve")
    login.add_argument("--api-url", help="the server's URL (default: from --credentials)")
    login.add_argument("--token", help="an admin token (default: from --credentials)")
    login.add_argument("--org", help="the default org (default: from --credentials)")
    login.add_argument("--home", type=Path, default=Path.home(), help="where ~/.smply lives (default: your home)")

    check = sub.add_parser(
        "check",
        help="bundle and validate a machine module",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    machine_args(check)
    add_client_commands(sub)

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
    return bundler, make_engine(args.engine, bundler.runtime_api).prepare(bundle)


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
                            {"id": row.key, "dueMs": row.due_ms, "event": row.event}
                            | ({} if row.target is None else {"target": row.target})
                            for row in inst.timers.values()
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
            to = (
                ""
                if row.target is None
                else f" to {row.target.get('machineName')}/{row.target.get('machineInstanceName')}"
            )
            print(f"    ⏲ {row.event.get('type')}{to} due in {row.due_ms - inst.clock.now_ms()} ms (id {row.key})")


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


# WHATWG "bad ports": browsers and node's fetch (undici) refuse them (wire-api 6.1).
BAD_PORTS = frozenset(
    {
        1,
        7,
        9,
        11,
        13,
        15,
        17,
        19,
        20,
        21,
        22,
        23,
        25,
        37,
        42,
        43,
        53,
        69,
        77,
        79,
        87,
        95,
        101,
        102,
        103,
        104,
        109,
        110,
        111,
        113,
        115,
        117,
        119,
        123,
        135,
        137,
        139,
        143,
        161,
        179,
        389,
        427,
        465,
        512,
        513,
        514,
        515,
        526,
        530,
        531,
        532,
        540,
        548,
        554,
        556,
        563,
        587,
        601,
        636,
        989,
        990,
        993,
        995,
        1719,
        1720,
        1723,
        2049,
        3659,
        4045,
        4190,
        5060,
        5061,
        6000,
        6566,
        6665,
        6666,
        6667,
        6668,
        6669,
        6679,
        6697,
        10080,
    }
)


def _redacted(url: str | None) -> str | None:
    """A database URL without its password (for printing)."""
    if url is None:
        return None
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The server's event loop: uvloop's where it is installed (a dependency, except on Windows),
    asyncio's otherwise. An interleaved A/B run measured uvloop at 1.15 vs 1.55 ms per W1 event and
    +8-11% W2 events/s (docs/decisions.md, "uvloop and orjson")."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from .app import create_app
    from .db import SchemaTooNew

    if args.port in BAD_PORTS:
        print(
            f"statehost: port {args.port} is one that browsers and node's fetch refuse; pick another", file=sys.stderr
        )
        return 2
    settings = settings_from_args(args)
    credentials = settings.bootstrap_file
    url = args.public_url or f"http://{args.host}:{args.port}"

    def ready(_: str) -> None:
        # run_app calls this once every site is bound (on_startup runs before that): a client that
        # waits for this line can connect at once.
        print(f"statehost is listening on {url}", flush=True)
        print(f"  dashboard:         {url}/dashboard", flush=True)
        print(f"  database:          {_redacted(settings.database_url) or settings.database}", flush=True)
        print(f"  admin credentials: {credentials} (readable by you only)", flush=True)
        print(f"  next: statehost login --credentials {credentials}", flush=True)
        print("        then point smply or @statebacked/client at it: docs/compatibility.md", flush=True)

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = create_app(settings)
    try:
        web.run_app(
            app,
            host=args.host,
            port=args.port,
            print=ready,
            handle_signals=True,
            shutdown_timeout=15,
            loop=new_event_loop(),
        )
    except SchemaTooNew as exc:  # a clear refusal, not a traceback
        print(f"statehost: {exc}", file=sys.stderr)
        return 3
    return 0


def _login(args: argparse.Namespace) -> int:
    saved: dict[str, Any] = {}
    if args.credentials is not None:
        try:
            saved = json.loads(args.credentials.read_text())
        except (OSError, ValueError) as exc:
            print(f"statehost: {args.credentials}: cannot read admin credentials ({exc})", file=sys.stderr)
            return 2
    url = args.api_url or saved.get("url")
    token = args.token or saved.get("adminToken")
    org = args.org or saved.get("orgId")
    if not url or not token:
        print("statehost: give --credentials, or --api-url and --token", file=sys.stderr)
        return 2
    written = save_login(config_path(args.home), url, token, org, saved.get("userId", "statehost-admin"))
    print("wrote " + ", ".join(map(str, written)))
    print(f"now: statehost machines list   (or: smply --api-url {url} machines list)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "login":
        return _login(args)
    if args.command in CLIENT_COMMANDS:
        return run_client_command(args)
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
