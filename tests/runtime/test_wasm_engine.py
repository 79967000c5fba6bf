"""What only the WASM engine promises (the shared suite runs against both engines through the
``engine`` fixture): the memory cap, interrupts at JS level with the epoch as a backstop, the stack
limit without corruption, traps confined to one instance, pre-initialised images and their cache."""

from __future__ import annotations

import asyncio
import time

import pytest

from runtime import Limits, Outcome, StepRequest
from runtime.engines import make_engine, quickjs_wasm
from runtime.engines.guest_loop import VMError
from runtime.engines.quickjs_wasm import WasmRuntime, _diff, _WasmProvider, _WasmVM, preinitialise
from runtime.wasm_build import SHADOW_STACK_BYTES
from tests.runtime.test_hostile import hostile_machine
from tests.support import local, prepare


@pytest.fixture(scope="module")
def runtime() -> WasmRuntime:
    return WasmRuntime.get()


@pytest.fixture(scope="module")
def wasm(bundler):
    return make_engine("quickjs-wasm", bundler.runtime_api)


def _vm(runtime: WasmRuntime, limits: Limits | None = None) -> _WasmVM:
    vm = _WasmProvider(runtime).open((), limits or Limits())
    assert isinstance(vm, _WasmVM)
    return vm


@pytest.mark.parametrize("major", [4, 5])
async def test_a_memory_bomb_is_capped(major, bundler, wasm, executor, transport, clock):
    bomb = "() => { const a = []; for (;;) a.push(new Array(1e5).fill(7)); }"
    # Only the memory limit is within reach (two minutes of CPU, ten of wall time; the bomb needs
    # about 0.1 s of CPU): memory wins by construction on a busy machine. Speed lives in bench/.
    limits = Limits(memory_bytes=64 * 2**20, cpu_ms=120_000, entry_wall_ms=600_000)
    inst = local(prepare(bundler, wasm, hostile_machine(bomb, major), major, limits=limits), executor, transport, clock)
    assert (await inst.create()).ok
    result = await inst.send("go")
    assert result.outcome is Outcome.EXCEEDED_MEMORY, result.error
    assert "memory_bytes" in (result.error or "")
    assert (await inst.send("ping")).ok  # the next window starts from a pristine instance


def test_the_store_caps_linear_memory_even_without_the_quickjs_limit(runtime):
    vm = _vm(runtime, Limits(memory_bytes=32 * 2**20))
    vm.call_i32("g_set_limits", 0, 256 * 1024, results=0)  # QuickJS's own limit off: only the store is left
    with pytest.raises(VMError) as caught:
        vm.eval("const a = []; for (;;) a.push(new Array(1e5).fill(7));")
    assert "out of memory" in str(caught.value) or caught.value.outcome is Outcome.EXCEEDED_MEMORY
    assert vm.memory_size() <= vm.memory_cap


def test_an_interrupt_is_a_js_level_error_a_catching_loop_cannot_swallow(runtime, monkeypatch):
    # The epoch backstop (a trap after 2 x cpu_ms + EPOCH_GRACE_MS of wall time) must not win the
    # race on a busy machine, where 150 ms of this thread's CPU can take seconds of wall time.
    monkeypatch.setattr(quickjs_wasm, "EPOCH_GRACE_MS", 600_000)
    vm = _vm(runtime, Limits(cpu_ms=150))
    vm.start_entry(time.monotonic() + 60)
    started = time.monotonic()
    with pytest.raises(VMError) as caught:
        vm.eval("for (;;) { try { for (;;) {} } catch (e) {} }")
    elapsed = time.monotonic() - started
    assert "interrupted" in str(caught.value) and caught.value.outcome is None  # EXCEEDED_CPU by its text
    assert elapsed > 0.14  # the thread's CPU time, 150 ms, cannot pass in less wall time
    assert vm.eval("String(6 * 7)") == "42"  # no trap: the instance itself is intact


def test_the_entry_wall_time_interrupts_too(runtime):
    vm = _vm(runtime, Limits(cpu_ms=10_000))
    vm.start_entry(time.monotonic() + 0.1)
    with pytest.raises(VMError) as caught:
        vm.eval("for (;;) {}")
    assert caught.value.outcome is Outcome.EXCEEDED_WALL_TIME


