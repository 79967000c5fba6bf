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
import base64
import contextlib
import datetime
import itertools
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from .api import StatehostClient
from .config import ConfigError, config_path, load_config, set_default_org
from .errors import StatehostError
from .tokens import sign_token

__all__ = ["CLIENT_COMMANDS", "add_client_commands", "run_client_command"]

DEFAULT_API_URL = "http://127.0.0.1:8787"
Handler = Callable[[StatehostClient, argparse.Namespace], Awaitable[Any]]


class UsageError(Exception):
    """A problem with how the command was called (exit 2)."""


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
            index_selectors=a.index_selectors,
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
        index_selectors=a.index_selectors,
    )
    return {"machineVersionId": version}


async def _migrations_create(c: StatehostClient, a: argparse.Namespace) -> Any:
    path = a.node or a.js
    migration = await c.migrations.create(
        a.machine, a.from_version, a.to_version, _read_source(path), filename=path.name
    )
    return {"machineVersionMigrationId": migration}


async def _instances_create(c: StatehostClient, a: argparse.Namespace) -> Any:
    return await c.instances.create(a.machine, a.instance, context=a.context, version_id=a.version)


async def _send_event(c: StatehostClient, a: argparse.Namespace) -> Any:
    return await c.instances.send_event(a.machine, a.instance, a.event)


async def _generate_token(c: StatehostClient, a: argparse.Namespace) -> Any:
    """Local signing, as smply's tokens generate: 24 hours, issuer https://cli.statebacked.dev/."""
    if not isinstance(a.claims, dict):
        raise UsageError("--claims must be a JSON object (it becomes the authContext)")
    return {"token": sign_token(a.key, a.secret, a.claims, issuer="https://cli.statebacked.dev/")}


def _instant_arg(text: str) -> datetime.datetime:
    """An ISO-8601 instant, ``now``, or how long ago: ``15m``, ``1h``, ``2d`` (``--from=-1h``, as
    smply writes it, means the same; argparse would read a bare ``-1h`` as a flag)."""
    relative = re.fullmatch(r"-?(\d+)([smhd])", text.strip())
    now = datetime.datetime.now(datetime.UTC)
    if relative:
        return now - datetime.timedelta(seconds=int(relative[1]) * _UNIT_SECONDS[relative[2]])
    if text.strip() == "now":
        return now
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an instant: use ISO-8601 (2026-01-31T12:00:00Z), now, or how long ago: 15m, 1h, 2d"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


async def _logs_get(c: StatehostClient, a: argparse.Namespace) -> Any:
    page = await c.logs.retrieve(a.since, to=a.to, machine=a.machine, instance=a.instance, version=a.version)
    return page if a.json else [_LogLine(entry) for entry in page["logs"]]


async def _watch(c: StatehostClient, a: argparse.Namespace) -> Any:
    """Live updates: the current state, then one per committed transition (reconnecting)."""
    return c.instances.subscribe(a.machine, a.instance)


async def _logs_watch(c: StatehostClient, a: argparse.Namespace) -> Any:
    async def lines() -> AsyncIterator[Any]:
        watch = c.logs.watch(a.since, machine=a.machine, instance=a.instance, version=a.version, idle_s=a.poll)
        try:
            async for entry in watch:
                yield entry if a.json else _LogLine(entry)
        finally:
            await watch.aclose()  # type: ignore[attr-defined]

    return lines()


class _LogLine(dict[str, Any]):
    """A log entry that prints as one line (``--json`` prints the entry itself)."""


async def _instances_query(c: StatehostClient, a: argparse.Namespace) -> Any:
    if (a.op is None) != (a.value is None):
        raise UsageError("--op and --value go together")
    return await c.instances.query(
        a.machine, a.index, op=a.op, value=a.value, descending=a.sort == "desc", limit=a.limit
    )


