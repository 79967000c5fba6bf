"""Server settings: one frozen dataclass, the one place a setting is declared.

Each field documents itself (the docstring under it: docs/configuration.md's "Meaning"); a field
that ``statehost serve`` exposes carries its :class:`Flag` in the field's metadata, from which the
command-line flag, its environment variable and the reference's "Flag, environment" column are all
derived (``add_serve_flags``, ``settings_from_args``, ``server/settings_doc.py``). Defaults, types
and choices come from the field itself; a nested setting (``limits``, ``fetch``) names the field of
its dataclass that the flag sets.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from runtime import ActorSettings, FetchPolicy, Limits

__all__ = ["Flag", "ServeFlag", "Settings", "add_serve_flags", "serve_flags", "settings_from_args"]


def count(value: str) -> int:
    """A whole number, 0 or more (an argparse ``type``)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; use 0 or more")
    return number


def positive(value: str) -> int:
    """A whole number, 1 or more (an argparse ``type``)."""
    number = count(value)
    if number == 0:
        raise argparse.ArgumentTypeError("0 is not allowed; use 1 or more")
    return number


@dataclass(frozen=True)
class Flag:
    """How ``statehost serve`` sets one setting (put in a field's metadata with :func:`flag`)."""

    help: str
    """The short text of ``--help``; the default (and environment variable) are appended to it."""
    env: bool = False
    """Also read ``$STATEHOST_<FLAG NAME>`` (for containers and process managers); the flag wins."""
    name: str | None = None
    """The flag without its dashes; default: the field's name with ``-`` for ``_``."""
    parse: Callable[[str], Any] | None = None
    """The argparse ``type``; default: from the field's type."""
    nested: str | None = None
    """For a dataclass-valued setting: the field of that dataclass the flag sets."""
    default: str | None = None
    """The flag's default when it is not the field's (``data-dir``, which sets two fields)."""
    to_setting: Callable[[Any], Any] | None = None
    """Turns the flag's value into the field's (``data-dir`` → ``<data-dir>/statehost.db``)."""

    def with_setting(self, to_setting: Callable[[Any], Any]) -> Flag:
        return dataclasses.replace(self, to_setting=to_setting)


def flag(*flags: Flag) -> Mapping[str, Any]:
    """A field's metadata: the flags that set it."""
    return {"flags": flags}


DATA_DIR = Flag("where the database and admin credentials live", env=True, name="data-dir", default=".statehost")
"""``--data-dir`` sets two fields: ``database`` and ``bootstrap_file``."""


