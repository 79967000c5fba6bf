"""Live migrations of running instances (wire-api 3.7, 7.8), through the real app and the Python
client: a renamed state, a split state, a parallel machine, a history state, a two-hop path, a
change of XState major, a throwing migration, an invalid migrated state, a missing path, and the
upload's bad input. Every scenario runs for XState 4 and 5 machines where the machine allows it."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import pytest

from client import NoMigrationPathError, StatehostClient, StatehostError
from tests.server.api_support import Api

ALLOW = "export const allowRead = () => true;\nexport const allowWrite = () => true;\n"


def machine(major: int, config: str) -> bytes:
    """A machine module for XState ``major`` from a config literal (v4 gets predictableActionArguments)."""
    source = "npm:xstate@5" if major == 5 else "xstate"
    extra = "" if major == 5 else "predictableActionArguments: true, "
    return f'import {{ createMachine }} from "{source}";\n{ALLOW}export default createMachine({{ {extra}{config} }});\n'.encode()


def migration(state_map: str, context: str = "ctx") -> bytes:
    return f"""
const names = {state_map};
export function upgradeState(path, context) {{
  console.log("upgradeState " + JSON.stringify(path));
  return path.map((k) => names[k] ?? k);
}}
export function upgradeContext(oldPaths, newPaths, ctx) {{ return {context}; }}
""".encode()


TOGGLE_V1 = 'id: "t", initial: "inactive", context: { public: { n: 0 } }, states: { inactive: { on: { toggle: "active" } }, active: { on: { toggle: "inactive" } } }'
TOGGLE_V2 = 'id: "t", initial: "off", context: { public: { count: 0 } }, states: { off: { on: { toggle: "on" } }, on: { on: { toggle: "off" } } }'

TOGGLE_V3 = 'id: "t", initial: "off", context: { public: { count: 0 } }, states: { off: { on: { toggle: "lit" } }, lit: { on: { toggle: "off" } } }'


async def deploy(admin: StatehostClient, slug: str, source: bytes, *, first: bool = False) -> str:
    if first:
        await admin.machines.create(slug)
    return await admin.versions.create(slug, source, filename=f"{slug}.ts", make_current=first)


async def transitions(admin: StatehostClient, slug: str, instance: str) -> list[dict[str, Any]]:
    return await admin.instances.transitions(slug, instance)


async def version_of(admin: StatehostClient, slug: str, instance: str) -> str:
    return str((await admin.instances.admin(slug, instance))["machineVersion"]["id"])


@pytest.mark.parametrize("major", [4, 5])
async def test_renamed_state_upgrades_on_the_next_event(admin: StatehostClient, major: int):
    v1 = await deploy(admin, "t", machine(major, TOGGLE_V1), first=True)
    v2 = await deploy(admin, "t", machine(major, TOGGLE_V2))
    mig = await admin.migrations.create(
        "t", v1, v2, migration('{ inactive: "off", active: "on" }', "{ public: { count: ctx.public.n } }")
    )
    await admin.instances.create("t", "i1")
    await admin.instances.send_event("t", "i1", "toggle")  # active, n stays 0 (no counter action)
    await admin.instances.set_desired_version("t", "i1", v2)
    assert await version_of(admin, "t", "i1") == v1  # nothing happens until the next event
    updates = admin.instances.subscribe("t", "i1")
    assert (await anext(updates))["state"] == "active"
    state = await admin.instances.send_event("t", "i1", "toggle")
    assert state["state"] == "off" and state["publicContext"] == {"count": 0}  # delivered under v2
    history = await transitions(admin, "t", "i1")
    upgrade = history[-2]
    assert upgrade["state"] == "on" and upgrade["event"] == {
        "type": "statebacked.upgrade",
        "fromMachineVersionId": v1,
        "toMachineVersionId": v2,
        "migrationPath": [mig],
    }
    assert [t["event"]["type"] for t in history] == ["xstate.init", "toggle", "statebacked.upgrade", "toggle"]
    # Subscribers see the upgrade, then the event's transition.
    seen = [(await asyncio.wait_for(anext(updates), 60))["state"] for _ in range(2)]
    await updates.aclose()
    assert seen == ["on", "off"]
    assert await version_of(admin, "t", "i1") == v2
    assert "desiredMachineVersion" not in await admin.instances.admin("t", "i1")  # reached, cleared
    logs = await admin.logs.retrieve(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC), machine="t")
    assert 'upgradeState ["active"]' in [entry["log"] for entry in logs["logs"]]


SPLIT_V1 = 'id: "job", initial: "working", context: { progress: 0 }, states: { working: { on: { finish: "done" } }, done: { type: "final" } }'
SPLIT_V2 = 'id: "job", initial: "preparing", context: { progress: 0 }, states: { preparing: { on: { go: "executing" } }, executing: { on: { finish: "done" } }, done: { type: "final" } }'
SPLIT_MIGRATION = b"""
export const upgradeState = (path, ctx) => path[0] === "working" ? [ctx.progress > 5 ? "executing" : "preparing"] : path;
export const upgradeContext = (oldPaths, newPaths, ctx) => ctx;
"""


@pytest.mark.parametrize("major", [4, 5])
async def test_split_state_maps_by_context(admin: StatehostClient, major: int):
    v1 = await deploy(admin, "job", machine(major, SPLIT_V1), first=True)
    v2 = await deploy(admin, "job", machine(major, SPLIT_V2))
    await admin.migrations.create("job", v1, v2, SPLIT_MIGRATION)
    await admin.instances.create("job", "early", context={"progress": 1})
    await admin.instances.create("job", "late", context={"progress": 9})
    for name in ("early", "late"):
        await admin.instances.set_desired_version("job", name, v2)
    assert (await admin.instances.send_event("job", "early", "go"))["state"] == "executing"  # preparing -> go
    assert (await admin.instances.send_event("job", "late", "finish"))["state"] == "done"  # executing -> finish
    late = await transitions(admin, "job", "late")
    assert late[-2]["state"] == "executing" and late[-1]["state"] == "done"


PARALLEL_V1 = 'id: "p", type: "parallel", context: {}, states: { audio: { initial: "muted", states: { muted: { on: { unmute: "loud" } }, loud: {} } }, video: { initial: "off", states: { off: { on: { start: "live" } }, live: {} } } }'
PARALLEL_V2 = 'id: "p", type: "parallel", context: {}, states: { sound: { initial: "silent", states: { silent: { on: { unmute: "playing" } }, playing: {} } }, video: { initial: "off", states: { off: { on: { start: "streaming" } }, streaming: {} } } }'


@pytest.mark.parametrize("major", [4, 5])
async def test_parallel_regions_are_mapped_one_by_one(admin: StatehostClient, major: int):
    v1 = await deploy(admin, "p", machine(major, PARALLEL_V1), first=True)
    v2 = await deploy(admin, "p", machine(major, PARALLEL_V2))
    await admin.migrations.create(
        "p", v1, v2, migration('{ audio: "sound", muted: "silent", loud: "playing", live: "streaming" }')
    )
    await admin.instances.create("p", "i")
    await admin.instances.send_event("p", "i", "start")
    await admin.instances.set_desired_version("p", "i", v2)
    state = await admin.instances.send_event("p", "i", "unmute")
    assert state["state"] == {"sound": "playing", "video": "streaming"}
    assert (await transitions(admin, "p", "i"))[-2]["state"] == {"sound": "silent", "video": "streaming"}
    logs = [e["log"] for e in (await admin.logs.retrieve("2020-01-01T00:00:00.000Z", machine="p"))["logs"]]
    assert {'upgradeState ["audio","muted"]', 'upgradeState ["video","live"]'} <= set(logs)


HISTORY_V1 = 'id: "h", initial: "main", context: {}, states: { main: { initial: "a", states: { a: { on: { next: "b" } }, b: { on: { next: "c" } }, c: {}, hist: { type: "history" } }, on: { pause: "paused" } }, paused: { on: { resume: "main.hist" } } }'
HISTORY_V2 = 'id: "h", initial: "work", context: {}, states: { work: { initial: "first", states: { first: { on: { next: "second" } }, second: { on: { next: "third" } }, third: {}, back: { type: "history" } }, on: { pause: "stopped" } }, stopped: { on: { resume: "work.back" } } }'


@pytest.mark.parametrize("major", [4, 5])
async def test_history_states_are_mapped_too(admin: StatehostClient, major: int):
    v1 = await deploy(admin, "h", machine(major, HISTORY_V1), first=True)
    v2 = await deploy(admin, "h", machine(major, HISTORY_V2))
    await admin.migrations.create(
        "h", v1, v2, migration('{ main: "work", a: "first", b: "second", c: "third", paused: "stopped" }')
    )
    await admin.instances.create("h", "i")
    for event in ("next", "pause"):  # main.b remembered, now paused
        await admin.instances.send_event("h", "i", event)
    await admin.instances.set_desired_version("h", "i", v2)
    assert (await admin.instances.send_event("h", "i", "resume"))["state"] == {"work": "second"}
    logs = [e["log"] for e in (await admin.logs.retrieve("2020-01-01T00:00:00.000Z", machine="h"))["logs"]]
    assert 'upgradeState ["main","b"]' in logs  # the remembered state went through upgradeState


@pytest.mark.parametrize(("first", "second"), [(4, 4), (5, 5), (4, 5)])
async def test_two_hop_path_and_a_change_of_xstate_major(admin: StatehostClient, first: int, second: int):
    v1 = await deploy(admin, "t", machine(first, TOGGLE_V1), first=True)
    v2 = await deploy(admin, "t", machine(first, TOGGLE_V2))
    v3 = await deploy(admin, "t", machine(second, TOGGLE_V3))
    m12 = await admin.migrations.create(
        "t", v1, v2, migration('{ inactive: "off", active: "on" }', "{ public: { count: 7 } }")
    )
    m23 = await admin.migrations.create("t", v2, v3, migration('{ on: "lit" }'))
    await admin.instances.create("t", "i")
    await admin.instances.send_event("t", "i", "toggle")  # active
    await admin.instances.set_desired_version("t", "i", v3)
    state = await admin.instances.send_event("t", "i", "toggle")
    assert state["state"] == "off" and state["publicContext"] == {"count": 7}
    upgrade = (await transitions(admin, "t", "i"))[-2]
    assert upgrade["state"] == "lit" and upgrade["event"]["migrationPath"] == [m12, m23]
    assert await version_of(admin, "t", "i") == v3


async def test_a_failing_migration_leaves_the_instance_running_on_its_version(admin: StatehostClient):
    v1 = await deploy(admin, "t", machine(4, TOGGLE_V1), first=True)
    v2 = await deploy(admin, "t", machine(4, TOGGLE_V2))
    v3 = await deploy(admin, "t", machine(4, TOGGLE_V2))
    throwing = b"""export const upgradeState = (path) => { console.log("about to fail"); throw new Error("no mapping for " + path.join(".")); };