async def _idp_upsert(c: StatehostClient, a: argparse.Namespace) -> Any:
    if not (a.audience or a.issuer):
        raise UsageError("give --audience, --issuer or both: they identify the identity provider")
    key = _b64url(a.key.encode()) if a.key is not None else a.base64_key
    await c.identity_providers.upsert(
        algs=a.algorithm, mapping=a.mapping, aud=a.audience, iss=a.issuer, key=key, jwks_url=a.jwks_url
    )


async def _idp_supabase(c: StatehostClient, a: argparse.Namespace) -> Any:
    await c.identity_providers.upsert(
        algs=["HS256"],
        mapping=a.mapping,
        aud="authenticated",
        iss=f"https://{a.project}.supabase.co/auth/v1",
        key=_b64url(a.secret.encode()),
    )


async def _idp_auth0(c: StatehostClient, a: argparse.Namespace) -> Any:
    domain = a.domain.removeprefix("https://").rstrip("/")
    await c.identity_providers.upsert(
        algs=["RS256"],
        mapping=a.mapping,
        aud=f"https://{domain}/api/v2/",
        iss=f"https://{domain}/",
        jwks_url=f"https://{domain}/.well-known/jwks.json",
    )


async def _idp_cognito(c: StatehostClient, a: argparse.Namespace) -> Any:
    issuer = f"https://cognito-idp.{a.region}.amazonaws.com/{a.user_pool_id}"
    await c.identity_providers.upsert(
        algs=["RS256"], mapping=a.mapping, iss=issuer, jwks_url=f"{issuer}/.well-known/jwks.json"
    )


async def _idp_delete(c: StatehostClient, a: argparse.Namespace) -> Any:
    if not (a.audience or a.issuer):
        raise UsageError("give --audience, --issuer or both: they identify the identity provider")
    await c.identity_providers.delete(aud=a.audience, iss=a.issuer)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def _orgs_create(c: StatehostClient, a: argparse.Namespace) -> Any:
    return {"id": await c.orgs.create(a.name)}


async def _default_org_get(c: StatehostClient, a: argparse.Namespace) -> Any:
    return {"orgId": load_config(a.config or config_path()).get("orgId")}


async def _default_org_set(c: StatehostClient, a: argparse.Namespace) -> Any:
    if not a.org:
        raise UsageError("give the org to use: --org org_...")
    set_default_org(a.config or config_path(), a.org)
    return {"orgId": a.org}


async def _done(what: Awaitable[None]) -> Any:
    """For calls that answer nothing (204): the command prints ``ok``."""
    await what
    return None


