"""The ``statehost`` CLI's client commands (smply's command tree, wire-api 8.3), on the Python client.

Where the API URL and credentials come from, first match wins: ``--api-url``/``--token``/``--org``,
then ``STATEHOST_API_URL``/``STATEHOST_TOKEN``/``STATEHOST_ORG``, then the config file that
``statehost login`` writes (``~/.statehost/config.json``, or ``--config``), then
``http://127.0.0.1:8787`` for the URL.

Output is a table (lists) or ``key: value`` lines (objects) for people, and the API's JSON with
``--json`` for scripts. Errors are one line on stderr: exit 1 for what the server refused (with its
code), 2 for a usage problem (bad flag, unreadable file, no credentials).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from .api import StatehostClient
from .errors import StatehostError
from .tokens import sign_token

__all__ = ["CLIENT_COMMANDS", "add_client_commands", "config_path", "run_client_command"]

DEFAULT_API_URL = "http://127.0.0.1:8787"
Handler = Callable[[StatehostClient, argparse.Namespace], Awaitable[Any]]


class UsageError(Exception):
    """A problem with how the command was called (exit 2)."""


def config_path(home: Path | None = None) -> Path:
    return (home or Path.home()) / ".statehost" / "config.json"


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None


def _event_arg(text: str) -> Any:
    """An event type, or a JSON event object."""
    if text.lstrip().startswith("{"):
        event = _json_arg(text)
        if not isinstance(event.get("type"), str):
            raise argparse.ArgumentTypeError('a JSON event needs a string "type"')
        return event
    return text


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-url", help=f"the server (default: $STATEHOST_API_URL, login, {DEFAULT_API_URL})")
    parser.add_argument("--token", help="an admin or key-signed token (default: $STATEHOST_TOKEN, login)")
    parser.add_argument("--org", help="the org, for admins of several (default: $STATEHOST_ORG, login)")
    parser.add_argument("--config", type=Path, help="the config file (default ~/.statehost/config.json)")
    parser.add_argument("--json", action="store_true", help="print the API's JSON, for scripts")


def _command(
    group: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    help_text: str,
    example: str,
    handler: Handler,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = group.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(parser)
    parser.set_defaults(client_handler=handler)
    return parser


def _read_source(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None


# ---- handlers ---------------------------------------------------------------------------------


async def _machines_create(c: StatehostClient, a: argparse.Namespace) -> Any:
    path = a.node or a.js
    source = _read_source(path) if path else None  # before anything is created on the server
    await c.machines.create(a.machine, a.index or None)
    if path and source is not None:
        version = await c.versions.create(
            a.machine,
            source,
            filename=path.name,
            client_info=a.version_reference or "",
            make_current=True,
            xstate_major=a.xstate,
        )
        return {"slug": a.machine, "machineVersionId": version}
    return {"slug": a.machine}


async def _versions_create(c: StatehostClient, a: argparse.Namespace) -> Any:
    path = a.node or a.js
    version = await c.versions.create(
        a.machine,
        _read_source(path),
        filename=path.name,
        client_info=a.version_reference or "",
        make_current=a.make_current,
        xstate_major=a.xstate,
    )
    return {"machineVersionId": version}


async def _instances_create(c: StatehostClient, a: argparse.Namespace) -> Any:
    return await c.instances.create(a.machine, a.instance, context=a.context, version_id=a.version)


async def _send_event(c: StatehostClient, a: argparse.Namespace) -> Any:
    return await c.instances.send_event(a.machine, a.instance, a.event)


async def _generate_token(c: StatehostClient, a: argparse.Namespace) -> Any:
    """Local signing, as smply's tokens generate: 24 hours, issuer https://cli.statebacked.dev/."""
    if not isinstance(a.claims, dict):
        raise UsageError("--claims must be a JSON object (it becomes the authContext)")
    return {"token": sign_token(a.key, a.secret, a.claims, issuer="https://cli.statebacked.dev/")}


