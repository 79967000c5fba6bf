"""The HTTP API test client: a real aiohttp server on loopback with a bootstrapped org and admin."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
from aiohttp import FormData
from aiohttp.test_utils import TestClient, TestServer

from server.app import ENGINE, SECRETS, create_app
from server.auth import issue_admin_token
from server.config import Settings

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "machines"
TOGGLE = (FIXTURES / "toggle" / "v4" / "machine.ts").read_bytes()
GUARDED = b"""import { createMachine } from "xstate";
export const allowRead = ({ authContext }) => authContext.sub !== "nobody";
export const allowWrite = ({ authContext }) => authContext.sub === "u-allowed";
export default createMachine({ id: "g", initial: "a", states: { a: { on: { go: "b" } }, b: {} } });
"""


class Api:
    def __init__(self, client: TestClient, admin_token: str, org_id: str) -> None:
        self.client = client
        self.admin_token = admin_token
        self.org_id = org_id

    @property
    def engine(self):
        return self.client.app[ENGINE]

    def admin(self, **extra: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.admin_token}", "content-type": "application/json", **extra}

    async def call(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, body: Any = None, data: Any = None
    ) -> tuple[int, Any]:
        kwargs: dict[str, Any] = {"headers": self.admin() if headers is None else headers}
        if body is not None:
            kwargs["data"] = json.dumps(body)
        if data is not None:
            kwargs["data"] = data
        async with self.client.request(method, path, **kwargs) as response:
            text = await response.text()
            return response.status, (json.loads(text) if text else None)

    async def deploy(
        self,
        slug: str,
        source: bytes = TOGGLE,
        *,
        filename: str = "machine.ts",
        gzipped: bool = True,
        make_current: bool = True,
    ) -> str:
        status, _ = await self.call("POST", "/machines", body={"slug": slug})
        assert status in (201, 409)
        status, provisional = await self.call("POST", f"/machines/{slug}/v" + ("?gzip" if gzipped else ""))
        assert status == 200
        assert await self.upload(provisional, source, filename=filename, gzipped=gzipped) == 204
        status, body = await self.call(
            "PUT",
            f"/machines/{slug}/v/{provisional['machineVersionId']}",
            body={"clientInfo": "test", "makeCurrent": make_current},
        )
        assert status == 200, body
        return str(body["machineVersionId"])

    async def upload(self, provisional: dict[str, Any], source: bytes, *, filename: str, gzipped: bool) -> int:
        form = FormData()
        for key, value in provisional["codeUploadFields"].items():
            form.add_field(key, value)
        form.add_field("content-type", "application/javascript")
        if gzipped:
            form.add_field("content-encoding", "gzip")
        form.add_field(
            "file",
            gzip.compress(source) if gzipped else source,
            filename=filename,
            content_type="application/javascript",
        )
        path = "/code-uploads/" + provisional["codeUploadUrl"].rsplit("/code-uploads/", 1)[1]
        async with self.client.post(path, data=form) as response:  # no authorization header
            assert "Access-Control-Allow-Origin" in response.headers
            return response.status

    async def key(self, *, use: str | None = None, scopes: list[str] | None = None) -> tuple[str, str]:
        body: dict[str, Any] = {"name": "k"}
        if use:
            body["use"] = use
        if scopes:
            body["scopes"] = scopes
        status, key = await self.call("POST", "/keys", body=body)
        assert status == 200, key
        return key["id"], key["key"]

    async def user_with_role(self, role: str, org_id: str | None = None) -> str:
        store = self.engine.store
        now = self.engine.clock.now_ms()
        user = await store.orgs.create_user(role, None, now)

        async def add(tx):
            await tx.execute(
                "INSERT INTO org_members (org_id, user_id, role, created_ms) VALUES (?, ?, ?, ?)",
                (org_id or self.org_id, user, role, now),
            )

        await store.write(add)
        return issue_admin_token(self.client.app[SECRETS]["admin"], user, 0, int(time.time()), 3600)


def key_token(key_id: str, secret: str, act: dict[str, Any], expires_in: int = 3600) -> str:
    now = int(time.time())
    return jwt.encode(
        {
            "act": act,
            "aud": "https://api.statebacked.dev/",
            "exp": now + expires_in,
            "iat": now,
            "iss": f"https://{key_id}.client.statebacked.dev/",
        },
        secret,
        algorithm="HS256",
        headers={"kid": key_id},
    )


def bearer(token: str, **extra: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}", "content-type": "application/json", **extra}


async def api_client(tmp_path: Path, bundler, database_url: str | None = None, **overrides: Any) -> AsyncIterator[Api]:
    settings = Settings(
        database=tmp_path / "statehost.db",
        database_url=database_url,
        bootstrap_file=tmp_path / "admin.json",
        workers=2,
        **overrides,
    )
    app = create_app(settings, bundler=bundler)
    async with TestClient(TestServer(app)) as client:
        credentials = json.loads((tmp_path / "admin.json").read_text())
        yield Api(client, credentials["adminToken"], credentials["orgId"])
