"""A throwaway PostgreSQL server for the tests, the benchmarks and ops scripts.

``PostgresCluster`` runs initdb into a fresh temporary directory and starts ``postgres`` on
127.0.0.1 on a free port, with its unix socket and its log in that directory too; ``stop()`` shuts it
down (fast shutdown) and removes the directory. Postgres refuses to run as root, so as root the
binaries run as the ``postgres`` user (the temporary directory is chown'ed to it); otherwise they run
as the current user. Databases are made and dropped with ``psql`` (a subprocess, so this works the
same from synchronous scripts and from inside a running event loop)::

    with PostgresCluster() as pg:
        url = pg.create_database("demo")   # postgresql://postgres@127.0.0.1:PORT/demo
        ...

The temporary directory is made where ``tempfile`` makes them (``$TMPDIR``, else /tmp); as root, the
``postgres`` user must be able to reach it. On a slow disk, TMPDIR=/dev/shm makes creating databases
several times faster (fsync is then a no-op: the data survives a crash of the server, not of the host).

The binaries are Debian's (``/usr/lib/postgresql/<version>/bin``, installed by
tests/install_postgres.sh); ``STATEHOST_PG_BIN`` names another directory. PostgreSQL 13 or newer
(``DROP DATABASE ... WITH (FORCE)``).
"""

from __future__ import annotations

import atexit
import ctypes
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TypedDict

from bench.common import free_port

__all__ = ["PostgresCluster", "PostgresError", "find_bin_dir", "missing_binaries"]

DEBIAN_ROOT = Path("/usr/lib/postgresql")
SUPERUSER = "postgres"
# Lower-case identifiers only: they need no quoting rules beyond double quotes.
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class _Owner(TypedDict):
    user: str | None
    group: str | None
    extra_groups: list[str] | None


class PostgresError(RuntimeError):
    """The cluster could not be set up (the message ends with the server log's tail) or a statement
    failed (psql's error)."""


def find_bin_dir() -> Path | None:
    """The directory holding ``initdb`` and ``postgres``: ``$STATEHOST_PG_BIN`` if set, else the newest
    Debian ``/usr/lib/postgresql/<version>/bin``, else wherever ``initdb`` is on PATH; None if none."""
    override = os.environ.get("STATEHOST_PG_BIN")
    if override:
        return Path(override) if (Path(override) / "postgres").exists() else None

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))

    found = [p for p in DEBIAN_ROOT.glob("*/bin") if (p / "postgres").exists() and version(p)]
    if found:
        return max(found, key=version)
    initdb = shutil.which("initdb")
    if initdb and (Path(initdb).parent / "postgres").exists():
        return Path(initdb).parent
    return None


def missing_binaries() -> str:
    """Why ``find_bin_dir`` found nothing, and how to fix it."""
    override = os.environ.get("STATEHOST_PG_BIN")
    where = (
        f"$STATEHOST_PG_BIN ({override}) has no postgres"
        if override
        else f"no {DEBIAN_ROOT}/*/bin/postgres and no initdb on PATH"
    )
    return f"PostgreSQL is not installed: {where} (`make postgres`, as root, installs Debian's)"


def _parent_death_signal() -> Callable[[], None] | None:
    """For the server's child process, on Linux: ask the kernel to send it SIGQUIT (immediate shutdown)
    when the thread that started it dies, so a test run killed hard leaves no postgres behind. Only
    from the main thread (a worker thread's exit would take the server with it). prctl is looked up
    here, in the parent: the child only calls it."""
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def set_it() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGQUIT))

    return set_it


