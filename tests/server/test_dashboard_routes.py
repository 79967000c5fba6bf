"""Serving the dashboard: /dashboard and its assets, their headers, and the 503 without a build."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.routes import dashboard
from server.routes.dashboard import CSP
from tests.server.api_support import Api


@pytest.fixture
def built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text(
        '<!doctype html><script type="module" src="dashboard/assets/main-AB12.js"></script>'
    )
    (dist / "assets" / "main-AB12.js").write_text("console.log('hi')")
    (dist / "assets" / "style-1.css").write_text("body{}")
    (tmp_path / "secret.txt").write_text("not served")
    monkeypatch.setattr(dashboard, "DIST", dist)
    return dist


async def test_the_page_and_its_assets_are_served_with_types_and_cache_headers(api: Api, built: Path):
    async with api.client.get("/dashboard") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        assert response.headers["Cache-Control"] == "no-cache"
        assert response.headers["Content-Security-Policy"] == CSP
        assert "script-src 'self'" in CSP and "frame-ancestors 'none'" in CSP
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "main-AB12.js" in await response.text()
    async with api.client.get("/dashboard/assets/main-AB12.js") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/javascript; charset=utf-8"
        assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert await response.text() == "console.log('hi')"
    async with api.client.get("/dashboard/assets/style-1.css") as response:
        assert response.headers["Content-Type"] == "text/css; charset=utf-8"
    async with api.client.get("/dashboard/", allow_redirects=False) as response:
        assert response.status == 302 and response.headers["Location"] == "../dashboard"


@pytest.mark.parametrize(
    "path",
    ["/dashboard/index.htm", "/dashboard/assets/nope.js", "/dashboard/../secret.txt", "/dashboard/%2e%2e/secret.txt"],
)
async def test_nothing_outside_the_assets_is_served(api: Api, built: Path, path: str):
    async with api.client.get(path) as response:
        assert response.status in (404, 405)  # the client may normalise "..": then no route matches
        assert "not served" not in await response.text()


async def test_without_a_build_the_page_says_to_run_make_setup(
    api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(dashboard, "DIST", tmp_path / "nothing-here")
    async with api.client.get("/dashboard") as response:
        assert response.status == 503
        assert response.headers["Content-Type"].startswith("text/html")
        text = await response.text()
        assert "make setup" in text and "not built" in text


async def test_the_dashboard_needs_no_token_but_the_api_still_does(api: Api, built: Path):
    async with api.client.get("/dashboard") as response:
        assert response.status == 200
    async with api.client.get("/machines") as response:
        assert response.status == 403
