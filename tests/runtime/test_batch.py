"""Windows of several instances begun in one executor call (runtime/batch.py): the same rounds as one
window at a time, a fault stays with its instance, and on live actors the second batch steps them
live."""

from __future__ import annotations

from typing import Any

import pytest

from runtime import (
    ActorBatchWindow,
    ActorHost,
    ActorSettings,
    BatchWindow,
    Outcome,
    Round,
    StepRequest,
    run_actor_windows,
    run_window,
    run_windows,
)
from tests.runtime.test_actor_host import HOSTILE, comparable
from tests.support import prepare

NAMES = [f"b{n}" for n in range(6)]


async def _created(prepared, executor, transport, clock) -> dict[str, Any]:
    """Each instance created through one ordinary window: name -> its committed snapshot."""
    snapshots: dict[str, Any] = {}
    for name in NAMES:
        rounds: list[Round] = []

        async def commit(round_: Round, tag: object, rounds: list[Round] = rounds) -> None:
            rounds.append(round_)

        result = await run_window(
            prepared,
            StepRequest("create", name, None),
            executor=executor,
            commit=commit,
            transport=transport,
            clock=clock,
        )
        assert result.ok
        snapshots[name] = rounds[-1].persisted
    return snapshots


@pytest.mark.parametrize("major", [4, 5])
async def test_a_batch_commits_what_one_window_at_a_time_commits(major, bundler, engine, executor, transport, clock):
    prepared = prepare(bundler, engine, HOSTILE[major], major)
    snapshots = await _created(prepared, executor, transport, clock)
    events = {name: ("oops" if name == "b3" else "ping") for name in NAMES}

    alone: dict[str, list[Round]] = {}
    for name in NAMES:
        rounds: list[Round] = []

        async def commit(round_: Round, tag: object, rounds: list[Round] = rounds) -> None:
            rounds.append(round_)

        await run_window(
            prepared,
            StepRequest("event", name, None, persisted=snapshots[name], event={"type": events[name]}),
            executor=executor,
            commit=commit,
            transport=transport,
            clock=clock,
            tag=name,
        )
        alone[name] = rounds

    together: dict[str, list[tuple[Round, object]]] = {name: [] for name in NAMES}

    def committer(name: str):  # type: ignore[no-untyped-def]
        async def commit(round_: Round, tag: object) -> None:
            together[name].append((round_, tag))

        return commit

    windows = [
        BatchWindow(
            StepRequest("event", name, None, persisted=snapshots[name], event={"type": events[name]}),
            committer(name),
            tag=name,
        )
        for name in NAMES
    ]
    results = await run_windows(prepared, windows, executor=executor, transport=transport, clock=clock)
    for name, result in zip(NAMES, results, strict=True):
        assert not isinstance(result, Exception)
        if name == "b3":  # the machine threw: nothing committed, and only this window says so
            assert result.outcome is Outcome.GUEST_ERROR and together[name] == [] and alone[name] == []
            continue
        assert result.ok and result.quiescent
        assert [tag for _, tag in together[name]] == [name]  # the request's own round carries its tag
        assert [comparable(r) for r, _ in together[name]] == [comparable(r) for r in alone[name]]
        assert together[name][0][0].transitions[-1].public_context == {"n": 1}


@pytest.mark.parametrize("major", [4, 5])
async def test_a_batch_on_live_actors_restores_once_then_steps_them_live(
    major, bundler, engine, executor, transport, clock
):
    prepared = prepare(bundler, engine, HOSTILE[major], major)
    snapshots = await _created(prepared, executor, transport, clock)
    host = ActorHost(prepared, ActorSettings(vms=2))
    seqs = {name: 1 for name in NAMES}
    committed: dict[str, list[int]] = {name: [] for name in NAMES}

    def committer(name: str):  # type: ignore[no-untyped-def]
        async def commit(round_: Round, tag: object) -> int:
            seqs[name] += len(round_.transitions)
            snapshots[name] = round_.persisted
            committed[name].append(round_.transitions[-1].public_context["n"])
            return seqs[name]

        return commit

    try:
        for batch in range(3):
            windows = [
                ActorBatchWindow(
                    name,
                    seqs[name],
                    StepRequest("event", name, None, persisted=snapshots[name], event={"type": "ping"}),
                    committer(name),
                    tag=name,
                )
                for name in NAMES
            ]
            results = await run_actor_windows(host, windows, executor=executor, transport=transport, clock=clock)
            for result in results:
                assert not isinstance(result, Exception)
                window_result, step = result
                assert window_result.ok and window_result.quiescent
                assert step.restored is (batch == 0)  # built from the snapshot once, then live
            assert all(host.is_live(name) for name in NAMES)
        assert committed == {name: [1, 2, 3] for name in NAMES}
        stats = host.stats()
        assert (stats.restores, stats.live_steps) == (len(NAMES), 2 * len(NAMES))
    finally:
        host.close()
