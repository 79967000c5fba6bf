"""Instance indexes through the real app (wire-api 3.5, 3.6, 3.10): entries follow committed
transitions, arrays index each element, a version's selectors stay with its instances, omitted
selectors are inherited, keyset pages neither repeat nor skip, and the query's bad input."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pytest

from server import jsonpath
from server.indexes import MAX_VALUE_CHARS, Indexes, entries_of, inherit_selectors
from server.routes.machines import confirmation
from tests.server.api_support import Api, bearer, key_token

QUERY_PATH = "/machines/{machine}/indexes/{index}/query"

PEOPLE = b"""import { createMachine, assign } from "xstate";
import type { AllowRead, AllowWrite } from "@statebacked/machine";

type Context = { email: string; backup: string; tags: string[]; score: number; public: {} };
type Set = { type: "set"; email?: string; backup?: string; tags?: string[] };

export const allowRead: AllowRead = () => true;
export const allowWrite: AllowWrite = () => true;

export default createMachine<Context, Set>({
  id: "people",
  predictableActionArguments: true,
  context: { email: "", backup: "", tags: [], score: 1, public: {} },
  initial: "idle",
  states: {
    idle: {
      on: {
        set: {
          target: "idle",
          internal: false,
          actions: assign((ctx, ev) => ({
            email: ev.email ?? ctx.email,
            backup: ev.backup ?? ctx.backup,
            tags: ev.tags ?? ctx.tags,
          })),
        },
      },
    },
  },
});
"""


async def deploy(
    api: Api,
    slug: str,
    selectors: dict[str, str] | None,
    *,
    make_current: bool = True,
    indexes: list[str] | None = None,
) -> str:
    """Create the machine (once, with its indexes) and a version with these selectors (None: send none)."""
    status, _ = await api.call(
        "POST", "/machines", body={"slug": slug, "indexes": indexes or ["email", "tag", "score"]}
    )
    assert status in (201, 409)
    status, provisional = await api.call("POST", f"/machines/{slug}/v?gzip")
    assert status == 200
    assert await api.upload(provisional, PEOPLE, filename="m.ts", gzipped=True) == 204
    body: dict[str, Any] = {"clientInfo": "test", "makeCurrent": make_current}
    if selectors is not None:
        body["indexSelectors"] = selectors
    status, finalized = await api.call("PUT", f"/machines/{slug}/v/{provisional['machineVersionId']}", body=body)
    assert status == 200, finalized
    return str(finalized["machineVersionId"])


async def create(api: Api, slug: str, name: str, **context: Any) -> None:
    body: dict[str, Any] = {"slug": name, "context": context}
    status, state = await api.call("POST", f"/machines/{slug}", body=body)
    assert status == 200, state


async def send(api: Api, slug: str, name: str, **fields: Any) -> None:
    status, state = await api.call(
        "POST", f"/machines/{slug}/i/{name}/events", body={"event": {"type": "set", **fields}}
    )
    assert status == 200, state


async def query(api: Api, slug: str, index: str, **params: Any) -> tuple[int, Any]:
    qs = urlencode({k: str(v) for k, v in params.items()})
    return await api.call("GET", f"/machines/{slug}/indexes/{index}/query" + (f"?{qs}" if qs else ""))


async def pairs(api: Api, slug: str, index: str, **params: Any) -> list[tuple[str, str]]:
    status, body = await query(api, slug, index, **params)
    assert status == 200, body
    assert "cursor" not in body
    return [(item["indexValue"], item["slug"]) for item in body["instances"]]


async def test_entries_follow_committed_events_and_every_operator(api: Api):
    await deploy(api, "people", {"email": "$.email", "tag": "$.tags", "score": "$.score"})
    await create(api, "people", "ann", email="ann@x", tags=["red", "blue", "red"])
    await create(api, "people", "bob", email="bob@x", tags=[])
    await create(api, "people", "cy", email="cy@x")
    await create(api, "people", "dee")  # email "" is a string: indexed; no tags

    assert await pairs(api, "people", "email") == [("", "dee"), ("ann@x", "ann"), ("bob@x", "bob"), ("cy@x", "cy")]
    assert await pairs(api, "people", "email", op="eq", value="bob@x") == [("bob@x", "bob")]
    assert await pairs(api, "people", "email", op="ne", value="bob@x") == [
        ("", "dee"),
        ("ann@x", "ann"),
        ("cy@x", "cy"),
    ]
    assert await pairs(api, "people", "email", op="gt", value="bob@x") == [("cy@x", "cy")]
    assert await pairs(api, "people", "email", op="gte", value="bob@x") == [("bob@x", "bob"), ("cy@x", "cy")]
    assert await pairs(api, "people", "email", op="lt", value="bob@x") == [("", "dee"), ("ann@x", "ann")]
    assert await pairs(api, "people", "email", op="lte", value="ann@x") == [("", "dee"), ("ann@x", "ann")]
    assert await pairs(api, "people", "email", op="eq", value="nobody") == []
    # an array is one entry per string element (duplicates once); numbers are not indexed
    assert await pairs(api, "people", "tag") == [("blue", "ann"), ("red", "ann")]
    assert await pairs(api, "people", "score") == []

    await send(api, "people", "bob", email="aaa@x", tags=["red"])
    await send(api, "people", "ann", tags=["green"])
    assert await pairs(api, "people", "email", op="lt", value="b") == [("", "dee"), ("aaa@x", "bob"), ("ann@x", "ann")]
    assert await pairs(api, "people", "email", op="eq", value="bob@x") == []
    assert await pairs(api, "people", "tag") == [("green", "ann"), ("red", "bob")]
    assert await pairs(api, "people", "tag", op="eq", value="red", dir="desc") == [("red", "bob")]

    # a deleted instance leaves its indexes
    status, _ = await api.call(
        "DELETE",
        "/machines/people/i/bob",
        body={
            "dangerDataWillBeDeletedForever": True,
            "hmacSha256OfMachineInstanceNameWithMachineNameKey": confirmation("people", "bob"),
        },
    )
    assert status == 204
    assert await pairs(api, "people", "tag") == [("green", "ann")]


async def test_a_new_version_selector_applies_to_its_instances_only_and_omitted_ones_are_inherited(api: Api):
    v1 = await deploy(api, "people", {"email": "$.email", "tag": "$.tags"})
    await create(api, "people", "old", email="old@x", backup="old-backup", tags=["t-old"])
    v2 = await deploy(api, "people", {"email": "$.backup"})  # tag omitted: inherits $.tags
    await create(api, "people", "new", email="new@x", backup="new-backup", tags=["t-new"])
    assert await pairs(api, "people", "email") == [("new-backup", "new"), ("old@x", "old")]
    assert await pairs(api, "people", "tag") == [("t-new", "new"), ("t-old", "old")]

    # instances keep their version's selectors as they move on
    await send(api, "people", "old", email="old2@x", backup="old2-backup")
    await send(api, "people", "new", email="new2@x", backup="new2-backup")
    assert await pairs(api, "people", "email") == [("new2-backup", "new"), ("old2@x", "old")]

    # no indexSelectors at all (as client 0.1.37 finalizes): everything inherited from the current version
    v3 = await deploy(api, "people", None)
    store = api.engine.store
    assert await store.machines.version_selectors(v1) == {"email": "$.email", "tag": "$.tags"}
    assert await store.machines.version_selectors(v2) == {"email": "$.backup", "tag": "$.tags"}
    assert await store.machines.version_selectors(v3) == {"email": "$.backup", "tag": "$.tags"}
    status, _ = await api.call("POST", "/machines/people", body={"slug": "newest", "context": {"backup": "b3"}})
    assert status == 200
    assert ("b3", "newest") in await pairs(api, "people", "email")

    # a version that is not made current still inherits from the current one
    v4 = await deploy(api, "people", {"tag": "$.email"}, make_current=False)
    assert await store.machines.version_selectors(v4) == {"email": "$.backup", "tag": "$.email"}


async def test_finalize_refuses_bad_selectors(api: Api):
    await api.call("POST", "/machines", body={"slug": "people", "indexes": ["email"]})
    for selectors, fragment in (
        ({"email": "email"}, "starts with $"),
        ({"email": "$..email"}, "recursive descent"),
        ({"email": "$.tags[*]"}, "supported"),
        ({"nope": "$.email"}, "not an index"),
    ):
        status, provisional = await api.call("POST", "/machines/people/v")
        assert await api.upload(provisional, PEOPLE, filename="m.ts", gzipped=False) == 204
        status, error = await api.call(
            "PUT", f"/machines/people/v/{provisional['machineVersionId']}", body={"indexSelectors": selectors}
        )
        assert status == 400 and error["code"] == "invalid-parameter", error
        assert error["parameter"] == "indexSelectors" and fragment in error["error"], error


async def test_pages_neither_repeat_nor_skip_in_both_directions(api: Api):
    await deploy(api, "people", {"email": "$.email", "tag": "$.tags"})
    # ties on the value are ordered by instance slug; several entries per instance through the array
    for n in range(13):
        await create(api, "people", f"i{n:02d}", email=f"e{n % 4}", tags=[f"t{n % 5}", f"u{n % 3}"])
    everything = await pairs(api, "people", "tag", limit=1000)
    assert len(everything) == 26 and everything == sorted(everything)
    for direction, expected in (("asc", everything), ("desc", everything[::-1])):
        for limit in (1, 4, 7, 25, 26):
            seen: list[tuple[str, str]] = []
            cursor = None
            pages = 0
            while True:
                params: dict[str, Any] = {"limit": limit, "dir": direction}
                if cursor is not None:
                    params["cursor"] = cursor
                status, body = await query(api, "people", "tag", **params)
                assert status == 200, body
                assert len(body["instances"]) <= limit
                seen += [(item["indexValue"], item["slug"]) for item in body["instances"]]
                pages += 1
                cursor = body.get("cursor")
                if cursor is None:
                    break
                assert body["instances"], "a page with a cursor is never empty"
            assert seen == expected, (direction, limit)
            assert pages == -(-len(expected) // limit)  # no trailing empty page

    # with a filter, across pages
    filtered = await pairs(api, "people", "email", op="gte", value="e2", dir="desc")
    assert filtered == sorted(filtered, reverse=True) and {v for v, _ in filtered} == {"e2", "e3"}
    status, first = await query(api, "people", "email", op="gte", value="e2", dir="desc", limit=2)
    status, second = await query(
        api, "people", "email", op="gte", value="e2", dir="desc", limit=100, cursor=first["cursor"]
    )
    assert [(i["indexValue"], i["slug"]) for i in first["instances"] + second["instances"]] == filtered
    assert "cursor" not in second

    # the default page is 100 entries
    status, body = await query(api, "people", "tag")
    assert status == 200 and len(body["instances"]) == 26 and "cursor" not in body


async def test_bad_query_parameters(api: Api):
    await deploy(api, "people", {"email": "$.email"})
    await create(api, "people", "ann", email="a")
    for params, parameter in (
        ({"op": "like", "value": "a"}, "op"),
        ({"op": "eq"}, "value"),
        ({"value": "a"}, "op"),
        ({"dir": "up"}, "dir"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "WzEsMl0"}, "cursor"),  # [1,2]: JSON, but not a cursor of this server
    ):
        status, error = await query(api, "people", "email", **params)
        assert status == 400, (params, error)
        assert error["code"] == "invalid-parameter" and error["parameter"] == parameter, (params, error)
    assert (await query(api, "people", "email", limit=1000))[0] == 200
    assert (await query(api, "people", "email", limit=1, dir="asc", op="eq", value=""))[0] == 200

    status, error = await query(api, "people", "nope")
    assert status == 404 and error["code"] == "not-found"
    status, error = await query(api, "missing", "email")
    assert status == 404


async def test_the_query_needs_the_indexes_read_scope(api: Api):
    await deploy(api, "people", {"email": "$.email"})
    await create(api, "people", "ann", email="a")
    url = "/machines/people/indexes/email/query"
    key_id, secret = await api.key(scopes=["state.read", "instances.read"])
    status, error = await api.call("GET", url, headers=bearer(key_token(key_id, secret, {"sub": "u"})))
    assert status == 403 and error["code"] == "missing-scope"
    key_id, secret = await api.key(use="production")  # includes indexes.read
    status, body = await api.call("GET", url, headers=bearer(key_token(key_id, secret, {"sub": "u"})))
    assert status == 200 and body == {"instances": [{"indexValue": "a", "slug": "ann"}]}
    status, error = await api.call("GET", url, headers={"authorization": "Bearer nonsense"})
    assert status == 403


# -- the pieces, without the app -------------------------------------------------------------------


def test_entries_of_each_kind_of_match():
    assert entries_of("a") == ["a"]
    assert entries_of("") == [""]
    assert entries_of(["a", 1, None, {"b": 1}, ["c"], "d", "a"]) == ["a", "d"]
    assert entries_of([]) == []
    for nothing in (1, 1.5, True, None, {"a": "b"}, jsonpath.MISSING):
        assert entries_of(nothing) == []
    assert entries_of("x" * MAX_VALUE_CHARS) == ["x" * MAX_VALUE_CHARS]
    assert entries_of("x" * (MAX_VALUE_CHARS + 1)) == []
    assert entries_of(["x" * (MAX_VALUE_CHARS + 1), "y"]) == ["y"]


async def test_values_caches_each_versions_selectors_and_skips_invalid_ones():
    class FakeStore:
        def __init__(self) -> None:
            self.reads: list[str | None] = []

        async def version_selectors(self, version_id: str | None) -> dict[str, str]:
            self.reads.append(version_id)
            return {"a": "$.x.y", "b": "$.list", "bad": "x", "none": "$.missing"}

    store = FakeStore()
    indexes = Indexes(store)
    context = {"x": {"y": "v"}, "list": ["p", "q"]}
    assert await indexes.values("ver_1", context) == {"a": ["v"], "b": ["p", "q"]}
    assert await indexes.values("ver_1", {"x": {"y": 3}}) == {}
    assert await indexes.values("ver_2", context) == {"a": ["v"], "b": ["p", "q"]}
    assert store.reads == ["ver_1", "ver_2"]


def test_inherit_selectors():
    assert inherit_selectors({"a": "$.n"}, {"a": "$.o", "b": "$.b", "gone": "$.g"}, ["a", "b"]) == {
        "a": "$.n",
        "b": "$.b",
    }
    assert inherit_selectors({}, {}, ["a"]) == {}


def test_jsonpath_module():
    assert jsonpath.parse("$") == ()
    assert jsonpath.parse("$.a[0]['b c'][\"d\"]") == ("a", 0, "b c", "d")
    with pytest.raises(ValueError, match="are supported"):
        jsonpath.parse("$.a[?(@.b)]")
    assert jsonpath.select({"a": [{"b": None}]}, ("a", "0", "b")) is None
    assert jsonpath.select({"a": []}, ("a", 0)) is jsonpath.MISSING
    assert repr(jsonpath.MISSING) == "MISSING"
