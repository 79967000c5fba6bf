"""Resource limits for guest code, and the outcome of one guest entry.

Every limit has a default that matches State Backed's published contract where one exists
(128 MB of memory, 400 KB of context, a 90 s settle window). Limits are applied before the first
line of guest code runs.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = ["FetchPolicy", "Limits", "Outcome"]


class Outcome(enum.Enum):
    """What happened in one guest entry. Everything but ``OK`` means nothing of it is committed."""

    OK = "ok"
    DENIED = "denied"
    """An authorizer returned false, threw, or returned a non-boolean."""
    GUEST_ERROR = "guest_error"
    """The machine threw (guard, action, assign, service creator) or reached XState's error status."""
    EXCEEDED_CPU = "exceeded_cpu"
    EXCEEDED_MEMORY = "exceeded_memory"
    EXCEEDED_STACK = "exceeded_stack"
    EXCEEDED_JOBS = "exceeded_jobs"
    EXCEEDED_WALL_TIME = "exceeded_wall_time"
    EXCEEDED_CONTEXT_SIZE = "exceeded_context_size"
    EXCEEDED_SNAPSHOT_SIZE = "exceeded_snapshot_size"
    EXCEEDED_EVENT_SIZE = "exceeded_event_size"
    EXCEEDED_TIMERS = "exceeded_timers"
    INVALID_EVENT = "invalid_event"
    """The event or initial context is not a JSON object of the accepted shape."""
    CANCELED = "canceled"
    """A delivery was withdrawn before it ran (its precheck said no, e.g. a timer cancelled meanwhile)."""

    @property
    def limit(self) -> str | None:
        """The name of the :class:`Limits` field that was exceeded, if this outcome is a limit."""
        return _LIMIT_OF.get(self)


_LIMIT_OF = {
    Outcome.EXCEEDED_CPU: "cpu_ms",
    Outcome.EXCEEDED_MEMORY: "memory_bytes",
    Outcome.EXCEEDED_STACK: "stack_bytes",
    Outcome.EXCEEDED_JOBS: "max_jobs",
    Outcome.EXCEEDED_WALL_TIME: "entry_wall_ms",
    Outcome.EXCEEDED_CONTEXT_SIZE: "max_context_bytes",
    Outcome.EXCEEDED_SNAPSHOT_SIZE: "max_snapshot_bytes",
    Outcome.EXCEEDED_EVENT_SIZE: "max_event_bytes",
    Outcome.EXCEEDED_TIMERS: "max_timer_ops",
}


@dataclass(frozen=True)
class FetchPolicy:
    """Which addresses the guest's ``fetch`` may reach."""

    allow_private: bool = False
    """Allow loopback, private (RFC 1918 / ULA), link-local, CGNAT and metadata addresses.
    Off by default: a tenant must not reach the operator's internal network (SSRF)."""
    allowed_hosts: frozenset[str] = frozenset()
    """Host names or IP literals that are allowed even when they resolve to private addresses."""
    timeout_s: float = 30.0
    """Total time for one request, connect to last byte."""


@dataclass(frozen=True)
class Limits:
    """Limits on one sandbox. Sizes are bytes, times milliseconds."""

    memory_bytes: int = 128 * 1024 * 1024
    """Heap limit of the JS runtime (State Backed: 128 MB per instance runtime)."""
    stack_bytes: int = 1024 * 1024
    """JS stack limit. Native engine: never 0 and never above the worker threads' 8 MiB C stack."""
    cpu_ms: int = 2_000
    """CPU time of one guest entry (one call into the sandbox). A backstop: on the native engine the
    clock is the process CPU clock, so busy sibling threads make it fire early."""
    entry_wall_ms: int = 5_000
    """Wall time of one guest entry including the promise jobs it pumps."""
    max_jobs: int = 100_000
    """Promise jobs pumped per guest entry; stops self-rescheduling promise chains."""
    settle_window_ms: int = 90_000
    """Wall time an event may keep its instance busy waiting for services (State Backed: 90 s)."""
    max_rounds: int = 1_000
    """Commit rounds (guest entries that produced effects) per settle window."""
    max_fetches: int = 50
    """fetch() calls per settle window."""
    max_fetch_request_bytes: int = 1024 * 1024
    """Size of one request body."""
    max_fetch_response_bytes: int = 5 * 1024 * 1024
    """Size of one response body; larger responses reject the fetch with a TypeError."""
    max_context_bytes: int = 400_000
    """Size of the machine's context as UTF-8 JSON after any transition (State Backed: 400 KB)."""
    max_snapshot_bytes: int = 2_000_000
    """Size of the persisted instance and of each transition's event as UTF-8 JSON. XState keeps more
    than the context in a snapshot (v4: the last event, twice; v5: spawned children's contexts)."""
    max_event_bytes: int = 64 * 1024
    """Size of an incoming event (or initial context) as UTF-8 JSON."""
    max_log_bytes: int = 256 * 1024
    """Log text per settle window; further lines are dropped and one line says so (a soft limit)."""
    max_log_lines: int = 1_000
    """Log lines per settle window; further lines are dropped and one line says so (a soft limit)."""
    max_timer_ops: int = 1_000
    """Durable timers set, messages sent and persistent children spawned per settle window: each is a
    row in the database and, for spawns, a new instance. Exceeding it fails the round."""
    fetch: FetchPolicy = field(default_factory=FetchPolicy)
    """Which addresses the guest's fetch may reach (FetchPolicy below)."""
