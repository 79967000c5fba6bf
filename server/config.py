"""Server settings: one frozen dataclass; each field documents itself.

The CLI flags and docs/configuration.md are derived from these fields (issue #4 adds the flags).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from runtime import FetchPolicy, Limits

__all__ = ["Settings"]


@dataclass(frozen=True)
class Settings:
    database: Path = Path(".statehost/statehost.db")
    """The SQLite file (created with its folder on first start); unused with ``database_url``."""
    database_url: str | None = None
    """A PostgreSQL database (``postgresql://user:password@host:port/name``) instead of the SQLite
    file: several nodes may share it (docs/deployment.md). The schema is created on first start."""
    db_pool_size: int = 10
    """PostgreSQL connections this node keeps open (its share of the server's max_connections)."""
    node_id: str | None = None
    """This node's name in instance leases and the health endpoint; default: host name and process id."""
    lease_ttl_s: float = 10.0
    """PostgreSQL: how long an instance lease outlives its node's last renewal (renewed every third
    of it). A node that dies holds its instances for at most this long; then another node takes them."""
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    """SQLite ``synchronous``. FULL: an acknowledged commit survives power loss. NORMAL: faster, and
    may lose the last commits on power loss (never on a process crash)."""
    group_commit: bool = True
    """Commit the transitions of many instances that are ready together in one transaction."""
    workers: int = 0
    """Sandbox worker threads; 0 = one per CPU (at least 2)."""
    engine: Literal["quickjs-native", "quickjs-wasm"] = "quickjs-wasm"
    """Which engine runs machines (docs/runtime.md, docs/threat-model.md). ``quickjs-wasm`` runs
    QuickJS inside WebAssembly under wasmtime: a QuickJS memory-safety bug is confined to one
    instance's linear memory, and a sandbox starts from a pre-initialised image in microseconds; use
    it for untrusted tenants. ``quickjs-native`` runs QuickJS in the server process."""
    limits: Limits = field(default_factory=Limits)
    """Per-sandbox limits (docs/limits.md)."""
    fetch: FetchPolicy = field(default_factory=FetchPolicy)
    """Which addresses machines may fetch (docs/limits.md)."""
    parked_sandboxes: int = 256
    """Live sandboxes kept for the next event of the same instance, least recently used evicted
    first: an event to a hot instance skips starting a sandbox and restoring its snapshot (WASM:
    ~1.6 instead of ~2.8 ms per event; native: skips ~8 ms of loading XState). Only quiescent
    sandboxes are kept, each serves only its own instance, and only while the instance is still at
    the state it committed. 0: a pristine sandbox for every event (nothing a machine leaves in
    its globals outlives the event)."""
    parked_memory_mb: int = 1024
    """The memory parked sandboxes may hold together, as each reports it (WASM: its whole linear
    memory, ~5 MB for an XState machine of which ~2 MB is resident; native: QuickJS's heap,
    ~1 MB). A sandbox bigger than a quarter of this is not parked."""
    host: str = "127.0.0.1"
    """Address ``statehost serve`` listens on."""
    port: int = 8787
    """Port ``statehost serve`` listens on (not one of the WHATWG "bad ports" node's fetch refuses)."""
    public_url: str | None = None
    """How clients reach this server (for absolute upload URLs); default: the request's own host."""
    cors_origins: tuple[str, ...] = ("*",)
    """Origins allowed by CORS ("*" is safe: no cookies are used)."""
    billing_url: str | None = None
    """What GET /billing answers; without it, 404."""
    admin_token_lifetime_s: int = 365 * 86_400
    """Lifetime of admin tokens issued by the server (bootstrap, ``statehost login``)."""
    rt_idle_timeout_s: float = 900.0
    """A real-time socket that sends nothing (not even the client's 5-minute ping) for this long is
    closed (wire-api 4.4: at least 10 minutes)."""
    bootstrap_file: Path | None = None
    """Where first start writes the admin credentials (``statehost serve`` sets <data-dir>/admin.json)."""
    shutdown_grace_s: float = 10.0
    """On shutdown, how long open settle windows may run before they are cut (nothing committed is
    lost when they are; their running services get error events on the next event)."""