# Each command: group, name, what it does, an example, its handler, and the flags it takes beyond
# the common ones (named in _FLAGS below; a trailing "?" makes a required flag optional).
_M = "statehost machines"
_V = "statehost machine-versions"
_I = "statehost instances"
_K = "statehost keys"
_P = "statehost identity-providers"
_T = "statehost token-providers"
_MAP = '--mapping \'{"sub.$": "$.sub"}\''
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
    ("migrations", "create", "upload a migration between two versions (upgradeState, upgradeContext)",
     "statehost migrations create -m toggle --from ver_a --to ver_b --node migration.ts", _migrations_create,
     ("machine", "from-version", "to-version", "module")),
    ("instances", "create", "create an instance", f"{_I} create -m toggle -i user-1 --context '{{\"n\": 1}}'",
     _instances_create, ("machine", "instance", "context", "version", "auth")),
    ("instances", "get", "show an instance's state", f"{_I} get -m toggle -i user-1",
     lambda c, a: c.instances.get(a.machine, a.instance), ("machine", "instance", "auth")),
    ("instances", "list", "list a machine's instances", f"{_I} list -m toggle",
     lambda c, a: c.instances.list(a.machine), ("machine",)),
    ("instances", "query", "find instances by an index value",
     f"{_I} query -m toggle --index email --op eq --value a@example.com", _instances_query,
     ("machine", "index!", "op", "value", "sort", "limit")),
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
    ("logs", "get", "machine logs from an instant (ISO-8601, or how long ago: 15m, 1h, 2d)",
     "statehost logs get --from 1h -m toggle", _logs_get, ("from", "to", "machine?", "instance?", "version?")),
    ("logs", "watch", "follow machine logs as they are written",
     "statehost logs watch --from 5m -m toggle", _logs_watch,
     ("from", "machine?", "instance?", "version?", "poll", "count")),
    ("identity-providers", "upsert", "trust an identity provider's tokens for token exchange",
     f"{_P} upsert --issuer https://idp.example.com/ --algorithm HS256 --key s3cret {_MAP}", _idp_upsert,
     ("audience", "issuer", "algorithm", "mapping", "idp-key")),
    ("identity-providers", "upsert-supabase", "trust a Supabase project's tokens",
     f"{_P} upsert-supabase --project abcd --secret jwt-secret {_MAP}", _idp_supabase,
     ("project", "jwt-secret", "mapping")),
    ("identity-providers", "upsert-auth0", "trust an Auth0 tenant's tokens",
     f"{_P} upsert-auth0 --domain example.us.auth0.com {_MAP}", _idp_auth0, ("domain", "mapping")),
    ("identity-providers", "upsert-cognito", "trust an AWS Cognito user pool's tokens",
     f"{_P} upsert-cognito --user-pool-id us-east-1_abc --region us-east-1 {_MAP}", _idp_cognito,
     ("user-pool-id", "region", "mapping")),
    ("identity-providers", "list", "list identity providers", f"{_P} list",
     lambda c, a: c.identity_providers.list(), ()),
    ("identity-providers", "delete", "stop trusting an identity provider",
     f"{_P} delete --issuer https://idp.example.com/", _idp_delete, ("audience", "issuer")),
    ("token-providers", "upsert", "issue statehost tokens for a service, signed with a key",
     f"{_T} upsert --service my-app --key sbk_x {_MAP}",
     lambda c, a: _done(c.token_providers.upsert(a.service, a.key, a.mapping)), ("service", "key", "mapping")),
    ("token-providers", "list", "list token providers", f"{_T} list", lambda c, a: c.token_providers.list(), ()),
    ("token-providers", "delete", "delete a token provider", f"{_T} delete --service my-app",
     lambda c, a: _done(c.token_providers.delete(a.service)), ("service",)),
    ("orgs", "list", "the orgs you belong to", "statehost orgs list", lambda c, a: c.orgs.list(), ()),
    ("orgs", "create", "create an org", "statehost orgs create --name acme", _orgs_create, ("name",)),
)  # fmt: skip
_GROUPS = {"machines": "machine definitions", "machine-versions": "versions of a machine's code",
           "instances": "machine instances", "keys": "API keys (for signing end-user tokens)",
           "migrations": "migrations of running instances between versions",
           "tokens": "end-user tokens", "logs": "machine logs", "orgs": "organizations",
           "identity-providers": "identity providers whose tokens can be exchanged for statehost tokens",
           "token-providers": "how exchanged tokens are issued"}  # fmt: skip
CLIENT_COMMANDS = frozenset(_GROUPS)

