"""The aiohttp application: State Backed's wire API over the durable engine (wire-api sections 1-3).

``create_app(settings)`` builds it; the engine starts and stops with the app (``cleanup_ctx``).
Every response carries CORS headers and every error is ``{error, code, parameter?}`` with the
status the official client expects; nothing ever answers with a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from runtime import Bundler, Clock

from . import indexes as instance_indexes
from .auth import Authenticator
from .bootstrap import bootstrap
from .cluster import CommitFeed
from .config import Settings
from .db import storage_error
from .engine import DurableEngine
from .errors import ApiError
from .exchange import JwksCache
from .openapi import document
from .revocation import Revocations
from .routes import dashboard, http_api, indexes, instances, logs, machines, orgs, providers, realtime
from .routes.common import (
    AUTH,
    HUB,
    INSTANCE_ADMIN,
    INSTANCES,
    LOGS,
    MACHINES,
    ORGS,
    PROVIDERS,
    SETTINGS,
)
from .services import InstanceAdmin, LogService, MachineService, OrgService, ProviderService
from .subscriptions import Hub

__all__ = ["ENGINE", "FEED", "REVOCATIONS", "SECRETS", "create_app"]

ENGINE = web.AppKey("engine", DurableEngine)
"""The node itself: its start and stop (here), /health, and tests. Routes never read it: each
reaches only the services registered under the keys of server/routes/common.py."""

SECRETS = web.AppKey("secrets", dict)
"""Server secrets loaded at start: {"admin": ..., "uploads": ...} (the services hold what they need)."""

FEED = web.AppKey("feed", CommitFeed)
"""Several nodes: the relay of other nodes' commits (server/cluster.py)."""

REVOCATIONS = web.AppKey("revocations", Revocations)
"""Deletions of authority reaching this node's caches and sockets (server/revocation.py)."""