def test_the_epoch_deadline_is_the_backstop_when_nothing_polls(runtime):
    vm = _WasmVM(runtime, Limits(cpu_ms=100), fresh=True)
    vm.call_i32("g_init", 0, 256 * 1024, 0)  # a second runtime without the interrupt handler
    started = time.monotonic()
    with pytest.raises(VMError) as caught:
        vm.eval("for (;;) {}")
    assert caught.value.outcome is Outcome.EXCEEDED_CPU and "trapped" in str(caught.value)
    assert time.monotonic() - started > 2.0  # 2 x cpu_ms + EPOCH_GRACE_MS of wall time, at the earliest
    assert vm.dead is not None


@pytest.mark.parametrize("stack_bytes", [256 * 1024, 1024 * 1024, 64 * 1024 * 1024])
def test_recursion_at_the_stack_limit_does_not_corrupt(runtime, stack_bytes):
    vm = _vm(runtime, Limits(stack_bytes=stack_bytes))  # 64 MiB is clamped below the shadow stack
    with pytest.raises(VMError) as caught:
        vm.eval("const f = (n) => f(n + 1) + 1; f(0);")
    assert caught.value.outcome is Outcome.EXCEEDED_STACK
    depth = vm.eval("let d = 0; const g = () => { d++; g(); }; try { g(); } catch (e) {} String(d)")
    assert depth is not None and int(depth) > 100
    # The same instance still computes correctly (no static data was overwritten) ...
    assert vm.eval("JSON.stringify([1, 'two', { three: 3 }].map((x) => typeof x))") == '["number","string","object"]'
    assert vm.call_entry("collect", "{}") is not None


async def test_the_next_event_after_a_stack_overflow_runs_on_a_fresh_instance(
    bundler, wasm, executor, transport, clock
):
    recurse = "() => { const f = (n) => f(n + 1) + 1; f(0); }"
    limits = Limits(stack_bytes=SHADOW_STACK_BYTES * 4)
    inst = local(prepare(bundler, wasm, hostile_machine(recurse, 5), 5, limits=limits), executor, transport, clock)
    assert (await inst.create()).ok
    assert (await inst.send("go")).outcome is Outcome.EXCEEDED_STACK
    ping = await inst.send("ping")
    assert ping.ok and inst.current is not None and inst.current.public_context == {"n": 1}


def test_a_trap_in_one_instance_leaves_the_others_intact(runtime):
    healthy = _vm(runtime)
    healthy.eval("globalThis.kept = 41;")
    broken = _vm(runtime)
    with pytest.raises(VMError) as caught:  # what a QuickJS memory bug amounts to: a wild access
        broken.call_i32("g_call_entry", 0xFFFFFFF0, 8, 8)
    assert caught.value.outcome is Outcome.GUEST_ERROR and "trapped" in str(caught.value)
    with pytest.raises(VMError, match="discarded"):
        broken.eval("1")
    deep = _vm(runtime)  # C recursion (the JSON parser) runs out of the native wasm stack: a clean trap
    with pytest.raises(VMError) as caught:
        deep.eval("JSON.parse('['.repeat(200000))")
    assert caught.value.outcome is Outcome.EXCEEDED_STACK and deep.dead is not None
    assert healthy.eval("String(++globalThis.kept)") == "42"
    assert _vm(runtime).eval("typeof kept") == "undefined"


def test_every_instance_starts_pristine(bundler, wasm, clock):
    body = hostile_machine("() => { String.prototype.shout = () => '!'; globalThis.leak = 1; }", 5)
    prepared = prepare(bundler, wasm, body, 5)
    with prepared.new_instance() as first:
        assert first.begin(StepRequest("create", "a", {}), clock.now_ms()).ok
        assert first.deliver({"type": "go"}, {}, clock.now_ms()).ok
    with prepared.new_instance() as second:
        assert second.begin(StepRequest("create", "b", {}), clock.now_ms()).ok
        vm = second._sandbox.vm  # type: ignore[attr-defined]
        assert vm.attached  # restored from the machine's image, not loaded again
        assert vm.eval("typeof ''.shout + typeof leak") == "undefinedundefined"


