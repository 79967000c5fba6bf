"""A tiny HTTP stub for the fixtures that fetch (and for fetch tests).

Run by hand: ``python tests/node/stub.py --port 0`` prints its base URL and serves until interrupted.
From tests: ``runner, url = await start_stub()`` ... ``await runner.cleanup()``.

Routes:
- GET /items/{id}      -> {"id": <id as number>, "name": "item-<id>"}; /items/0 -> 404
- GET /json            -> {"hello": "world"}
- POST|PUT /echo       -> {"method", "headers", "body"} (the request's, body as text)
- GET /status/{code}   -> an empty response with that status
- GET /redirect        -> 302 to /json
- GET /bytes           -> the 256 bytes 0..255 (application/octet-stream)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from aiohttp import web

__all__ = ["make_app", "start_stub"]


async def _item(request: web.Request) -> web.Response:
    raw = request.match_info["id"]
    try:
        item_id = int(raw)
    except ValueError:
        return web.json_response({"error": f"bad item id {raw!r}"}, status=400)
    if item_id == 0:
        return web.json_response({"error": "not found"}, status=404)
    return web.json_response({"id": item_id, "name": f"item-{item_id}"})


async def _json(_request: web.Request) -> web.Response:
    return web.json_response({"hello": "world"})


async def _echo(request: web.Request) -> web.Response:
    body = await request.text()
    return web.json_response({"method": request.method, "headers": dict(request.headers), "body": body})


async def _status(request: web.Request) -> web.Response:
    try:
        code = int(request.match_info["code"])
    except ValueError:
        return web.json_response({"error": "bad status code"}, status=400)
    if not 200 <= code <= 599:
        return web.json_response({"error": "status code out of range"}, status=400)
    return web.Response(status=code)


async def _redirect(_request: web.Request) -> web.Response:
    raise web.HTTPFound("/json")


async def _bytes(_request: web.Request) -> web.Response:
    return web.Response(body=bytes(range(256)), content_type="application/octet-stream")


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/items/{id}", _item)
    app.router.add_get("/json", _json)
    app.router.add_post("/echo", _echo)
    app.router.add_put("/echo", _echo)
    app.router.add_get("/status/{code}", _status)
    app.router.add_get("/redirect", _redirect)
    app.router.add_get("/bytes", _bytes)
    return app


async def start_stub(host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str]:
    """Start the stub on host:port (0 = any free port); returns the runner and the base URL."""
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_port = runner.addresses[0][1]
    return runner, f"http://{host}:{bound_port}"


async def _serve(port: int) -> None:
    runner, url = await start_stub(port=port)
    print(url, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0 = any free port)")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.port))


if __name__ == "__main__":
    main()
