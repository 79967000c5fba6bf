"""statehost's sandbox host: bundle uploads, run XState machines in QuickJS under limits.

A pure library: it knows nothing of HTTP, SQL or auth. The server hands it a bundle, a persisted
instance and an event, and gets back rounds to commit and effects to perform after committing.
"""

from . import resources
from .actors import ActorHost, ActorSettings, ActorStep, LiveActorHost, LostActor, MemoryPressure, run_actor_window
from .batch import ActorBatchWindow, BatchWindow, close_all, run_actor_windows, run_windows
from .bundle import Bundler, MachineBundle, Upload
from .clock import Clock, FakeClock, SystemClock
from .engine import Engine, PreparedMachine, PreparedMigration, SandboxInstance
from .engines import ENGINE_NAMES, make_engine
from .engines.quickjs_native import QuickJSNativeEngine
from .errors import BundleError, Diagnostic, HostError, InvalidMachineError, ProtocolError, SandboxError
from .executor import Executor, Lane, Runner, default_workers
from .limits import FetchPolicy, Limits, Outcome
from .local import LocalInstance
from .netguard import address_refusal, url_refusal
from .protocol import (
    Described,
    EffectResult,
    FetchRequest,
    FetchResponse,
    Invoked,
    LogLine,
    ReadDecision,
    ReadRequest,
    Round,
    StateDescription,
    StepRequest,
    Structured,
    TimerOp,
    Transition,
)
from .settle import CommitFn, Delivery, Inbox, WindowResult, run_window
from .timers import TimerRow, apply_timer_op
from .transport import FetchError, Transport
from .workers import WorkerActorHost, WorkerLost, WorkerPool

__all__ = [
    "ENGINE_NAMES",
    "ActorBatchWindow",
    "ActorHost",
    "ActorSettings",
    "ActorStep",
    "BatchWindow",
    "BundleError",
    "Bundler",
    "Clock",
    "CommitFn",
    "Delivery",
    "Described",
    "Diagnostic",
    "EffectResult",
    "Engine",
    "Executor",
    "FakeClock",
    "FetchError",
    "FetchPolicy",
    "FetchRequest",
    "FetchResponse",
    "HostError",
    "Inbox",
    "InvalidMachineError",
    "Invoked",
    "Lane",
    "Limits",
    "LiveActorHost",
    "LocalInstance",
    "LogLine",
    "LostActor",
    "MachineBundle",
    "MemoryPressure",
    "Outcome",
    "PreparedMachine",
    "PreparedMigration",
    "ProtocolError",
    "QuickJSNativeEngine",
    "ReadDecision",
    "ReadRequest",
    "Round",
    "Runner",
    "SandboxError",
    "SandboxInstance",
    "StateDescription",
    "StepRequest",
    "Structured",
    "SystemClock",
    "TimerOp",
    "TimerRow",
    "Transition",
    "Transport",
    "Upload",
    "WindowResult",
    "WorkerActorHost",
    "WorkerLost",
    "WorkerPool",
    "address_refusal",
    "apply_timer_op",
    "close_all",
    "default_workers",
    "make_engine",
    "resources",
    "run_actor_window",
    "run_actor_windows",
    "run_window",
    "run_windows",
    "url_refusal",
]