# Flag kinds: the flags, then argparse's keyword arguments. Source and idp-key are groups (below).
_FLAGS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "machine": (("--machine", "-m"), {"required": True, "help": "the machine's slug"}),
    "instance": (("--instance", "-i"), {"required": True, "help": "the instance's name"}),
    "index": (("--index",), {"action": "append", "help": "an index name (repeatable)"}),
    "index!": (("--index",), {"required": True, "help": "the index to query"}),
    "op": (("--op",), {"choices": ("eq", "ne", "gt", "gte", "lt", "lte"), "help": "compare with --value"}),
    "value": (("--value",), {"help": "the index value to compare with"}),
    "sort": (("--sort",), {"choices": ("asc", "desc"), "default": "asc", "help": "index order (default asc)"}),
    "limit": (("--limit",), {"type": int, "help": "at most this many instances"}),
    "make-current": (("--make-current",), {"action": "store_true", "help": "new instances start on this version"}),
    "context": (("--context",), {"type": _json_arg, "help": "initial context (JSON)"}),
    "version": (("--version",), {"help": "a machine version ID (default: the current version)"}),
    "version?": (("--version", "-v"), {"help": "only this machine version (ver_...)"}),
    "version!": (("--version", "-v"), {"required": True, "help": "a machine version ID"}),
    "status": (("--status", "-s"), {"required": True, "choices": ("running", "paused")}),
    "name": (("--name", "-n"), {"required": True, "help": "a name to recognise it by"}),
    "use": (("--use",), {"choices": ("production", "ci"), "help": "production: instances; ci: deploys"}),
    "scopes": (("--scopes",), {"nargs": "+", "help": "explicit scopes instead of --use's"}),
    "key": (("--key", "-k"), {"required": True, "help": "the key ID (sbk_...)"}),
    "secret": (("--secret", "-s"), {"required": True, "help": "the key's secret (sbsec_...)"}),
    "claims": (("--claims", "-c"), {"required": True, "type": _json_arg, "help": "the authContext (JSON object)"}),
    "count": (("--count",), {"type": int, "help": "stop after this many (default: until interrupted)"}),
    "from": (("--from", "-f"), {"dest": "since", "required": True, "type": _instant_arg,
                                "help": "from this instant, exclusive: ISO-8601, or how long ago (15m, 1h, 2d)"}),
    "from-version": (("--from", "-f"), {"dest": "from_version", "required": True, "help": "the version migrated from"}),
    "to-version": (("--to", "-t"), {"dest": "to_version", "required": True, "help": "the version migrated to"}),
    "to": (("--to",), {"type": _instant_arg, "help": "up to this instant (same forms as --from)"}),
    "poll": (("--poll",), {"type": float, "default": 2.0, "help": "seconds between polls when idle (default 2)"}),
    "event": (("--event", "-e"), {"required": True, "type": _event_arg,
                                  "help": "an event type, or a JSON event object"}),
    "auth": (("--auth-context",), {"type": _json_arg,
                                   "help": "act as an end user with this authContext (JSON; admin tokens only)"}),
    "audience": (("--audience", "-a"), {"help": "the tokens' aud claim"}),
    "issuer": (("--issuer",), {"help": "the tokens' iss claim"}),
    "algorithm": (("--algorithm", "-l"), {"required": True, "nargs": "+",
                                          "choices": ("HS256", "HS384", "HS512", "PS256", "PS384", "PS512", "RS256",
                                                      "RS384", "RS512", "ES256", "ES384", "ES512", "EdDSA"),
                                          "help": "the signing algorithms to accept"}),
    "mapping": (("--mapping",), {"required": True, "type": _json_arg,
                                 "help": "how claims become the authContext (JSON; docs/compatibility.md)"}),
    "project": (("--project", "-p"), {"required": True, "help": "the Supabase project ID"}),
    "jwt-secret": (("--secret", "-s"), {"required": True, "help": "the Supabase project's JWT secret"}),
    "domain": (("--domain", "-d"), {"required": True, "help": "the Auth0 domain"}),
    "user-pool-id": (("--user-pool-id", "-u"), {"required": True, "help": "the Cognito user pool ID"}),
    "region": (("--region", "-r"), {"required": True, "help": "the Cognito user pool's AWS region"}),
    "service": (("--service", "-s"), {"required": True, "help": "the service name clients exchange tokens for"}),
}  # fmt: skip


