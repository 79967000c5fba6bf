"""statehost's sandbox host: bundle uploads, run XState machines in QuickJS under limits.

A pure library: it knows nothing of HTTP, SQL or auth. The server hands it a bundle, a persisted
instance and an event, and gets back rounds to commit and effects to perform after committing.
"""

from .actors import ActorHost, ActorSettings, ActorStep, LostActor, MemoryPressure, run_actor_window
from .bundle import Bundler, MachineBundle, Upload
from .clock import Clock, FakeClock, SystemClock
from .engine import Engine, PreparedMachine, PreparedMigration, SandboxInstance
from .engines.quickjs_native import QuickJSNativeEngine
from .errors import BundleError, Diagnostic, HostError, InvalidMachineError, ProtocolError, SandboxError
from .executor import Executor
from .limits import FetchPolicy, Limits, Outcome
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
from .settle import CommitFn, WindowResult, run_window
from .transport import FetchError, Transport

__all__ = [
    "ActorHost",
    "ActorSettings",
    "ActorStep",
    "BundleError",
    "Bundler",
    "Clock",
    "CommitFn",
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
    "InvalidMachineError",
    "Invoked",
    "Limits",
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
    "SandboxError",
    "SandboxInstance",
    "StateDescription",
    "StepRequest",
    "Structured",
    "SystemClock",
    "TimerOp",
    "Transition",
    "Transport",
    "Upload",
    "WindowResult",
    "run_actor_window",
    "run_window",
]
