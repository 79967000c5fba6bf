"""The HTTP API mapper (wire-api 3.16): webhooks into machines.

A machine version may export ``httpApiMapper = { <slug>: { handler, responseMapper } }``. Any
request to ``/http-api/{orgId}/machines/{machine}/{slug}`` runs, in the sandbox of the machine's
current version:

1. ``handler({ body, headers, method, query })`` → ``{ machineInstanceName, event, authContext,
   initialContext? }`` (it may be async, and may use crypto.subtle to check a signature). If it
   throws, the request fails (400 ``http-handler-error``) before anything happens;
2. the instance is created when it is missing and ``initialContext`` was given (else 404);
3. the event is delivered with ``authContext`` (so ``allowWrite`` decides), and the instance settles;
4. ``responseMapper({ state, context, result })`` → ``{ statusCode, headers?, body? }`` is the answer;
   if it is missing, throws or returns something else, the answer is 200 ``{"ok": true}``.

There is no bearer token on these requests: the machine's handler is the authentication (the URL
names a public org id). Only machines that export ``httpApiMapper`` answer; docs/threat-model.md.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from aiohttp import web

from ..errors import ApiError, Conflict, InvalidParameter, MachineError, NotFound
from .common import INSTANCES, NAME

routes = web.RouteTableDef()

MAX_BODY = 1_000_000
_HOP_BY_HOP = frozenset(
    {"connection", "content-length", "transfer-encoding", "keep-alive", "upgrade", "te", "trailer", "content-encoding"}
)


class HandlerError(ApiError):
    status, code = 400, "http-handler-error"


METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
PATH = "/http-api/{org}/machines/{machine}/{slug}"


async def http_api(request: web.Request) -> web.StreamResponse:
    instances = request.app[INSTANCES]
    org, machine, slug = (request.match_info[k] for k in ("org", "machine", "slug"))
    if not (NAME.match(machine) and NAME.match(slug)):
        raise NotFound("no such HTTP API")
    mapper = ("httpApiMapper", slug)
    arg = {
        "body": await _body(request),
        "headers": {k.lower(): v for k, v in request.headers.items()},
        "method": request.method,
        "query": dict(request.query),
    }
    mapped = await instances.invoke_export(org, machine, (*mapper, "handler"), arg)
    if mapped.missing:
        raise NotFound(f"machine {machine!r} has no HTTP API {slug!r} (httpApiMapper.{slug}.handler)")
    if not mapped.ok:
        raise HandlerError(f"the machine's HTTP handler failed: {mapped.error}")
    instance, event, auth, initial = _mapping(mapped.value, slug)
    try:
        state = await instances.send_event(org, machine, instance, event, auth)
    except NotFound:
        if initial is None:
            raise NotFound(f"instance {instance!r} not found (the handler gave no initialContext)") from None
        with contextlib.suppress(Conflict):  # created meanwhile by a concurrent request: deliver to it
            await instances.create(org, machine, instance, context=initial, auth_context=auth)
        state = await instances.send_event(org, machine, instance, event, auth)
    reply = await instances.invoke_export(
        org,
        machine,
        (*mapper, "responseMapper"),
        {"state": state.state, "context": state.context, "result": None},
        instance_name=instance,
    )
    return _response(reply.value) if reply.ok else web.json_response({"ok": True})


async def _body(request: web.Request) -> Any:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise InvalidParameter(f"the body is larger than {MAX_BODY} bytes", parameter="body")
    raw = await request.read()  # the whole body (the app caps every body at 11 MB)
    if len(raw) > MAX_BODY:
        raise InvalidParameter(f"the body is larger than {MAX_BODY} bytes", parameter="body")
    text = raw.decode("utf-8", errors="replace")
    if request.content_type == "application/json" and text.strip():
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            raise InvalidParameter("the body is not JSON", parameter="body") from None
    return text


def _mapping(value: Any, slug: str) -> tuple[str, dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """The handler's answer, checked: a fault of the machine's code is a 422 naming it."""
    where = f"httpApiMapper.{slug}.handler"
    if not isinstance(value, dict):
        raise MachineError(f"{where} must return an object, not {type(value).__name__}")
    instance = value.get("machineInstanceName")
    if not isinstance(instance, str) or not NAME.match(instance):
        raise MachineError(f"{where} returned machineInstanceName {instance!r}; it must match ^[a-zA-Z0-9_-]{{1,128}}$")
    event = value.get("event")
    if isinstance(event, str):
        event = {"type": event}
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise MachineError(f"{where} must return an event: a type string or an object with a string type")
    auth = value.get("authContext", {})
    if not isinstance(auth, dict):
        raise MachineError(f"{where} returned an authContext that is not an object")
    initial = value.get("initialContext")
    if initial is not None and not isinstance(initial, dict):
        raise MachineError(f"{where} returned an initialContext that is not an object")
    return instance, event, auth, initial


def _response(value: Any) -> web.Response:
    if not isinstance(value, dict):
        return web.json_response({"ok": True})
    status = value.get("statusCode", 200)
    if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 599:
        return web.json_response({"ok": True})
    headers = value.get("headers") or {}
    clean = (
        {str(k): str(v) for k, v in headers.items() if str(k).lower() not in _HOP_BY_HOP and "\n" not in str(v)}
        if isinstance(headers, dict)
        else {}
    )
    body = value.get("body")
    if body is None:
        return web.Response(status=status, headers=clean)
    if isinstance(body, str):
        clean.setdefault("content-type", "text/plain; charset=utf-8")
        return web.Response(status=status, headers=clean, text=body)
    clean.setdefault("content-type", "application/json")
    return web.Response(status=status, headers=clean, text=json.dumps(body))


for _method in METHODS:
    routes.route(_method, PATH)(http_api)