@dataclass(frozen=True)
class Settings:
    database: Path = field(
        default=Path(".statehost/statehost.db"),
        metadata=flag(DATA_DIR.with_setting(lambda d: Path(d) / "statehost.db")),
    )
    """The SQLite file (created with its folder on first start; ``statehost serve``:
    ``<data-dir>/statehost.db``); unused with ``database_url``."""
    database_url: str | None = field(
        default=None,
        metadata=flag(
            Flag(
                "a PostgreSQL database (postgresql://...) shared by several nodes,"
                " instead of the SQLite file in --data-dir",
                env=True,
            )
        ),
    )
    """A PostgreSQL database (``postgresql://user:password@host:port/name``) instead of the SQLite
    file: several nodes may share it (docs/deployment.md). The schema is created on first start."""
    db_pool_size: int = field(default=10, metadata=flag(Flag("PostgreSQL connections this node keeps", env=True)))
    """PostgreSQL connections this node keeps open (its share of the server's max_connections)."""
    node_id: str | None = field(
        default=None,
        metadata=flag(Flag("this node's name in leases and /health; unset: host name and pid", env=True)),
    )
    """This node's name in instance leases and the health endpoint; default: host name and process id."""
    lease_ttl_s: float = field(
        default=10.0, metadata=flag(Flag("PostgreSQL: how long a dead node's instance leases last"))
    )
    """PostgreSQL: how long an instance lease outlives its node's last renewal (renewed every third
    of it). A node that dies holds its instances for at most this long; then another node takes them."""
    synchronous: Literal["FULL", "NORMAL"] = field(
        default="FULL",
        metadata=flag(Flag("SQLite synchronous mode: NORMAL may lose the last commits on power loss")),
    )
    """SQLite ``synchronous``. FULL: an acknowledged commit survives power loss. NORMAL: faster, and
    may lose the last commits on power loss (never on a process crash)."""
    group_commit: bool = True
    """Commit the transitions of many instances that are ready together in one transaction."""
    workers: int = field(default=0, metadata=flag(Flag("sandbox worker threads; 0: two per CPU (at least 4)")))
    """Sandbox worker threads; 0 = two per CPU (at least 4). One org's calls hold at most half of
    them at once (``runtime.Executor`` lanes), so a tenant whose events run until a limit stops
    them cannot stall the others; one org alone still has one worker per CPU."""
    engine: Literal["quickjs-native", "quickjs-wasm"] = field(
        default="quickjs-wasm",
        metadata=flag(Flag("the engine that runs machines; quickjs-wasm confines QuickJS in WebAssembly", env=True)),
    )
    """Which engine runs machines (docs/runtime.md, docs/threat-model.md). ``quickjs-wasm`` runs
    QuickJS inside WebAssembly under wasmtime: a QuickJS memory-safety bug is confined to one
    instance's linear memory, and a sandbox starts from a pre-initialised image in microseconds; use
    it for untrusted tenants. ``quickjs-native`` runs QuickJS in the server process."""
    limits: Limits = field(
        default_factory=Limits,
        metadata=flag(
            Flag("settle window per event", nested="settle_window_ms"),
            Flag(
                "CPU time one guest entry may use before it fails with 422 limit cpu_ms",
                nested="cpu_ms",
                parse=positive,
            ),
        ),
    )
    """Per-sandbox limits (docs/limits.md)."""
    fetch: FetchPolicy = field(
        default_factory=FetchPolicy,
        metadata=flag(
            Flag(
                "let machines fetch loopback and private addresses (trusted tenants only)",
                nested="allow_private",
                name="allow-private-fetch",
            )
        ),
    )
    """Which addresses machines may fetch (docs/limits.md)."""
    sandbox_mode: Literal["actors", "pristine"] = field(
        default="actors",
        metadata=flag(
            Flag(
                "actors: hot instances stay live actors, many of one machine version per VM;"
                " pristine: a fresh sandbox restored from the snapshot for every event",
                env=True,
            )
        ),
    )
    """How events run (docs/decisions.md 88, docs/threat-model.md "Live actors"). ``actors``: an
    instance's event runs on its live XState actor, kept between events in one of ``actor_vms``
    VMs of its machine version (one VM set per version: two machines, or two orgs, never share a
    VM); an event to a hot instance is one guest entry instead of a restore. Instances of one
    version in one VM share its module-level variables and its heap limit; a fault discards the VM
    and its actors restore from their committed snapshots. ``pristine``: every event restores the
    instance into a fresh sandbox (nothing a machine leaves in its globals outlives the event)."""
    actor_vms: int = field(
        default=4,
        metadata=flag(
            Flag("actors mode: VMs per machine version (an instance stays in one)", env=True, parse=positive)
        ),
    )
    """Actors mode: VMs each prepared machine version spreads its live actors over (an instance
    always lands in the same one, by a hash of its id). More VMs: a faulting or CPU-bound instance
    stalls fewer neighbours, and more of one version's instances run in parallel; each VM costs
    its base heap (~2 MB resident on WASM, less on native)."""
    actors_per_vm: int = field(
        default=4_096,
        metadata=flag(Flag("actors mode: live actors per VM, least recently used evicted", env=True, parse=positive)),
    )
    """Actors mode: live actors one VM keeps; beyond it the least recently used idle actor is
    dropped (its next event restores it from its committed snapshot)."""
    actor_vm_memory_mb: int = field(
        default=64,
        metadata=flag(Flag("actors mode: heap per VM for its resident actors", env=True, parse=count)),
    )
    """Actors mode: heap a VM may hold for its resident actors, above its base (the machine
    loaded). Measured now and then at window ends; over it, idle actors are dropped (a snapshot
    that stands out first). A VM's hard QuickJS limit is this plus ``limits.memory_bytes``, so one
    event still has its own memory limit on top of a full VM."""
    actor_idle_s: int = field(
        default=600,
        metadata=flag(Flag("actors mode: drop an actor idle this long", env=True, parse=count)),
    )
    """Actors mode: an actor whose last event is this old is dropped (checked at window ends, at
    most every few seconds per version); its next event restores it."""
    machine_image_cache_mb: int = field(
        default=512,
        metadata=flag(
            Flag(
                "disk for prepared machine images (WASM engine), least recently used evicted; 0: none",
                env=True,
                parse=count,
            )
        ),
    )
    """Disk space for prepared machine images (WASM engine): the pages that evaluating a version's
    bundle changed and its attach reply, ~1.6 MB per version (an XState machine), kept in
    ``<cache dir>/machine-images`` (``$STATEHOST_CACHE``, else ``~/.cache/statehost``; shared by the
    nodes of one host) and evicted least recently used first. A restarted node loads the versions
    it warms up (and any other version's first event) from them instead of evaluating bundles
    again (docs/runtime.md). 0: no images on disk; every start evaluates every version again."""
    host: str = field(default="127.0.0.1", metadata=flag(Flag("address to listen on", env=True)))
    """Address ``statehost serve`` listens on."""
    port: int = field(default=8787, metadata=flag(Flag("port to listen on", env=True)))
    """Port ``statehost serve`` listens on (not one of the WHATWG "bad ports" node's fetch refuses)."""
    public_url: str | None = field(
        default=None,
        metadata=flag(Flag("the URL clients reach this server at; unset: http://HOST:PORT", env=True)),
    )
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
    bootstrap_file: Path | None = field(
        default=None, metadata=flag(DATA_DIR.with_setting(lambda d: Path(d) / "admin.json"))
    )
    """Where first start writes the admin credentials (``statehost serve``: ``<data-dir>/admin.json``)."""
    shutdown_grace_s: float = 10.0
    """On shutdown, how long open settle windows may run before they are cut (nothing committed is
    lost when they are; their running services get error events on the next event)."""

    def actor_settings(self) -> ActorSettings:
        """The live actors' bounds (``sandbox_mode`` actors), as the runtime takes them."""
        return ActorSettings(
            vms=self.actor_vms,
            max_actors_per_vm=self.actors_per_vm,
            vm_memory_bytes=self.actor_vm_memory_mb * 2**20,
            idle_ms=self.actor_idle_s * 1000,
        )


