"""Timer rules stated once (issue 18): what set / cancel / cancel_all do to an instance's timer rows
is ``runtime.apply_timer_op`` (LocalInstance uses it); the store applies the same rules in SQL, and
may not import the runtime. These tests hold the two equal on a real SQLite file: the same fields,
and the same rows after the same ops, for hand-picked cases and for seeded random sequences."""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any

import pytest

from runtime import TimerOp, TimerRow, apply_timer_op
from server import store as store_module
from server.store import RoundCommit, Store, TimerSet, TransitionRecord

MESSAGE = {"machineName": "other", "machineInstanceName": "o1", "kind": "event"}
Round = tuple[int, list[TimerOp]]  # (now_ms, the round's timer ops in order)


def _set(key: str | None, delay: int, kind: str = "tick", target: dict[str, Any] | None = None) -> TimerOp:
    return TimerOp("set", key, delay, {"type": kind}, target)


CASES: dict[str, list[Round]] = {
    "cancel reaches the latest row of its id only": [
        (0, [_set("a", 100), _set("a", 200), _set("b", 50)]),
        (10, [TimerOp("cancel", "a")]),
    ],
    "cancel reaches a delayed message": [
        (0, [_set("m", 500, "hello", MESSAGE), _set("t", 500)]),
        (1, [TimerOp("cancel", "m")]),
    ],
    "cancel of an unknown id does nothing": [(0, [_set("a", 10)]), (5, [TimerOp("cancel", "zzz")])],
    "cancel_all keeps messages already due": [
        (0, [_set("m1", 0, "now", MESSAGE), _set("m2", 1000, "later", MESSAGE), _set("own", 1000), _set(None, 5)]),
        (500, [TimerOp("cancel_all")]),
    ],
    "ops apply in order within a round": [(0, [_set("a", 10), TimerOp("cancel", "a"), _set("a", 20)])],
    "anonymous rows are never cancelled by id": [
        (0, [_set(None, 10), _set(None, 20)]),
        (1, [TimerOp("cancel", "anonymous")]),
    ],
}


def _random_rounds(seed: int) -> list[Round]:
    rng = random.Random(seed)
    rounds: list[Round] = []
    now = 0
    for _ in range(rng.randint(1, 6)):
        now += rng.choice([0, 1, 50, 400])
        ops = []
        for _ in range(rng.randint(1, 5)):
            pick = rng.random()
            key = rng.choice(["a", "b", "c", None])
            if pick < 0.6:
                target = MESSAGE if rng.random() < 0.3 else None
                ops.append(_set(key, rng.choice([0, 10, 300, 1000]), rng.choice(["x", "y"]), target))
            elif pick < 0.9:
                ops.append(TimerOp("cancel", key or "a"))
            else:
                ops.append(TimerOp("cancel_all"))
        rounds.append((now, ops))
    return rounds


def _apply_in_memory(rounds: list[Round]) -> list[TimerRow]:
    rows: dict[int, TimerRow] = {}
    next_id = 0
    for now, ops in rounds:
        for op in ops:
            next_id += 1
            apply_timer_op(rows, op, now_ms=now, row_id=next_id)
    return [rows[i] for i in sorted(rows)]


async def _apply_in_the_store(store: Store, rounds: list[Round]) -> list[store_module.TimerRow]:
    org = await store.create_org("o", 0)
    machine = await store.create_machine(org, "m", [], 0)

    async def version(tx: Any) -> None:
        await tx.execute(
            "INSERT INTO machine_versions (id, machine_id, status, created_ms) VALUES ('ver_x', ?, 'final', 0)",
            (machine,),
        )

    await store.write(version)
    persisted = {"major": 4, "xstate": {}, "inflight": []}
    first = RoundCommit(
        0, 0, persisted, "ver_x", [TransitionRecord(1, 1, "a", {"type": "xstate.init"}, {}, (), False)], {}
    )
    instance_id = await store.insert_instance(machine, "i", first, 0)
    for now, ops in rounds:
        # The server's translation of a round's ops (server/instances.py, _commit_round).
        timer_ops: list[tuple[Any, Any]] = []
        for op in ops:
            if op.op == "set":
                assert op.event is not None and op.delay_ms is not None
                timer_ops.append(("set", TimerSet(op.id, op.event, now + op.delay_ms, op.target)))
            else:
                timer_ops.append((op.op, op.id))
        await store.commit_round(RoundCommit(instance_id, 1, persisted, "ver_x", [], {}, timer_ops=timer_ops), now)
    return sorted(await store.timers_of(instance_id), key=lambda row: row.id)


