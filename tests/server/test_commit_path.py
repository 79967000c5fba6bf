"""The commit path's cost, pinned: the statements a round sends (counted by SQLite's own trace
callback and by the database layer's counter), and group commit grouping concurrent commits into
fewer transactions than commits on both databases, with a failing commit failing alone
(docs/decisions.md, "A lean commit path")."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from server.errors import Conflict
from server.indexes import attach
from server.store import RoundCommit, Store, TransitionRecord
from tests.server.conftest import Deployment
from tests.support import DATABASE_URLS

PERSISTED = {"major": 4, "xstate": {}, "inflight": []}


def _target(db_dir: Path) -> Path | str:
    return DATABASE_URLS.get(db_dir) or db_dir / "s.db"


async def _machine(store: Store) -> int:
    org = await store.create_org("o", 0)
    machine = await store.create_machine(org, "m", [], 0)

    async def version(tx):
        await tx.execute(
            "INSERT INTO machine_versions (id, machine_id, status, created_ms) VALUES ('ver_x', ?, 'final', 0)",
            (machine,),
        )

    await store.write(version)
    return machine


async def _instance(store: Store, machine: int, name: str, index_values=None) -> int:
    first = RoundCommit(
        0,
        0,
        PERSISTED,
        "ver_x",
        [TransitionRecord(1, 1, "a", {"type": "xstate.init"}, {}, (), False, {})],
        {},
        index_values=index_values,
    )
    return await store.insert_instance(machine, name, first, 0)


def _round(instance_id: int, seq: int, index_values=None) -> RoundCommit:
    context = {"n": seq}
    return RoundCommit(
        instance_id,
        seq,
        PERSISTED,
        "ver_x",
        [TransitionRecord(seq + 1, seq + 1, "a", {"type": "go"}, {"n": seq}, ("t",), False, context)],
        context,
        index_values=index_values,
    )


async def _traced(store: Store) -> list[str]:
    """Every statement SQLite runs on the writer's connection from now on (its trace callback)."""
    seen: list[str] = []
    db = store.db

    def install() -> None:
        db._writer.set_trace_callback(seen.append)

    await db._on_writer_thread(install)
    return seen


async def test_a_round_is_begin_update_insert_commit_and_index_entries_are_rewritten_only_when_they_change(
    tmp_path: Path,
):
    async with Store(tmp_path / "s.db") as store:
        machine = await _machine(store)
        instance_id = await _instance(store, machine, "i", index_values={})
        seen = await _traced(store)
        counted = store.db.statements

        await store.commit_round(_round(instance_id, 1, index_values={}), 0)
        assert [s.split(" (")[0].split(" SET")[0] for s in seen] == [
            "BEGIN IMMEDIATE",
            "UPDATE instances",
            "INSERT INTO transitions",
            "COMMIT",
        ], seen
        assert store.db.statements - counted == 4

        # New entries: the old ones go and the new ones come, in the same transaction.
        seen.clear()
        await store.commit_round(_round(instance_id, 2, index_values={"by": ["x", "y"]}), 0)
        assert any(s.startswith("DELETE FROM index_entries") for s in seen)
        assert sum(s.startswith("INSERT INTO index_entries") for s in seen) == 2  # one execution per row
        # The same entries again: nothing to rewrite.
        seen.clear()
        await store.commit_round(_round(instance_id, 3, index_values={"by": ["x", "y"]}), 0)
        assert len(seen) == 4 and not any("index_entries" in s for s in seen), seen
        rows = await store.db.read(
            "SELECT value FROM index_entries WHERE instance_id = ? ORDER BY value", (instance_id,)
        )
        assert [r["value"] for r in rows] == ["x", "y"]

        # Entries written behind this process's back (another writer): a round from a seq this
        # process did not commit rewrites them.
        async def tamper(tx):
            await tx.execute("UPDATE instances SET seq = seq + 1 WHERE id = ?", (instance_id,))
            await tx.execute("DELETE FROM index_entries WHERE instance_id = ?", (instance_id,))

        await store.write(tamper)
        await store.commit_round(_round(instance_id, 5, index_values={"by": ["x", "y"]}), 0)
        rows = await store.db.read(
            "SELECT value FROM index_entries WHERE instance_id = ? ORDER BY value", (instance_id,)
        )
        assert [r["value"] for r in rows] == ["x", "y"]

        # Each JSON value is written once per column, and what was written reads back the same.
        row = await store.instance_by_id(instance_id)
        assert row is not None and row.seq == 6 and row.context == {"n": 5} and row.tags == ["t"]
        transitions = await store.transitions(instance_id)
        assert transitions[-1].context == {"n": 5} and transitions[-1].event == {"type": "go"}