def _flags(p: argparse.ArgumentParser, flag: str) -> None:
    if flag in ("source", "source?", "module"):
        source = p.add_mutually_exclusive_group(required=flag != "source?")
        source.add_argument("--node", type=Path, help="a TypeScript/JavaScript module; the server bundles it")
        source.add_argument("--js", type=Path, help="a JavaScript module or bundle")
        if flag == "module":
            return
        p.add_argument("--xstate", type=int, choices=(4, 5), help="the XState major (default: from the imports)")
        p.add_argument("--version-reference", help="your reference for this version, e.g. a git commit")
        p.add_argument(
            "--index-selectors",
            type=_json_arg,
            help='JSON: index name -> JSONPath into the context, e.g. \'{"email": "$.email"}\'',
        )
    elif flag == "idp-key":
        key = p.add_mutually_exclusive_group(required=True)
        key.add_argument("--key", "-k", help="the shared secret (UTF-8), for HS* algorithms")
        key.add_argument("--base64-key", "-b", help="the key, base64url-encoded (a secret, PEM or JWK)")
        key.add_argument("--jwks-url", "-j", help="where the provider publishes its public keys")
    elif flag == "local":
        p.set_defaults(local_only=True)
    else:
        names, kwargs = _FLAGS.get(flag) or _FLAGS[flag.rstrip("?")]
        p.add_argument(*names, **({**kwargs, "required": False} if flag.endswith("?") else kwargs))


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
    # smply's ``orgs default get|set``: local, one level deeper.
    default = groups["orgs"].add_parser("default", help="the org used when none is given (local)")
    nested = default.add_subparsers(dest="default_command", required=True, metavar="COMMAND")
    _command(nested, "get", "show the default org", "statehost orgs default get", _default_org_get)
    setter = _command(nested, "set", "set the default org", "statehost orgs default set --org org_x", _default_org_set)
    for command in (nested.choices["get"], setter):
        command.set_defaults(local_only=True)


# ---- output -----------------------------------------------------------------------------------


