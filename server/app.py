"""The aiohttp application: State Backed's wire API over the durable engine (wire-api sections 1-3).

``create_app(settings)`` builds it; the engine starts and stops with the app (``cleanup_ctx``).
Every response carries CORS headers and every error is ``{error, code, parameter?}`` with the
status the official client expects; nothing ever answers with a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from runtime import Bundler, Clock

from . import indexes as instance_indexes
from .bootstrap import bootstrap
from .config import Settings
from .engine import DurableEngine
from .errors import ApiError
from .exchange import JwksCache
from .openapi import document
from .routes import dashboard, http_api, indexes, instances, logs, machines, orgs, providers, realtime
from .routes.common import ENGINE, HUB, JWKS, SECRETS, SETTINGS
from .subscriptions import Hub

__all__ = ["create_app"]

log = logging.getLogger("statehost.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ALLOWED_HEADERS = "authorization, content-type, x-statebacked-org-id, x-statebacked-act"
MAX_BODY = 11_000_000  # the largest legitimate body is a 10 MB upload plus multipart framing


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
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        response = _error(500, "internal-error", "the server failed to handle the request")
    response.headers.update(cors)
    return response


def create_app(settings: Settings, *, clock: Clock | None = None, bundler: Bundler | None = None) -> web.Application:
    app = web.Application(middlewares=[cors_and_errors], client_max_size=MAX_BODY)
    app[SETTINGS] = settings
    engine = DurableEngine(settings, clock=clock, bundler=bundler)
    app[ENGINE] = engine

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await engine.start()
        instance_indexes.attach(engine)  # before any await: no round may commit without its index entries
        now = engine.clock.now_ms()
        app[SECRETS] = {
            "admin": await engine.store.server_secret("admin-token-key", now),
            "uploads": await engine.store.server_secret("upload-signing-key", now),
        }
        app[JWKS] = JwksCache(engine.transport, clock=lambda: engine.clock.now_ms() / 1000)
        hub = Hub(engine.instances)
        app[HUB] = hub
        engine.instances.on_commit = hub.publish
        if settings.bootstrap_file is not None:
            url = settings.public_url or f"http://{settings.host}:{settings.port}"
            await bootstrap(
                engine, app[SECRETS]["admin"], url, settings.bootstrap_file, settings.admin_token_lifetime_s
            )
        yield
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
    # smply's `invitations accept` sends PUT /{code} (wire-api 3.15): registered last, so that it
    # never shadows a real route.
    app.router.add_put("/invitations/{code}", orgs.accept_invitation)
    app.router.add_put("/{code}", orgs.accept_invitation)
    return app