async def test_a_failed_round_forgets_the_index_entries_it_meant_to_write(tmp_path: Path):
    async with Store(tmp_path / "s.db") as store:
        machine = await _machine(store)
        instance_id = await _instance(store, machine, "i", index_values={"by": ["a"]})
        with pytest.raises(Conflict):
            await store.commit_round(_round(instance_id, 7, index_values={"by": ["a"]}), 0)  # a stale seq
        seen = await _traced(store)
        await store.commit_round(_round(instance_id, 1, index_values={"by": ["a"]}), 0)
        # A failed round may mean another writer moved the instance on: its entries are rewritten.
        assert any(s.startswith("DELETE FROM index_entries") for s in seen)
        rows = await store.db.read("SELECT value FROM index_entries WHERE instance_id = ?", (instance_id,))
        assert [r["value"] for r in rows] == ["a"]


async def test_an_event_through_the_engine_sends_the_fewest_statements(durable, deploy: Deployment):
    """A whole event through the instance service with indexes attached, on both backends: the
    round's UPDATE and INSERT inside BEGIN/COMMIT (PostgreSQL adds the lease fence's SELECT)."""
    attach(durable)
    await deploy.machine(
        "toggle",
        "export default createMachine({ id: 't', initial: 'off', states: { off: { on: { flip: 'on' } },"
        " on: { on: { flip: 'off' } } } });",
        5,
    )
    svc = durable.instances
    await svc.create(deploy.org_id, "toggle", "i1")
    await svc.send_event(deploy.org_id, "toggle", "i1", {"type": "flip"}, {})  # warm: index entries known
    db = durable.store.db
    expected = 5 if durable.store.shared else 4
    for n in range(5):
        before = db.statements
        state = await svc.send_event(deploy.org_id, "toggle", "i1", {"type": "flip"}, {})
        assert state.state == ("on" if n % 2 else "off")
        assert db.statements - before == expected


async def test_concurrent_commits_share_transactions_and_a_failing_one_fails_alone(db_dir: Path):
    """On a real SQLite file and on PostgreSQL: 40 rounds committed at once take fewer than 40
    transactions; a round with a stale seq among them fails alone, and every other one is stored."""
    async with Store(_target(db_dir)) as store:
        machine = await _machine(store)
        ids = [await _instance(store, machine, f"i{n}") for n in range(40)]
        batches, operations = store.batches, store.db.operations
        rounds = [store.commit_round(_round(i, 1), 0) for i in ids]
        stale = store.commit_round(_round(ids[0], 1), 0)  # the same expected seq as the first: must lose
        outcomes = await asyncio.gather(*rounds, stale, return_exceptions=True)
        assert outcomes[:-1] == [None] * 40, outcomes
        assert isinstance(outcomes[-1], Conflict), outcomes[-1]
        assert store.db.operations - operations >= 40
        assert store.batches - batches < 40, store.batches - batches
        for instance_id in ids:
            row = await store.instance_by_id(instance_id)
            assert row is not None and row.seq == 2
            assert [t.seq for t in await store.transitions(instance_id)] == [1, 2]


async def test_without_group_commit_every_commit_is_its_own_transaction(db_dir: Path):
    async with Store(_target(db_dir), group_commit=False) as store:
        machine = await _machine(store)
        ids = [await _instance(store, machine, f"i{n}") for n in range(10)]
        batches = store.batches
        await asyncio.gather(*(store.commit_round(_round(i, 1), 0) for i in ids))
        assert store.batches - batches == 10