class _Style:
    """ANSI colour when the stream is a terminal (``NO_COLOR`` turns it off, ``FORCE_COLOR`` on)."""

    def __init__(self, stream: TextIO) -> None:
        forced = bool(os.environ.get("FORCE_COLOR"))
        self.on = forced or (stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb")

    def __call__(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.on else text


_BOLD, _DIM, _RED, _YELLOW, _CYAN = "1", "2", "31", "33", "36"


def _render(result: Any, style: _Style) -> str:
    if result is None:
        return style("ok", _BOLD)
    if isinstance(result, list):
        if not result:
            return style("(none)", _DIM)
        if all(isinstance(item, _LogLine) for item in result):
            return "\n".join(_render_log(item, style) for item in result)
        rows = [
            {k: _cell(v) for k, v in item.items()} if isinstance(item, dict) else {"": _cell(item)} for item in result
        ]
        columns = list(dict.fromkeys(k for row in rows for k in row))
        widths = {c: max(len(c), *(len(row.get(c, "")) for row in rows)) for c in columns}
        header = "  ".join(c.ljust(widths[c]) for c in columns).rstrip()
        lines = [style(header, _BOLD)]
        lines += ["  ".join(row.get(c, "").ljust(widths[c]) for c in columns).rstrip() for row in rows]
        return "\n".join(lines)
    if isinstance(result, _LogLine):
        return _render_log(result, style)
    if isinstance(result, dict):
        return "\n".join(f"{style(k + ':', _CYAN)} {_cell(v)}" for k, v in result.items())
    return str(result)


def _render_log(entry: dict[str, Any], style: _Style) -> str:
    where = f"{entry.get('machineName')}/{entry.get('instanceName')}"
    stream = entry.get("outputType", "stdout")
    text = str(entry.get("log", "")).rstrip("\n")
    stream_style = _YELLOW if stream == "stderr" else _DIM
    return f"{style(str(entry.get('timestamp')), _DIM)} {where} {style(stream, stream_style)} {text}"


def _cell(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


class _Progress:
    """A spinner with the elapsed time on stderr while a call is slow (terminals only; it appears
    after ``delay`` seconds, so quick commands print nothing extra, and erases itself)."""

    FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

    def __init__(self, label: str, stream: TextIO | None = None, delay: float = 0.3, interval: float = 0.1) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.delay = delay
        self.interval = interval
        self.task: asyncio.Task[None] | None = None
        self.drawn = False

    async def __aenter__(self) -> _Progress:
        if self.stream.isatty():
            self.task = asyncio.create_task(self._spin())
        return self

    async def _spin(self) -> None:
        started = time.monotonic()
        await asyncio.sleep(self.delay)
        for frame in itertools.cycle(self.FRAMES):
            self.stream.write(f"\r{frame} {self.label} {time.monotonic() - started:.1f}s")
            self.stream.flush()
            self.drawn = True
            await asyncio.sleep(self.interval)

    async def __aexit__(self, *exc: object) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()


# ---- running ----------------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> tuple[str, str | None, str | None]:
    try:
        saved = load_config(args.config or config_path())
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    url = args.api_url or os.environ.get("STATEHOST_API_URL") or saved.get("apiUrl") or DEFAULT_API_URL
    token = args.token or os.environ.get("STATEHOST_TOKEN") or saved.get("token")
    org = args.org or os.environ.get("STATEHOST_ORG") or saved.get("orgId")
    return url, token, org


def _label(args: argparse.Namespace) -> str:
    path = getattr(args, "node", None) or getattr(args, "js", None)
    if path is not None:
        return f"bundling and uploading {path.name}"
    return f"{args.command} {args.subcommand}"


async def _call(args: argparse.Namespace) -> Any:
    url, token, org = _settings(args)
    if getattr(args, "local_only", False):
        return await args.client_handler(StatehostClient(url), args)
    if not token:
        raise UsageError("no credentials: run `statehost login`, or pass --token or set STATEHOST_TOKEN")
    act_as = getattr(args, "auth_context", None)
    async with StatehostClient(url, token, org_id=org, act_as=act_as) as client:
        try:
            async with _Progress(_label(args)):
                result = await args.client_handler(client, args)
            if hasattr(result, "__aiter__"):
                return await _stream(result, args)
            return result
        except aiohttp.ClientConnectionError as exc:
            raise UsageError(f"cannot reach the API at {url}: {exc}") from None


_STREAMED = object()


async def _stream(items: AsyncIterator[Any], args: argparse.Namespace) -> object:
    """Print each item as it arrives: one JSON line each with --json, else as a person reads it
    (``key: value`` blocks for states, one line per log entry); a spinner until the first one."""
    style = _Style(sys.stdout)
    count = getattr(args, "count", None)
    seen = 0
    iterator = aiter(items)
    try:
        async with _Progress("waiting for the first update"):
            item = await anext(iterator, _STREAMED)
        while item is not _STREAMED:
            if args.json:
                print(json.dumps(item), flush=True)
            else:
                print(_render(item, style) + ("" if isinstance(item, _LogLine) else "\n"), flush=True)
            seen += 1
            if count is not None and seen >= count:
                break
            item = await anext(iterator, _STREAMED)
    finally:
        await items.aclose()  # type: ignore[attr-defined]
    return _STREAMED


def run_client_command(args: argparse.Namespace) -> int:
    try:
        result = asyncio.run(_call(args))
    except KeyboardInterrupt:
        return 130
    except (UsageError, StatehostError) as exc:
        # 2: how the command was called; 1: the server refused (the message names status and code).
        print(f"{_Style(sys.stderr)('statehost:', _RED)} {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
    if result is not _STREAMED:
        print(json.dumps(result, indent=2) if args.json else _render(result, _Style(sys.stdout)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The client commands alone (``python -m client``); ``statehost`` offers the same."""
    parser = argparse.ArgumentParser(prog="statehost")
    add_client_commands(parser.add_subparsers(dest="command", required=True))
    return run_client_command(parser.parse_args(argv))