def test_the_prelude_image_is_a_rewritten_module(runtime):
    vm = _vm(runtime)
    assert vm.eval("typeof __statehost_entry + ' ' + typeof TextEncoder") == "undefined function"
    assert vm.stack_pointer() == runtime.image_stack_pointer
    # Rewriting is deterministic and keeps a module wasmtime accepts.
    image = preinitialise(runtime.guest_bytes, runtime.image_memory, {runtime.stack_pointer_index: 1 << 20})
    assert image == preinitialise(runtime.guest_bytes, runtime.image_memory, {runtime.stack_pointer_index: 1 << 20})
    assert image[:8] == b"\0asm\x01\0\0\0"


def test_compiled_modules_come_from_the_cache(runtime):
    again = WasmRuntime()  # a second runtime in this process, as in a restarted server
    assert not any(key.startswith("compile_") for key in again.timings), again.timings
    assert again.image_memory == runtime.image_memory


async def test_a_hot_machine_gets_its_own_pre_initialised_module(
    bundler, wasm, executor, transport, clock, monkeypatch
):
    from runtime.engines.quickjs_wasm import MachineImage

    monkeypatch.setattr(MachineImage, "COMPILE_AFTER", 2)
    body = hostile_machine("() => {}", 5).replace('id: "hostile"', 'id: "hot"')  # its own image and module
    prepared = prepare(bundler, wasm, body, 5)
    inst = local(prepared, executor, transport, clock)
    assert (await inst.create()).ok
    assert (await inst.send("ping")).ok
    deadline = time.monotonic() + 60
    machine = None
    while time.monotonic() < deadline:
        vm = prepared.open_vm()
        machine = vm.machine  # type: ignore[attr-defined]
        vm.close()
        if machine is not None and machine.pre is not None:
            break
        await asyncio.sleep(0.1)
    assert machine is not None and machine.pre is not None
    for _ in range(3):  # instances of the machine's own module: pristine, and the same state as before
        assert (await inst.send("ping")).ok
    assert inst.current is not None and inst.current.public_context == {"n": 4}


def test_preparing_a_machine_evaluates_its_bundle_once(bundler, wasm, clock, monkeypatch):
    """The VM that validates the machine also gives the image (the bundle is ~9 ms of evaluation,
    paid by every upload and by the first event of each version after a restart)."""
    evaluated: list[int] = []
    original = _WasmVM.eval

    def counting(self: _WasmVM, code: str) -> str | None:
        evaluated.append(len(code))
        return original(self, code)

    monkeypatch.setattr(_WasmVM, "eval", counting)
    prepared = prepare(bundler, wasm, hostile_machine("() => { globalThis.ran = (globalThis.ran || 0) + 1; }", 4), 4)
    assert len(evaluated) == 1 and evaluated[0] == len(prepared.bundle.code)
    for name in ("a", "b"):  # instances start from that image: attached, nothing evaluated again
        with prepared.new_instance() as inst:
            assert inst.begin(StepRequest("create", name, {}), clock.now_ms()).ok
            assert inst.deliver({"type": "go"}, {}, clock.now_ms()).ok
            assert inst._sandbox.vm.eval("String(globalThis.ran)") == "1"  # type: ignore[attr-defined]
    assert len(evaluated) == 3  # the two evals above, nothing else


def test_an_image_is_the_pages_that_differ(runtime):
    before = bytes(range(256)) * 64  # four 4 KiB pages
    after = bytearray(before) + bytes(4096) + b"\x01" * 4096  # grown by a zero page and a non-zero one
    after[4096 + 7] ^= 0xFF  # page 1 changed
    after[3 * 4096] ^= 0xFF  # page 3 changed
    runs = _diff(before, bytes(after))
    assert [(offset, len(data)) for offset, data in runs] == [(4096, 4096), (3 * 4096, 4096), (5 * 4096, 4096)]
    rebuilt = bytearray(before) + bytes(len(after) - len(before))
    for offset, data in runs:
        rebuilt[offset : offset + len(data)] = data
    assert rebuilt == after