export const upgradeContext = (o, n, ctx) => ctx;"""
    await admin.migrations.create("t", v1, v2, throwing)
    invalid = b"export const upgradeState = () => ['nowhere'];\nexport const upgradeContext = (o, n, ctx) => ctx;"
    await admin.migrations.create("t", v1, v3, invalid)
    await admin.instances.create("t", "i")
    for target, reason in ((v2, "no mapping for inactive"), (v3, "nowhere")):
        await admin.instances.set_desired_version("t", "i", target)
        state = await admin.instances.send_event("t", "i", "toggle")  # still served, by v1
        assert state["state"] in ("active", "inactive")
        assert await version_of(admin, "t", "i") == v1
        assert "desiredMachineVersion" not in await admin.instances.admin("t", "i")  # cleared; set again to retry
        logs = (await admin.logs.retrieve("2020-01-01T00:00:00.000Z", machine="t"))["logs"]
        failure = [e for e in logs if e["log"].startswith(f"upgrade from {v1} to {target} failed")]
        assert len(failure) == 1 and reason in failure[0]["log"] and failure[0]["outputType"] == "stderr"
    assert "about to fail" in [e["log"] for e in logs]  # the migration's own output is kept
    assert "statebacked.upgrade" not in [t["event"]["type"] for t in await transitions(admin, "t", "i")]
    # A fixed migration between the same versions is preferred to the broken one.
    fixed = await admin.migrations.create("t", v1, v2, migration('{ inactive: "off", active: "on" }'))
    await admin.instances.set_desired_version("t", "i", v2)
    await admin.instances.send_event("t", "i", "toggle")
    assert (await transitions(admin, "t", "i"))[-2]["event"]["migrationPath"] == [fixed]


async def test_no_migration_path_is_a_400(admin: StatehostClient):
    v1 = await deploy(admin, "t", machine(4, TOGGLE_V1), first=True)
    v2 = await deploy(admin, "t", machine(4, TOGGLE_V2))
    await admin.instances.create("t", "i")
    with pytest.raises(NoMigrationPathError):
        await admin.instances.set_desired_version("t", "i", v2)
    await admin.migrations.create("t", v2, v1, migration("{}"))  # the wrong direction does not help
    with pytest.raises(NoMigrationPathError):
        await admin.instances.set_desired_version("t", "i", v2)


async def test_bad_migration_uploads_are_refused_and_store_nothing(api: Api, admin: StatehostClient):
    v1 = await deploy(admin, "t", machine(4, TOGGLE_V1), first=True)
    v2 = await deploy(admin, "t", machine(4, TOGGLE_V2))
    other = await deploy(admin, "other", machine(4, TOGGLE_V1), first=True)
    cases = [
        ((v1, v1), migration("{}"), "from one version to another"),
        ((v1, other), migration("{}"), "is not a version of machine 't'"),
        ((v1, "ver_nope"), migration("{}"), "is not a version of machine 't'"),
        ((v1, v2), b"export const upgradeState = (p) => p;", "upgradeContext"),
        ((v1, v2), b"export const upgradeState = (p) => p;;; }", "could not be bundled"),
        ((v1, v2), b"import fs from 'node:fs'; export const upgradeState = (p) => p;", "node:fs"),
    ]
    for (source, target), code, fragment in cases:
        with pytest.raises(StatehostError) as refused:
            await admin.migrations.create("t", source, target, code)
        assert refused.value.status == 400 and fragment in str(refused.value), (fragment, refused.value)
    assert await api.engine.store.migration_edges((await api.engine.store.machines.machine(api.org_id, "t")).id) == []
    status, body = await api.call(
        "POST", "/machines/t/migrations", body={"fromMachineVersionId": v1, "toMachineVersionId": v2, "extra": 1}
    )
    assert status == 400 and body["code"] == "invalid-parameter"
    status, body = await api.call("PUT", "/machines/t/migrations/mig_forged.abc")
    assert status == 404


def test_migration_chain_is_the_shortest_preferring_earlier_edges():
    from server.upgrades import migration_chain

    edges = [("a", "b", "m-ab-new"), ("a", "b", "m-ab-old"), ("b", "c", "m-bc"), ("c", "d", "m-cd"), ("a", "d", "m-ad")]
    assert migration_chain(edges, "a", "a") == []
    assert migration_chain(edges, "a", "b") == ["m-ab-new"]
    assert migration_chain(edges, "a", "c") == ["m-ab-new", "m-bc"]
    assert migration_chain(edges, "a", "d") == ["m-ad"]  # fewest migrations
    assert migration_chain(edges, "d", "a") is None  # edges have a direction
    assert migration_chain([("a", "b", "1"), ("b", "a", "2")], "a", "z") is None  # cycles end