async def _logs_get(c: StatehostClient, a: argparse.Namespace) -> Any:
    page = await c.logs.retrieve(a.since, machine=a.machine, instance=a.instance)
    return page if a.json else page["logs"]


async def _watch(c: StatehostClient, a: argparse.Namespace) -> Any:
    """Live updates: the current state, then one line per committed transition (reconnecting)."""
    return c.instances.subscribe(a.machine, a.instance)


async def _done(what: Awaitable[None]) -> Any:
    """For calls that answer nothing (204): the command prints ``ok``."""
    await what
    return None


# Each command: group, name, what it does, an example, its handler, and the flags it takes beyond
# the common ones ("machine", "instance", "source"/"source?" = --node|--js required/optional,
# "auth" = --auth-context, and command-specific ones).
_M = "statehost machines"
_V = "statehost machine-versions"
_I = "statehost instances"
_K = "statehost keys"
_TABLE: tuple[tuple[str, str, str, str, Handler, tuple[str, ...]], ...] = (
    ("machines", "create", "create a machine, and with --node/--js its first version",
     f"{_M} create --machine toggle --node toggle.ts", _machines_create, ("machine", "index", "source?")),
    ("machines", "list", "list machines", f"{_M} list", lambda c, a: c.machines.list(), ()),
    ("machines", "get", "show a machine", f"{_M} get --machine toggle",
     lambda c, a: c.machines.get(a.machine), ("machine",)),
    ("machines", "delete", "delete a machine with its versions and instances", f"{_M} delete --machine toggle",
     lambda c, a: _done(c.machines.delete(a.machine)), ("machine",)),
    ("machine-versions", "create", "upload a new version", f"{_V} create -m toggle --node toggle.ts --make-current",
     _versions_create, ("machine", "make-current", "source")),
    ("machine-versions", "list", "list a machine's versions", f"{_V} list -m toggle",
     lambda c, a: c.versions.list(a.machine), ("machine",)),
    ("instances", "create", "create an instance", f"{_I} create -m toggle -i user-1 --context '{{\"n\": 1}}'",
     _instances_create, ("machine", "instance", "context", "version", "auth")),
    ("instances", "get", "show an instance's state", f"{_I} get -m toggle -i user-1",
     lambda c, a: c.instances.get(a.machine, a.instance), ("machine", "instance", "auth")),
    ("instances", "list", "list a machine's instances", f"{_I} list -m toggle",
     lambda c, a: c.instances.list(a.machine), ("machine",)),
    ("instances", "send-event", "send an event", f"{_I} send-event -m toggle -i user-1 --event toggle",
     _send_event, ("machine", "instance", "event", "auth")),
    ("instances", "list-transitions", "an instance's history", f"{_I} list-transitions -m toggle -i user-1",
     lambda c, a: c.instances.transitions(a.machine, a.instance), ("machine", "instance")),
    ("instances", "watch", "live updates: the current state, then each transition as it commits",
     f"{_I} watch -m toggle -i user-1", _watch, ("machine", "instance", "auth", "count")),
    ("instances", "delete", "delete an instance", f"{_I} delete -m toggle -i user-1",
     lambda c, a: _done(c.instances.delete(a.machine, a.instance)), ("machine", "instance")),
    ("instances", "set-desired-version", "move an instance to another version",
     f"{_I} set-desired-version -m toggle -i user-1 -v ver_x",
     lambda c, a: _done(c.instances.set_desired_version(a.machine, a.instance, a.version)),
     ("machine", "instance", "version!")),
    ("instances", "set-status", "pause or resume an instance", f"{_I} set-status -m toggle -i user-1 --status paused",
     lambda c, a: _done(c.instances.set_status(a.machine, a.instance, a.status)), ("machine", "instance", "status")),
    ("keys", "create", "create an API key (its secret is shown once)", f"{_K} create --name backend --use production",
     lambda c, a: c.keys.create(a.name, use=a.use, scopes=a.scopes), ("name", "use", "scopes")),
    ("keys", "list", "list API keys", f"{_K} list", lambda c, a: c.keys.list(), ()),
    ("keys", "delete", "delete an API key", f"{_K} delete --key sbk_x",
     lambda c, a: _done(c.keys.delete(a.key)), ("key",)),
    ("tokens", "generate", "sign an end-user token with a key, locally",
     "statehost tokens generate --key sbk_x --secret sbsec_y --claims '{\"sub\": \"u1\"}'",
     _generate_token, ("key", "secret", "claims", "local")),
    ("logs", "get", "machine logs since an instant", "statehost logs get --from 2026-01-01T00:00:00Z -m toggle",
     _logs_get, ("from", "machine?", "instance?")),
    ("orgs", "list", "the orgs you belong to", "statehost orgs list", lambda c, a: c.orgs.list(), ()),
)  # fmt: skip
_GROUPS = {"machines": "machine definitions", "machine-versions": "versions of a machine's code",
           "instances": "machine instances", "keys": "API keys (for signing end-user tokens)",
           "tokens": "end-user tokens", "logs": "machine logs", "orgs": "organizations"}  # fmt: skip