@dataclass(frozen=True)
class ServeFlag:
    """One ``statehost serve`` flag, resolved from a :class:`Settings` field and its :class:`Flag`."""

    option: str
    """``--host``."""
    env: str | None
    """``STATEHOST_HOST``, or None."""
    setting: str
    """The field of :class:`Settings` it sets."""
    nested: str | None
    """The field of that field's dataclass it sets (``limits`` → ``settle_window_ms``), or None."""
    owner: type
    """The dataclass whose field the flag sets in the end (Settings, Limits or FetchPolicy)."""
    spec: Flag
    default: Any
    """The default when neither the flag nor the environment variable is given."""
    choices: tuple[str, ...] | None
    parse: Callable[[str], Any] | None
    """None for a switch (a bool setting that defaults to False)."""

    @property
    def dest(self) -> str:
        return self.option.removeprefix("--").replace("-", "_")

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        if self.parse is None:
            parser.add_argument(self.option, action="store_true", help=self.spec.help)
            return
        default: Any = self.default
        shown = "" if default is None else f"else {default}"
        if self.env is not None:
            # A string default goes through ``type`` like a given value.
            default = os.environ.get(self.env, None if self.default is None else str(self.default))
            shown = f"${self.env}" + (f", else {self.default}" if self.default is not None else "")
        help_text = self.spec.help + (f" (default {shown.removeprefix('else ')})" if shown else "")
        parser.add_argument(self.option, type=self.parse, choices=self.choices, default=default, help=help_text)


def _field_default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"setting {f.name} has no default")


def _parse_for(hint: Any) -> tuple[Callable[[str], Any] | None, tuple[str, ...] | None]:
    """The argparse ``type`` and ``choices`` for a field's type."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is Literal:
        return str, tuple(str(a) for a in args)
    if len(args) == 1:  # X | None
        hint = args[0]
    if hint is bool:
        return None, None
    if hint in (int, float, str, Path):
        return hint, None
    raise TypeError(f"no command-line form for a setting of type {hint!r}")


def serve_flags() -> Iterator[ServeFlag]:
    """Every ``statehost serve`` flag, in field order (a flag shared by fields comes once per field)."""
    hints = typing.get_type_hints(Settings)
    for f in dataclasses.fields(Settings):
        for spec in f.metadata.get("flags", ()):
            owner: type = Settings
            name, hint, default = f.name, hints[f.name], _field_default(f)
            if spec.nested is not None:
                owner = hints[f.name]
                inner = {g.name: g for g in dataclasses.fields(owner)}[spec.nested]
                name, hint, default = spec.nested, typing.get_type_hints(owner)[spec.nested], _field_default(inner)
            parse, choices = _parse_for(hint)
            if parse is None and default is not False:
                raise TypeError(f"{name}: a switch must default to False")
            if spec.parse is not None:
                parse = spec.parse
            if spec.default is not None:
                default = spec.default
            option = "--" + (spec.name or name.replace("_", "-"))
            env = "STATEHOST_" + option.removeprefix("--").replace("-", "_").upper() if spec.env else None
            yield ServeFlag(option, env, f.name, spec.nested, owner, spec, default, choices, parse)


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    """Add the settings' flags to ``statehost serve``'s parser."""
    seen: dict[str, ServeFlag] = {}
    for serve_flag in serve_flags():
        first = seen.setdefault(serve_flag.option, serve_flag)
        if first is serve_flag:
            serve_flag.add_to(parser)
        elif dataclasses.replace(first.spec, to_setting=None) != dataclasses.replace(serve_flag.spec, to_setting=None):
            raise TypeError(f"{serve_flag.option} is declared differently by {first.setting} and {serve_flag.setting}")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The settings that ``statehost serve``'s parsed flags (and environment) give."""
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for serve_flag in serve_flags():
        value = getattr(args, serve_flag.dest)
        if serve_flag.spec.to_setting is not None:
            value = serve_flag.spec.to_setting(value)
        if serve_flag.nested is None:
            top[serve_flag.setting] = value
        else:
            nested.setdefault(serve_flag.setting, {})[serve_flag.nested] = value
    for setting, values in nested.items():
        top[setting] = dataclasses.replace(_field_default(_settings_field(setting)), **values)
    return Settings(**top)


def _settings_field(name: str) -> dataclasses.Field[Any]:
    return next(f for f in dataclasses.fields(Settings) if f.name == name)
