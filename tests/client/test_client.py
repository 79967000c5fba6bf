"""The Python client against a real server on loopback: every method, error mapping, tokens, logs,
subscriptions."""

from __future__ import annotations

import asyncio
import datetime

import jwt
import pytest

from client import (
    ConflictError,
    NotFoundError,
    RejectedByMachineAuthorizerError,
    StatehostClient,
    sign_token,
)
from tests.server.api_support import GUARDED, TOGGLE, Api


@pytest.fixture
async def admin(api: Api):
    client = StatehostClient(str(api.client.make_url("")), api.admin_token)
    yield client
    await client.close()


async def test_machines_versions_and_instances(admin: StatehostClient):
    await admin.machines.create("toggle")
    with pytest.raises(ConflictError):
        await admin.machines.create("toggle")
    version = await admin.versions.create("toggle", TOGGLE, filename="toggle.ts", client_info="v1", make_current=True)
    assert (await admin.machines.get("toggle"))["currentVersion"]["id"] == version
    assert [v["id"] for v in await admin.versions.list("toggle")] == [version]
    assert [m["slug"] for m in await admin.machines.list()] == ["toggle"]

    with pytest.raises(NotFoundError):
        await admin.instances.get("toggle", "i1")
    state = await admin.instances.get_or_create("toggle", "i1")
    assert state["state"] == "inactive"
    assert (await admin.instances.get_or_create("toggle", "i1"))["ts"] == state["ts"]
    state = await admin.instances.send_event("toggle", "i1", "toggle")
    assert state["state"] == "active" and state["publicContext"] == {"toggleCount": 1}
    assert [i["slug"] for i in await admin.instances.list("toggle")] == ["i1"]
    assert [t["event"]["type"] for t in await admin.instances.transitions("toggle", "i1")] == ["xstate.init", "toggle"]
    assert (await admin.instances.admin("toggle", "i1"))["context"]["public"]["toggleCount"] == 1
    await admin.instances.set_status("toggle", "i1", "paused")
    with pytest.raises(ConflictError):
        await admin.instances.send_event("toggle", "i1", "toggle")
    await admin.instances.set_status("toggle", "i1", "running")
    await admin.instances.set_desired_version("toggle", "i1", version)
    await admin.instances.delete("toggle", "i1")
    with pytest.raises(NotFoundError):
        await admin.instances.get("toggle", "i1")
    await admin.machines.delete("toggle")
    assert await admin.machines.list() == []


async def test_keys_tokens_and_authorizers(admin: StatehostClient):
    await admin.machines.create("guarded")
    await admin.versions.create("guarded", GUARDED, filename="g.ts", make_current=True)
    key = await admin.keys.create("app", use="production")
    assert key["id"] in {k["id"] for k in await admin.keys.list()}
    token = sign_token(key["id"], key["key"], {"sub": "u-allowed"})
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "kid": key["id"]}
    async with StatehostClient(admin.api_host, token) as user:
        assert (await user.instances.create("guarded", "g1"))["state"] == "a"
    async with StatehostClient(admin.api_host, sign_token(key["id"], key["key"], {"sub": "someone"})) as other:
        with pytest.raises(RejectedByMachineAuthorizerError):
            await other.instances.send_event("guarded", "g1", "go")
    impersonating = StatehostClient(admin.api_host, admin._token, act_as={"sub": "u-allowed"})
    assert (await impersonating.instances.send_event("guarded", "g1", "go"))["state"] == "b"
    await impersonating.close()
    await admin.keys.delete(key["id"])
    assert key["id"] not in {k["id"] for k in await admin.keys.list()}


async def test_logs_and_subscriptions(admin: StatehostClient):
    await admin.machines.create("toggle")
    await admin.versions.create("toggle", TOGGLE, filename="toggle.ts", make_current=True)
    await admin.instances.create("toggle", "i1")
    since = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=1)
    updates = admin.instances.subscribe("toggle", "i1")
    assert (await anext(updates))["state"] == "inactive"
    await admin.instances.send_event("toggle", "i1", "toggle")
    update = await asyncio.wait_for(anext(updates), 10)
    assert update["state"] == "active" and update["publicContext"] == {"toggleCount": 1}
    await updates.aclose()
    page = await admin.logs.retrieve(since, machine="toggle")
    assert page["maxTimestamp"].endswith("Z")
    watched = []

    async def watch() -> None:
        async for entry in admin.logs.watch(since, machine="toggle", idle_s=0.05):
            watched.append(entry)

    task = asyncio.create_task(watch())
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(watched) == len(page["logs"])