CLIENT_COMMANDS = frozenset(_GROUPS)


def _flags(p: argparse.ArgumentParser, flag: str) -> None:
    if flag in ("machine", "machine?"):
        p.add_argument("--machine", "-m", required=flag == "machine", help="the machine's slug")
    elif flag in ("instance", "instance?"):
        p.add_argument("--instance", "-i", required=flag == "instance", help="the instance's name")
    elif flag == "index":
        p.add_argument("--index", action="append", help="an index name (repeatable)")
    elif flag in ("source", "source?"):
        source = p.add_mutually_exclusive_group(required=flag == "source")
        source.add_argument("--node", type=Path, help="a TypeScript/JavaScript module; the server bundles it")
        source.add_argument("--js", type=Path, help="a JavaScript module or bundle")
        p.add_argument("--xstate", type=int, choices=(4, 5), help="the XState major (default: from the imports)")
        p.add_argument("--version-reference", help="your reference for this version, e.g. a git commit")
    elif flag == "make-current":
        p.add_argument("--make-current", action="store_true", help="new instances start on this version")
    elif flag == "context":
        p.add_argument("--context", type=_json_arg, help="initial context (JSON)")
    elif flag == "version":
        p.add_argument("--version", help="a machine version ID (default: the current version)")
    elif flag == "version!":
        p.add_argument("--version", "-v", required=True, help="a machine version ID")
    elif flag == "status":
        p.add_argument("--status", "-s", required=True, choices=("running", "paused"))
    elif flag == "name":
        p.add_argument("--name", "-n", required=True, help="a name to recognise the key by")
    elif flag == "use":
        p.add_argument("--use", choices=("production", "ci"), help="production: instances; ci: deploys")
    elif flag == "scopes":
        p.add_argument("--scopes", nargs="+", help="explicit scopes instead of --use's")
    elif flag == "key":
        p.add_argument("--key", "-k", required=True, help="the key ID (sbk_...)")
    elif flag == "secret":
        p.add_argument("--secret", "-s", required=True, help="the key's secret (sbsec_...)")
    elif flag == "claims":
        p.add_argument("--claims", "-c", required=True, type=_json_arg, help="the authContext (JSON object)")
    elif flag == "count":
        p.add_argument("--count", type=int, help="stop after this many updates (default: until interrupted)")
    elif flag == "local":
        p.set_defaults(local_only=True)
    elif flag == "from":
        p.add_argument("--from", "-f", dest="since", required=True, help="an ISO-8601 instant (exclusive)")
    elif flag == "event":
        p.add_argument("--event", "-e", required=True, type=_event_arg, help="an event type, or a JSON event object")
    elif flag == "auth":
        p.add_argument(
            "--auth-context", type=_json_arg, help="act as an end user with this authContext (JSON; admin tokens only)"
        )
    else:  # pragma: no cover - a typo in _TABLE
        raise AssertionError(f"unknown flag kind {flag}")


