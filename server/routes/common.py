"""What every route module shares: the app's keys, body parsing, names, callers, responses."""

from __future__ import annotations

import datetime
import json
import re
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .. import jsoncodec
from ..auth import Authenticator, Caller
from ..config import Settings
from ..errors import InvalidParameter
from ..instances import InstanceService
from ..services import InstanceAdmin, LogService, MachineService, OrgService, ProviderService
from ..subscriptions import Hub

__all__ = [
    "AUTH",
    "HUB",
    "INSTANCES",
    "INSTANCE_ADMIN",
    "LOGS",
    "MACHINES",
    "ORGS",
    "PROVIDERS",
    "SETTINGS",
    "caller",
    "form_body",
    "iso",
    "json_body",
    "name",
    "ok",
    "page_response",
    "public_base",
]

# One key per service; server/app.py builds each once and registers it. Routes reach nothing else.
SETTINGS = web.AppKey("settings", Settings)
AUTH = web.AppKey("auth", Authenticator)
"""Who a bearer token names (server.auth.Authenticator)."""
ORGS = web.AppKey("orgs", OrgService)
MACHINES = web.AppKey("machines", MachineService)
INSTANCES = web.AppKey("instances", InstanceService)
"""Events, reads and the HTTP API mapper's exports (server.instances.InstanceService)."""
INSTANCE_ADMIN = web.AppKey("instance_admin", InstanceAdmin)
PROVIDERS = web.AppKey("providers", ProviderService)
LOGS = web.AppKey("logs", LogService)
HUB = web.AppKey("hub", Hub)
"""Real-time subscriptions (server.subscriptions.Hub)."""

CALLER = web.RequestKey("caller", Caller)

NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")


def iso(ms: int) -> str:
    """JavaScript ``toISOString()`` form: 2023-08-19T16:05:30.532Z."""
    moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def name(value: Any, parameter: str) -> str:
    if not isinstance(value, str) or not NAME.match(value):
        raise InvalidParameter(f"{parameter} must match ^[a-zA-Z0-9_-]{{1,128}}$", parameter=parameter)
    return value


async def json_body(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    """The JSON object body. An empty body (with or without a JSON content type) is {} when allowed."""
    raw = await request.read()
    if not raw.strip():
        if required:
            raise InvalidParameter("the request needs a JSON object body", parameter="body")
        return {}
    try:
        body = jsoncodec.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting too deep
        raise InvalidParameter(f"the body is not valid JSON: {exc}", parameter="body") from None
    if not isinstance(body, dict):
        raise InvalidParameter("the body must be a JSON object", parameter="body")
    if _SURROGATE_ESCAPE.search(raw):
        _refuse_lone_surrogates(body)
    return body


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _refuse_lone_surrogates(body: dict[str, Any]) -> None:
    """JSON may escape a lone UTF-16 surrogate (``"\\ud800"``), which Python parses into a string
    that no UTF-8 store, nor the sandbox, can hold: a 400 naming the top-level field it is in.
    (An escaped pair, such as an emoji's, parses into one character and passes.)"""
    for key, value in body.items():
        try:
            json.dumps({key: value}, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise InvalidParameter(
                f"{key if key.isprintable() and key.isascii() else 'a field'} holds a lone UTF-16 surrogate "
                "(an escape in \\ud800-\\udfff without its pair); strings must be valid Unicode",
                parameter=key.encode("utf-8", "replace").decode(),
            ) from None


MALFORMED = (ValueError, HttpProcessingError)
"""What aiohttp raises on a form or multipart body it cannot parse: a multipart content type without
a boundary (ValueError), bytes that are not UTF-8 (UnicodeDecodeError, a ValueError), a part header
that is not valid HTTP (InvalidHeader, an HttpProcessingError). Each is the client's fault: a 400."""


def malformed(exc: Exception, what: str) -> InvalidParameter:
    return InvalidParameter(f"{what} could not be parsed: {exc}".replace("\n", " ").strip(), parameter="body")


async def form_body(request: web.Request) -> dict[str, str]:
    """The string fields of a form body (urlencoded or multipart); a 400 naming the problem when it
    cannot be parsed."""
    try:
        form = await request.post()
    except MALFORMED as exc:
        raise malformed(exc, f"the {request.content_type} body") from None
    return {k: v for k, v in form.items() if isinstance(v, str)}


def only(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidParameter(f"unknown field {unknown[0]!r}", parameter=unknown[0])


async def caller(request: web.Request) -> Caller:
    if CALLER in request:
        return request[CALLER]
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else None
    found = await request.app[AUTH].caller(
        token,
        org_header=request.headers.get("x-statebacked-org-id") or None,
        act_header=request.headers.get("x-statebacked-act"),
    )
    request[CALLER] = found
    return found


def ok(body: Any) -> web.Response:
    """A 200 always carries JSON (an empty 200 crashes the official client)."""
    return web.Response(body=jsoncodec.dumps_bytes(body), content_type="application/json", charset="utf-8")


def page_response(key: str, items: list[Any], cursor: str | None) -> web.Response:
    body: dict[str, Any] = {key: items}
    if cursor is not None:
        body["cursor"] = cursor
    return ok(body)


def public_base(request: web.Request) -> str:
    """The URL clients reach this server at (for absolute upload URLs), without a trailing slash."""
    configured = request.app[SETTINGS].public_url
    if configured:
        return configured.rstrip("/")
    return f"{request.scheme}://{request.host}"