def _comparable(rows: list[Any]) -> list[tuple[Any, ...]]:
    """The rows in the order they were made, anonymous keys (which each host makes itself) blurred."""
    return [("anonymous" if r.key.startswith("anonymous:") else r.key, dict(r.event), r.due_ms, r.target) for r in rows]


def test_the_store_row_has_every_field_of_the_runtime_row():
    runtime_fields = {f.name: f.type for f in dataclasses.fields(TimerRow)}
    store_fields = {f.name: f.type for f in dataclasses.fields(store_module.TimerRow)}
    assert set(runtime_fields) <= set(store_fields), set(runtime_fields) - set(store_fields)


@pytest.mark.parametrize("name", sorted(CASES))
async def test_the_store_applies_the_runtime_rules(tmp_path, name):
    async with Store(tmp_path / "s.db") as store:
        in_the_store = await _apply_in_the_store(store, CASES[name])
    assert _comparable(in_the_store) == _comparable(_apply_in_memory(CASES[name]))


def test_the_cases_mean_what_they_say():
    # Not vacuous: the rules remove what the case names say, in memory (and so, above, in SQL).
    latest = _apply_in_memory(CASES["cancel reaches the latest row of its id only"])
    assert [(r.key, r.due_ms) for r in latest] == [("a", 100), ("b", 50)]
    assert [r.key for r in _apply_in_memory(CASES["cancel reaches a delayed message"])] == ["t"]
    stopped = _apply_in_memory(CASES["cancel_all keeps messages already due"])
    assert [(r.key, r.target is not None) for r in stopped] == [("m1", True)]


async def test_random_sequences_leave_the_same_rows(tmp_path):
    for seed in range(40):
        rounds = _random_rounds(seed)
        async with Store(tmp_path / f"s{seed}.db") as store:
            in_the_store = await _apply_in_the_store(store, rounds)
        assert _comparable(in_the_store) == _comparable(_apply_in_memory(rounds)), (seed, rounds)


MESSAGING_MACHINE = """import { createMachine, assign, actions } from "xstate";
import { spawnPersistentInstance, sendTo } from "@statebacked/machine";

export default createMachine({
  predictableActionArguments: true,
  id: "parent",
  initial: "idle",
  context: {},
  states: {
    idle: {
      on: {
        spawn: {
          actions: assign({
            worker: () =>
              spawnPersistentInstance({ machineName: "worker", machineInstanceName: "w-1" }, { context: {}, name: "w" }),
          }),
        },
        later: { actions: sendTo((ctx: any) => ctx.worker, { type: "work" }, { delay: 60000, id: "later" }) },
        never: { actions: actions.cancel("later") },
      },
    },
  },
});
export const allowRead = () => true;
export const allowWrite = () => true;
"""


def test_the_local_runner_keeps_and_cancels_delayed_messages_as_the_server_does(tmp_path, capsys):
    # Before the rules were stated once, `statehost run` kept messages out of its timer rows, so
    # cancel(id) could not reach a delayed message there (the server's cancel does).
    from server.cli import main

    machine = tmp_path / "machine.ts"
    machine.write_text(MESSAGING_MACHINE)
    argv = ["run", str(machine), "--engine", "quickjs-native", "--json"]
    assert main([*argv, "--event", "spawn", "--event", "later", "--event", "never", "--advance", "1"]) == 0
    steps = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [s["errors"] for s in steps] == [[]] * 5
    timers = {
        s["step"]: [(t["id"], t["event"]["type"], t.get("target", {}).get("kind")) for t in s["timers"]] for s in steps
    }
    assert timers["event later"][1:] == [("later", "work", "event")]
    assert (
        timers["event never"] == timers["event spawn"] == [(timers["event spawn"][0][0], "statebacked.spawn", "spawn")]
    )
    assert timers["advance 1 ms"] == []  # the spawn fell due: it left (recorded in the outbox), no event to itself