log = logging.getLogger("statehost.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ALLOWED_HEADERS = "authorization, content-type, x-statebacked-org-id, x-statebacked-act"
MAX_BODY = 11_000_000  # the largest legitimate body is a 10 MB upload plus multipart framing
WARM_UP_VERSIONS = 64
"""At start, at most this many versions are prepared before the node reports ready..."""
WARM_UP_BUDGET_S = 5.0
"""...and none is started after this many seconds (a huge database must not hold the start)."""


def _cors_headers(request: web.Request, settings: Settings) -> dict[str, str]:
    origin = request.headers.get("Origin")
    allowed = settings.cors_origins
    if "*" in allowed:
        value = "*"
    elif origin and origin in allowed:
        value = origin
    else:
        return {}
    headers = {"Access-Control-Allow-Origin": value}
    if value != "*":
        headers["Vary"] = "Origin"
    return headers


def _error(status: int, code: str, message: str, parameter: str | None = None) -> web.Response:
    body = {"error": message, "code": code}
    if parameter is not None:
        body["parameter"] = parameter
    return web.json_response(body, status=status)


@web.middleware
async def cors_and_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    cors = _cors_headers(request, settings)
    if request.method == "OPTIONS":
        return web.Response(
            status=204,
            headers={
                **cors,
                "Access-Control-Allow-Methods": "GET, POST, PUT, DELETE, OPTIONS",
                "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                "Access-Control-Max-Age": "600",
            },
        )
    try:
        response = await handler(request)
    except ApiError as exc:
        response = web.json_response(exc.body(), status=exc.status)
    except web.HTTPRequestEntityTooLarge:
        response = _error(413, "invalid-parameter", "the request body is too large", "body")
    except web.HTTPException as exc:
        code = "not-found" if exc.status == 404 else "invalid-request"
        response = _error(exc.status, code, exc.reason or "request failed")
    except Exception as exc:
        storage = storage_error(exc)  # a storage fault that reached here unmapped is still a 503
        if storage is not None:
            log.warning("%s %s: %s", request.method, request.path, storage.message)
            response = web.json_response(storage.body(), status=storage.status)
        else:
            log.exception("unhandled error in %s %s", request.method, request.path)
            response = _error(500, "internal-error", "the server failed to handle the request")
    response.headers.update(cors)
    return response


async def health(request: web.Request) -> web.Response:
    """Liveness for load balancers and operators: this node, its database and its leases. 503 when
    the database does not answer within 5 s (the node cannot commit anything then)."""
    engine = request.app[ENGINE]
    store = engine.store
    body: dict[str, Any] = {"node": engine.node_id, "database": {"kind": store.db.kind}}
    started = time.perf_counter()
    try:
        async with asyncio.timeout(5):
            await store.ping()
            if store.shared and engine.leases is not None:
                body["leases"] = {
                    **await store.lease_counts(engine.node_id),
                    # since start: windows this node ran, and how many waited for another node first
                    "acquired": engine.leases.acquired,
                    "waited": engine.leases.waited,
                }
    except Exception as exc:
        body.update(status="unavailable", error=f"the database did not answer: {type(exc).__name__}: {exc}")
        body["database"]["reachable"] = False
        return web.json_response(body, status=503)
    body["database"].update(reachable=True, latency_ms=round((time.perf_counter() - started) * 1000, 2))
    # since start: versions prepared by the warm-up and by requests, and how the engine prepared them
    stats = getattr(engine.instances.engine, "prepare_stats", None)
    body["machines"] = {**engine.instances.prepare_counts, **({} if stats is None else dict(stats))}
    body["status"] = "ok"
    return web.json_response(body)


def create_app(settings: Settings, *, clock: Clock | None = None, bundler: Bundler | None = None) -> web.Application:
    app = web.Application(middlewares=[cors_and_errors], client_max_size=MAX_BODY)
    app[SETTINGS] = settings
    engine = DurableEngine(settings, clock=clock, bundler=bundler)
    app[ENGINE] = engine

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await engine.start()
        instance_indexes.attach(engine)  # before any await: no round may commit without its index entries
        now = engine.clock.now_ms()
        store, clock, instances = engine.store, engine.clock, engine.instances
        secrets = app[SECRETS] = {
            "admin": await store.orgs.server_secret("admin-token-key", now),
            "uploads": await store.orgs.server_secret("upload-signing-key", now),
        }
        # The services the routes call, each built once with its collaborators (server/services/).
        app[AUTH] = Authenticator(store, clock, secrets["admin"])
        app[ORGS] = OrgService(store, clock)
        app[MACHINES] = MachineService(store, instances, clock, secrets["uploads"])
        app[INSTANCES] = instances
        app[INSTANCE_ADMIN] = InstanceAdmin(store, instances)
        jwks = JwksCache(engine.transport, clock=lambda: clock.now_ms() / 1000)
        app[PROVIDERS] = ProviderService(store, clock, jwks)
        app[LOGS] = LogService(store)
        hub = Hub(instances)
        app[HUB] = hub
        revocations = app[REVOCATIONS] = Revocations(engine.store, hub)  # server/revocation.py
        await revocations.start()
        feed: CommitFeed | None = None
        if engine.store.shared:
            # Several nodes: subscribers here also hear of other nodes' commits (server/cluster.py).
            feed = app[FEED] = CommitFeed(engine.store, hub)
            await feed.start()
            engine.instances.on_commit = feed.local
        else:
            engine.instances.on_commit = hub.publish
        if settings.bootstrap_file is not None:
            url = settings.public_url or f"http://{settings.host}:{settings.port}"
            await bootstrap(
                engine, app[SECRETS]["admin"], url, settings.bootstrap_file, settings.admin_token_lifetime_s
            )
        # The readiness point: this runs before run_app binds a socket, so nothing (not /health)
        # answers until the versions in use are prepared (from their persisted images on WASM).
        warmed = await engine.instances.warm_up(WARM_UP_VERSIONS, WARM_UP_BUDGET_S)
        log.info("warm-up: %(warmed)d of %(candidates)d versions prepared in %(seconds)s s", warmed)
        yield
        if feed is not None:
            await feed.close()
        await revocations.close()
        await hub.close()
        await engine.stop()

    app.cleanup_ctx.append(lifecycle)

    async def close_sockets(app: web.Application) -> None:
        if HUB in app:
            await app[HUB].close_connections()

    app.on_shutdown.append(close_sockets)
    for module in (orgs, machines, instances, providers, realtime, logs, indexes, http_api, dashboard):
        app.router.add_routes(module.routes)

    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(document(settings.public_url))

    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/health", health)
    # smply's `invitations accept` sends PUT /{code} (wire-api 3.15): registered last, so that it
    # never shadows a real route.
    app.router.add_put("/invitations/{code}", orgs.accept_invitation)
    app.router.add_put("/{code}", orgs.accept_invitation)
    return app