class PostgresCluster:
    """One throwaway PostgreSQL server: ``start()``, ``create_database()``, ``drop_database()``,
    ``stop()``; or use it as a context manager."""

    def __init__(self, bin_dir: Path | None = None, *, max_connections: int = 200) -> None:
        found = bin_dir or find_bin_dir()
        if found is None:
            raise PostgresError(missing_binaries())
        self.bin_dir = found
        self.max_connections = max_connections
        self.port = 0
        self.dir: Path | None = None
        self._server: subprocess.Popen[bytes] | None = None
        self._as_postgres = os.geteuid() == 0

    # -- paths ---------------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self._dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self._dir / "socket"

    @property
    def log_path(self) -> Path:
        return self._dir / "postgres.log"

    @property
    def _dir(self) -> Path:
        if self.dir is None:
            raise PostgresError("the cluster is not started")
        return self.dir

    def url(self, database: str = "postgres") -> str:
        """A libpq/asyncpg URL for ``database`` on this cluster, as the superuser."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, timeout_s: float = 60) -> PostgresCluster:
        """initdb into a new temporary directory, start the server and wait until it takes connections."""
        if self._server is not None:
            raise PostgresError("the cluster is already started")
        self.dir = Path(tempfile.mkdtemp(prefix="statehost-pg-"))
        try:
            self.socket_dir.mkdir()
            if self._as_postgres:
                try:
                    owner = pwd.getpwnam(SUPERUSER)
                except KeyError:
                    raise PostgresError(
                        f"running as root and there is no {SUPERUSER!r} user to run the server as "
                        "(Debian's postgresql package creates it)"
                    ) from None
                for path in (self.dir, self.socket_dir):
                    os.chown(path, owner.pw_uid, owner.pw_gid)
            self._initdb()
            for attempt in range(3):
                # free_port's port is free when it answers; another process may take it before postgres binds.
                self.port = free_port()
                self._configure()
                server = self._server = self._launch()
                try:
                    self._wait_ready(server, timeout_s)
                    break
                except PostgresError:
                    log = self.log_path.read_text(errors="replace")
                    if attempt == 2 or server.poll() is None or "Address already in use" not in log:
                        raise
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)
        return self

    def _initdb(self) -> None:
        # Trust authentication (no passwords) for local and loopback connections: this is a throwaway
        # cluster for tests, listening on 127.0.0.1 only and removed when it stops.
        # --no-sync only skips flushing initdb's own files; the server itself runs with fsync on.
        done = self._run(
            [
                self._bin("initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            as_owner=True,
        )
        if done.returncode != 0:
            raise PostgresError(f"initdb failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def _configure(self) -> None:
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            # several statehost nodes, each with its own connection pool, on one server
            "max_connections": str(self.max_connections),
            "shared_buffers": "'32MB'",
            # fsync and synchronous_commit stay on: the tests check durability.
            "jit": "off",
            "log_line_prefix": "'%m [%p] %q%d '",
        }
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# tests/pg.py\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def _launch(self) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                [self._bin("postgres"), "-D", str(self.data_dir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self._dir,
                env=self._env(),
                start_new_session=True,  # a Ctrl-C in the terminal goes to pytest, which stops it
                preexec_fn=_parent_death_signal(),
                **self._owner(True),
            )

    def _wait_ready(self, server: subprocess.Popen[bytes], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if server.poll() is not None:
                raise PostgresError(f"postgres exited ({server.returncode}) while starting{self._log_tail()}")
            ready = self._run([self._bin("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port), "-t", "1"])
            if ready.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise PostgresError(f"postgres did not accept connections within {timeout_s:.0f} s{self._log_tail()}")
            time.sleep(0.05)
        # pg_isready does not log in; this does, over TCP, as the URLs will.
        try:
            self.sql("SELECT 1")
        except PostgresError as e:
            raise PostgresError(f"{e}{self._log_tail()}") from None

    def stop(self, timeout_s: float = 60) -> None:
        """Fast shutdown (disconnects clients, rolls back their transactions), then remove the directory.
        Safe to call twice."""
        server, self._server = self._server, None
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGINT)  # postgres: SIGINT is a fast shutdown
            try:
                server.wait(timeout_s)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        atexit.unregister(self.stop)

    def halt(self, timeout_s: float = 60) -> None:
        """Stop the server (fast shutdown) and keep its data: ``resume`` starts it again on the same
        port (for tests of a database outage)."""
        server, self._server = self._server, None
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGINT)
            server.wait(timeout_s)

    def resume(self, timeout_s: float = 60) -> None:
        if self._server is not None:
            raise PostgresError("the cluster is running")
        server = self._server = self._launch()
        self._wait_ready(server, timeout_s)

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- databases -----------------------------------------------------------------------------

    def create_database(self, name: str) -> str:
        """Create database ``name`` (lower-case letters, digits, underscores); its URL."""
        self.sql(f"CREATE DATABASE {_quote(name)}")
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, first ending any sessions still connected to it."""
        self.sql(f"DROP DATABASE IF EXISTS {_quote(name)} WITH (FORCE)")

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement with psql over TCP; its output (unaligned, tuples only)."""
        done = self._run(
            [
                self._bin("psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                self.url(database),
                "-c",
                statement,
            ]
        )
        if done.returncode != 0:
            raise PostgresError(f"psql failed on {statement!r}: {done.stderr.strip()}")
        return done.stdout

    # -- helpers -------------------------------------------------------------------------------

    def _bin(self, name: str) -> str:
        return str(self.bin_dir / name)

    def _env(self) -> dict[str, str]:
        # No PGHOST, PGPASSWORD, PGOPTIONS... from the caller's environment; messages in English.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        return env

    def _owner(self, as_owner: bool) -> _Owner:
        """Popen's arguments that run a program as the cluster's owner (``postgres`` when we are root) if
        ``as_owner``, else as ourselves."""
        if not (as_owner and self._as_postgres):
            return {"user": None, "group": None, "extra_groups": None}
        return {"user": SUPERUSER, "group": SUPERUSER, "extra_groups": []}

    def _run(self, argv: list[str], *, as_owner: bool = False) -> subprocess.CompletedProcess[str]:
        """Run one of the binaries; initdb (``as_owner``) must not run as root, the clients may."""
        return subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            cwd=self._dir,
            env=self._env(),
            check=False,
            timeout=120,
            **self._owner(as_owner),
        )

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, PostgresError):
            return "\n(no server log)"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"\nlast lines of {self.log_path}:\n{tail}"


def _quote(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"database name {name!r}: use 1-63 lower-case letters, digits and underscores")
    return f'"{name}"'
