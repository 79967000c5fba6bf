"""Run a fixture scenario (fixtures/machines/README.md) in the statehost sandbox, step by step.

Each step is its own settle window in a fresh sandbox that restores the committed snapshot, exactly
as the server will run it; results use the same shape as tests/node/drive.mjs prints, so that the two
can be compared entry for entry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime import Bundler, Executor, FakeClock, MachineBundle, PreparedMachine, Transport, Upload
from runtime.limits import Outcome
from runtime.local import LocalInstance

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "machines"
INSTANCE_NAME = "fixture-instance"
DEFAULT_AUTH = {"userId": "fixture-user"}


@dataclass(frozen=True)
class Fixture:
    name: str
    major: int
    source: Path
    scenario: Path

    @property
    def id(self) -> str:
        return f"{self.name}-v{self.major}"

    def load_scenario(self, stub_url: str) -> dict[str, Any]:
        return json.loads(self.scenario.read_text().replace("{{STUB_URL}}", stub_url))


def all_fixtures() -> list[Fixture]:
    found = []
    for folder in sorted(FIXTURES.iterdir()):
        for major in (4, 5):
            source = folder / f"v{major}" / "machine.ts"
            if not source.exists():
                continue
            scenario = folder / f"scenario.v{major}.json"
            if not scenario.exists():
                scenario = folder / "scenario.json"
            found.append(Fixture(folder.name, major, source, scenario))
    return found


def bundle_fixture(bundler: Bundler, fixture: Fixture) -> MachineBundle:
    return bundler.bundle(Upload("machine.ts", fixture.source.read_bytes(), xstate_major=fixture.major))


def _view(inst: LocalInstance) -> dict[str, Any]:
    current = inst.current
    assert current is not None
    return {
        "state": current.state,
        "context": current.context,
        "publicContext": dict(current.public_context),
        "tags": sorted(current.tags),
        "done": current.done,
    }


def _window_entry(inst: LocalInstance, result) -> dict[str, Any]:
    if result.outcome is Outcome.DENIED:
        return {"denied": True}
    if not result.ok:
        return {"error": result.error or result.outcome.value}
    if result.late_fault is not None:
        return {"error": result.late_fault.error or result.late_fault.outcome.value}
    return _view(inst)


async def run_scenario(
    prepared: PreparedMachine,
    scenario: dict[str, Any],
    *,
    executor: Executor,
    transport: Transport,
    clock: FakeClock,
    persisted_log: list[Any] | None = None,
) -> list[dict[str, Any]]:
    """Run every step; return one result entry per step (drive.mjs's format)."""
    inst = LocalInstance(prepared, executor, transport, clock, name=INSTANCE_NAME)
    results: list[dict[str, Any]] = []
    for step in scenario["steps"]:
        auth = step.get("authContext", DEFAULT_AUTH)
        if "create" in step:
            create = step["create"]
            result = await inst.create(create.get("context"), create.get("authContext", DEFAULT_AUTH))
            entry = _window_entry(inst, result)
        elif "event" in step:
            result = await inst.send(step["event"], auth)
            entry = _window_entry(inst, result)
        elif "advance" in step:
            windows = await inst.advance_to(clock.now_ms() + int(step["advance"]), clock.set)
            failed = [w for w in windows if not w.ok or w.late_fault is not None]
            entry = _window_entry(inst, failed[0]) if failed else _view(inst)
        elif "read" in step:
            decision = await inst.read(step["read"].get("authContext", DEFAULT_AUTH))
            entry = {"allowed": decision.allowed}
        else:
            raise ValueError(f"unknown scenario step {step}")
        results.append(entry)
        if persisted_log is not None and inst.persisted is not None:
            persisted_log.append(inst.persisted)
    return results


def _subset(expected: Any, actual: Any) -> bool:
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(k in actual and _subset(v, actual[k]) for k, v in expected.items())
    return expected == actual


def check_expectations(scenario: dict[str, Any], results: list[dict[str, Any]]) -> list[str]:
    """Every mismatch between a step's ``expect`` and its result, in words."""
    problems = []
    for index, (step, result) in enumerate(zip(scenario["steps"], results, strict=True)):
        for key, want in step.get("expect", {}).items():
            got = result.get(key)
            if key == "tags":
                ok = got is not None and sorted(want) == sorted(got)
            elif key == "context":
                ok = _subset(want, got)
            elif key == "error":
                ok = isinstance(got, str) and want in got
            else:
                ok = want == got
            if not ok:
                problems.append(f"step {index} ({json.dumps(step)[:80]}): {key} expected {want!r}, got {got!r}")
    return problems


__all__ = [
    "FIXTURES",
    "Fixture",
    "all_fixtures",
    "bundle_fixture",
    "check_expectations",
    "run_scenario",
]