def add_client_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register the client command groups on the ``statehost`` parser's subcommands."""
    groups = {}
    for name, help_text in _GROUPS.items():
        parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
        groups[name] = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")
    for group, name, help_text, example, handler, flags in _TABLE:
        command = _command(groups[group], name, help_text, example, handler)
        for flag in flags:
            _flags(command, flag)


# ---- running ----------------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> tuple[str, str | None, str | None]:
    path: Path = args.config or config_path()
    saved: dict[str, Any] = {}
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except ValueError as exc:
            raise UsageError(f"{path}: not JSON ({exc}); run statehost login again") from None
    url = args.api_url or os.environ.get("STATEHOST_API_URL") or saved.get("apiUrl") or DEFAULT_API_URL
    token = args.token or os.environ.get("STATEHOST_TOKEN") or saved.get("token")
    org = args.org or os.environ.get("STATEHOST_ORG") or saved.get("orgId")
    return url, token, org


def _render(result: Any) -> str:
    if result is None:
        return "ok"
    if isinstance(result, list):
        if not result:
            return "(none)"
        rows = [
            {k: _cell(v) for k, v in item.items()} if isinstance(item, dict) else {"": _cell(item)} for item in result
        ]
        columns = list(dict.fromkeys(k for row in rows for k in row))
        widths = {c: max(len(c), *(len(row.get(c, "")) for row in rows)) for c in columns}
        lines = ["  ".join(c.ljust(widths[c]) for c in columns).rstrip()]
        lines += ["  ".join(row.get(c, "").ljust(widths[c]) for c in columns).rstrip() for row in rows]
        return "\n".join(lines)
    if isinstance(result, dict):
        return "\n".join(f"{k}: {_cell(v)}" for k, v in result.items())
    return str(result)


def _cell(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


async def _call(args: argparse.Namespace) -> Any:
    url, token, org = _settings(args)
    if getattr(args, "local_only", False):
        return await args.client_handler(StatehostClient(url), args)
    if not token:
        raise UsageError("no credentials: run `statehost login`, or pass --token or set STATEHOST_TOKEN")
    act_as = getattr(args, "auth_context", None)
    async with StatehostClient(url, token, org_id=org, act_as=act_as) as client:
        try:
            result = await args.client_handler(client, args)
            if hasattr(result, "__aiter__"):
                return await _stream(result, args)
            return result
        except aiohttp.ClientConnectionError as exc:
            raise UsageError(f"cannot reach the API at {url}: {exc}") from None


_STREAMED = object()


async def _stream(items: AsyncIterator[Any], args: argparse.Namespace) -> object:
    """Print each item as it arrives: one JSON line each with --json, else ``key: value`` blocks."""
    seen = 0
    try:
        async for item in items:
            print(json.dumps(item) if args.json else _render(item) + "\n", flush=True)
            seen += 1
            if args.count is not None and seen >= args.count:
                break
    finally:
        await items.aclose()  # type: ignore[attr-defined]
    return _STREAMED


def run_client_command(args: argparse.Namespace) -> int:
    try:
        result = asyncio.run(_call(args))
    except KeyboardInterrupt:
        return 130
    except UsageError as exc:
        print(f"statehost: {exc}", file=sys.stderr)
        return 2
    except StatehostError as exc:
        print(f"statehost: {exc}", file=sys.stderr)  # names the status and the server's code
        return 1
    if result is not _STREAMED:
        print(json.dumps(result, indent=2) if args.json else _render(result))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The client commands alone (``python -m client``); ``statehost`` offers the same."""
    parser = argparse.ArgumentParser(prog="statehost")
    add_client_commands(parser.add_subparsers(dest="command", required=True))
    return run_client_command(parser.parse_args(argv))
