"""GET /machines/{m}/v/{version}/structure (the dashboard's statechart data) and the structured
bundling diagnostics of a bad upload, through the real app."""

from __future__ import annotations

from typing import Any

from tests.server.api_support import Api, bearer, key_token

V5 = b"""import { createMachine } from "xstate";
export const allowRead = () => true;
export const allowWrite = () => true;
function isReady() { return true; }
export default createMachine({
  id: "shop",
  initial: "browsing",
  states: {
    browsing: {
      entry: "track",
      on: { checkout: { target: "paying", guard: "hasItems" }, peek: { actions: "log" }, poke: { guard: () => true, actions: () => {} } },
      after: { 5000: "idle" },
    },
    idle: { on: { wake: "browsing" }, always: { target: "paying", guard: isReady } },
    paying: {
      type: "parallel",
      invoke: { id: "charge", src: "charger", onDone: "done", onError: "browsing" },
      states: {
        card: { initial: "entering", states: { entering: {}, again: { type: "history", history: "deep" } } },
        receipt: { initial: "waiting", states: { waiting: {}, sent: { type: "final" } } },
      },
    },
    done: { type: "final" },
  },
});
"""


def _nodes(node: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {node["id"]: node}
    for child in node["states"]:
        out.update(_nodes(child))
    return out


async def test_structure_of_an_xstate4_machine(api: Api):
    version = await api.deploy("toggle")
    status, body = await api.call("GET", f"/machines/toggle/v/{version}/structure")
    assert status == 200, body
    assert body["machineVersionId"] == version and body["major"] == 4 and body["id"] == "toggle"
    root = body["root"]
    assert root["type"] == "compound" and root["initial"] == "inactive"
    nodes = _nodes(root)
    assert nodes["toggle.inactive"]["transitions"] == [
        {"event": "toggle", "kind": "on", "targets": ["toggle.active"], "reenter": True, "actions": []}
    ]
    assert nodes["toggle.active"]["entry"] == ["xstate.assign"]
    assert nodes["toggle.active"]["path"] == ["active"]


async def test_structure_of_an_xstate5_machine_with_every_kind_of_state(api: Api):
    status, _ = await api.call("POST", "/machines", body={"slug": "shop"})
    assert status == 201
    status, provisional = await api.call("POST", "/machines/shop/v")
    assert await api.upload(provisional, V5, filename="shop.ts", gzipped=False) == 204
    status, done = await api.call(
        "PUT", f"/machines/shop/v/{provisional['machineVersionId']}", body={"xstateMajor": 5, "makeCurrent": True}
    )
    assert status == 200, done
    status, body = await api.call("GET", f"/machines/shop/v/{done['machineVersionId']}/structure")
    assert status == 200, body
    assert body["major"] == 5
    nodes = _nodes(body["root"])
    browsing = nodes["shop.browsing"]
    assert browsing["entry"] == ["track"]  # not the hidden raise/cancel of `after`
    by_event = {t["event"]: t for t in browsing["transitions"]}
    assert by_event["checkout"]["guard"] == "hasItems" and by_event["checkout"]["targets"] == ["shop.paying"]
    assert by_event["peek"]["targets"] == [] and by_event["peek"]["actions"] == ["log"]
    # an inline function is "(inline)", not the name JavaScript infers from its property
    assert by_event["poke"]["guard"] == "(inline)" and by_event["poke"]["actions"] == ["(inline)"]
    after = next(t for t in browsing["transitions"] if t["kind"] == "after")
    assert after["delay"] == 5000 and after["targets"] == ["shop.idle"]
    always = next(t for t in nodes["shop.idle"]["transitions"] if t["kind"] == "always")
    assert always["event"] == "" and always["guard"] == "isReady"
    paying = nodes["shop.paying"]
    assert paying["type"] == "parallel" and paying["invoke"] == [{"id": "charge", "src": "charger"}]
    kinds = {t["kind"]: t["targets"] for t in paying["transitions"]}
    assert kinds["invoke-done"] == ["shop.done"] and kinds["invoke-error"] == ["shop.browsing"]
    assert nodes["shop.paying.card"]["initial"] == "entering"
    assert nodes["shop.paying.card.again"]["type"] == "history"
    assert nodes["shop.paying.card.again"]["history"] == "deep"
    assert nodes["shop.paying.receipt.sent"]["type"] == "final"
    assert nodes["shop.done"]["type"] == "final"
    # cached per version: the same answer again
    assert await api.call("GET", f"/machines/shop/v/{done['machineVersionId']}/structure") == (200, body)


async def test_structure_needs_the_scope_and_a_version_of_that_machine(api: Api):
    version = await api.deploy("toggle")
    await api.deploy("other")
    status, body = await api.call("GET", f"/machines/other/v/{version}/structure")
    assert status == 404 and body["code"] == "not-found"
    status, body = await api.call("GET", "/machines/toggle/v/ver_nope/structure")
    assert status == 404
    key_id, secret = await api.key(use="production")
    status, body = await api.call(
        "GET", f"/machines/toggle/v/{version}/structure", headers=bearer(key_token(key_id, secret, {"sub": "u"}))
    )
    assert status == 403 and body["code"] == "missing-scope"
    key_id, secret = await api.key(use="ci")
    status, body = await api.call(
        "GET", f"/machines/toggle/v/{version}/structure", headers=bearer(key_token(key_id, secret, {"sub": "u"}))
    )
    assert status == 200 and body["major"] == 4


async def test_a_bad_upload_answers_diagnostics_with_lines(api: Api):
    await api.call("POST", "/machines", body={"slug": "broken"})
    status, provisional = await api.call("POST", "/machines/broken/v")
    source = b'import { createMachine } from "xstate";\n\nexport default createMachine({ id: "x", \n  initial: "a" states: {} });\n'
    assert await api.upload(provisional, source, filename="broken.ts", gzipped=False) == 204
    status, body = await api.call("PUT", f"/machines/broken/v/{provisional['machineVersionId']}", body={})
    assert status == 400, body
    assert body["code"] == "invalid-parameter" and body["parameter"] == "code"
    assert body["reason"] == "build-failed"
    (diagnostic,) = body["diagnostics"]
    assert diagnostic["line"] == 4 and diagnostic["column"] == 16
    assert diagnostic["file"] == "broken.ts" and "Expected" in diagnostic["message"]
    assert diagnostic["lineText"].strip().startswith('initial: "a"')
