"""The store on a real SQLite file: reads see every commit that returned, even under a flood of
concurrent reads; group commit batches operations and isolates a failing one."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from server.errors import Conflict
from server.store import RoundCommit, Store, TransitionRecord


async def _instance(store: Store) -> int:
    org = await store.create_org("o", 0)
    machine = await store.create_machine(org, "m", [], 0)

    async def version(conn):
        await conn.execute(
            "INSERT INTO machine_versions (id, machine_id, status, created_ms) VALUES ('ver_x', ?, 'final', 0)",
            (machine,),
        )

    await store.write(version)
    first = RoundCommit(
        0,
        0,
        {"major": 4, "xstate": {}, "inflight": []},
        "ver_x",
        [TransitionRecord(1, 1, "a", {"type": "xstate.init"}, {}, (), False)],
        {},
    )
    return await store.insert_instance(machine, "i", first, 0)


def _round(instance_id: int, seq: int) -> RoundCommit:
    return RoundCommit(
        instance_id,
        seq,
        {"major": 4, "xstate": {}, "inflight": []},
        "ver_x",
        [TransitionRecord(seq + 1, seq + 1, "a", {"type": "go"}, {}, (), False)],
        {},
    )


async def test_a_read_after_a_commit_sees_it_even_while_other_reads_are_in_flight(tmp_path):
    """Found by bench/engine_throughput: with execute and fetch as separate jobs on the reader
    connection, a concurrent query's open statement pinned an old WAL snapshot, reads saw an old seq,
    and the instance's next commit lost its optimistic lock against itself."""
    async with Store(tmp_path / "s.db") as store:
        instance_id = await _instance(store)
        stop = asyncio.Event()

        async def flood() -> None:
            while not stop.is_set():
                await asyncio.gather(*(store.instance_by_id(instance_id) for _ in range(8)))

        flooders = [asyncio.create_task(flood()) for _ in range(4)]
        try:
            for seq in range(1, 120):
                await store.commit_round(_round(instance_id, seq), 0)
                row = await store.instance_by_id(instance_id)
                assert row is not None and row.seq == seq + 1, f"stale read: {row.seq if row else None} != {seq + 1}"
        finally:
            stop.set()
            for task in flooders:
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def test_group_commit_isolates_a_failing_operation(tmp_path):
    async with Store(tmp_path / "s.db") as store:
        instance_id = await _instance(store)
        good = store.commit_round(_round(instance_id, 1), 0)
        stale = store.commit_round(_round(instance_id, 1), 0)  # the same expected seq: must lose
        results = await asyncio.gather(good, stale, return_exceptions=True)
        assert results[0] is None and isinstance(results[1], Conflict)
        row = await store.instance_by_id(instance_id)
        assert row is not None and row.seq == 2
        assert [t.seq for t in await store.transitions(instance_id)] == [1, 2]
        assert store.batches >= 1


@pytest.mark.parametrize("group_commit", [True, False])
async def test_many_writers_share_transactions_only_with_group_commit(tmp_path, group_commit):
    async with Store(tmp_path / "s.db", group_commit=group_commit) as store:
        orgs_before = store.batches
        await asyncio.gather(*(store.create_org(f"o{n}", 0) for n in range(50)))
        batches = store.batches - orgs_before
        assert batches == 50 if not group_commit else batches < 50


async def test_the_database_is_readable_by_its_owner_only(tmp_path):
    async with Store(tmp_path / "data" / "s.db") as store:
        await store.create_org("o", 0)
    assert oct((tmp_path / "data").stat().st_mode & 0o777) == "0o700"
    assert oct((tmp_path / "data" / "s.db").stat().st_mode & 0o777) == "0o600"
