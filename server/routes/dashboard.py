"""The web dashboard (issue 11): ``GET /dashboard`` and its static assets, built from
``dashboard/src`` by ``make setup`` into ``dashboard/dist`` (never fetched from a CDN).

The dashboard is only a client of the wire API: these routes serve files and nothing else, need no
token, and answer every page with a Content-Security-Policy that allows scripts, styles, fetches
and the ``/rt`` WebSocket from this server only (docs/threat-model.md). ``index.html`` is never
cached (it names the current assets); files under ``assets/`` carry a content hash in their name
and are cached for a year. Without a build, ``/dashboard`` answers 503 saying how to make one.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from aiohttp import web

from runtime import resources

from ..errors import NotFound

routes = web.RouteTableDef()

DIST = resources.dashboard_dist()

CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        # CodeMirror and the SVG diagram set styles from script; nothing inline comes from data
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
    ".json": "application/json",
    ".png": "image/png",
}

MISSING = """<!doctype html><html lang="en"><meta charset="utf-8"><title>Dashboard not built</title>
<body style="font-family: system-ui, sans-serif; max-width: 40em; margin: 3em auto">
<h1>The dashboard is not built</h1>
<p>This server has no dashboard assets (<code>dashboard/dist/</code> is missing). Build them with
<code>make setup</code> in the statehost checkout (it needs node and npm), then reload this page.</p>
<p>The API itself works without them.</p></body></html>
"""


def _dist() -> Path:
    return DIST  # read at each request: tests point it at a build of their own


@routes.get("/dashboard")
async def index(request: web.Request) -> web.StreamResponse:
    page = _dist() / "index.html"
    if not page.is_file():
        return web.Response(
            status=503,
            text=MISSING,
            content_type="text/html",
            charset="utf-8",
            headers={**HEADERS, "Cache-Control": "no-store"},
        )
    return web.Response(
        body=page.read_bytes(),
        headers={**HEADERS, "Content-Type": TYPES[".html"], "Cache-Control": "no-cache"},
    )


@routes.get("/dashboard/{path:.*}")
async def asset(request: web.Request) -> web.StreamResponse:
    path = request.match_info["path"]
    if path in ("", "index.html"):  # relative, so that it works under a path prefix too
        return web.Response(status=302, headers={**HEADERS, "Location": "../dashboard"})
    root = _dist().resolve()
    target = (root / path).resolve()
    if not target.is_relative_to(root / "assets") or not target.is_file():
        raise NotFound(f"no dashboard asset {path!r}")
    content_type = TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    return web.FileResponse(
        target,
        headers={
            **HEADERS,
            "Content-Type": content_type,
            "Cache-Control": "public, max-age=31536000, immutable",
        },
    )
