"""The throwaway PostgreSQL server the backend's tests run on (tests/pg.py, the ``pg_cluster`` and
``pg_url`` fixtures): it takes connections from asyncpg, keeps each test's database to itself, drops
databases that still have sessions, and leaves nothing behind when it stops."""

from __future__ import annotations

import re
import socket
import uuid
from pathlib import Path

import asyncpg
import pytest

from tests.pg import PostgresCluster, PostgresError, find_bin_dir, missing_binaries
from tests.support import need_tool


def _name() -> str:
    return f"t_extra_{uuid.uuid4().hex[:8]}"


async def test_a_row_round_trips_through_a_table(pg_url: str):
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("CREATE TABLE kv (k text PRIMARY KEY, v jsonb NOT NULL)")
        await conn.execute("INSERT INTO kv VALUES ($1, $2)", "a", '{"n": 1}')
        assert await conn.fetch("SELECT k, v FROM kv") == [("a", '{"n": 1}')]
    finally:
        await conn.close()
    # committed: a new session sees it
    conn = await asyncpg.connect(pg_url)
    try:
        assert await conn.fetchval("SELECT v->>'n' FROM kv WHERE k = 'a'") == "1"
    finally:
        await conn.close()


async def test_the_url_names_a_fresh_database_on_loopback(pg_cluster: PostgresCluster, pg_url: str):
    host = f"postgresql://postgres@127.0.0.1:{pg_cluster.port}/"
    assert re.fullmatch(re.escape(host) + r"t_test_the_url_names_a_fresh_[a-z_]*_[0-9a-f]{8}", pg_url)
    conn = await asyncpg.connect(pg_url)
    try:
        assert await conn.fetchval("SELECT current_database()") == pg_url.rsplit("/", 1)[1]
        assert await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0
    finally:
        await conn.close()


async def test_databases_are_isolated(pg_cluster: PostgresCluster, pg_url: str):
    other = _name()
    other_url = pg_cluster.create_database(other)
    try:
        a = await asyncpg.connect(pg_url)
        b = await asyncpg.connect(other_url)
        try:
            await a.execute("CREATE TABLE only_here (x int)")
            await a.execute("INSERT INTO only_here VALUES (1)")
            assert await b.fetchval("SELECT to_regclass('only_here')") is None
            await b.execute("CREATE TABLE only_here (x int)")
            assert await b.fetchval("SELECT count(*) FROM only_here") == 0
            assert await a.fetchval("SELECT count(*) FROM only_here") == 1
        finally:
            await a.close()
            await b.close()
    finally:
        pg_cluster.drop_database(other)


async def test_drop_removes_the_database_and_ends_its_sessions(pg_cluster: PostgresCluster):
    name = _name()
    url = pg_cluster.create_database(name)
    conn = await asyncpg.connect(url)
    try:
        pg_cluster.drop_database(name)  # while conn is still open
        with pytest.raises((asyncpg.PostgresConnectionError, asyncpg.AdminShutdownError, ConnectionError)):
            await conn.fetchval("SELECT 1")
    finally:
        await conn.close()
    assert pg_cluster.sql(f"SELECT count(*) FROM pg_database WHERE datname = '{name}'").strip() == "0"
    with pytest.raises(asyncpg.InvalidCatalogNameError):
        await asyncpg.connect(url)
    pg_cluster.drop_database(name)  # already gone: not an error


async def test_the_server_is_set_up_for_several_nodes_and_durable(pg_url: str):
    conn = await asyncpg.connect(pg_url)
    try:
        settings = {
            name: await conn.fetchval(f"SHOW {name}")
            for name in ("max_connections", "fsync", "synchronous_commit", "listen_addresses")
        }
        assert settings == {
            "max_connections": "200",
            "fsync": "on",
            "synchronous_commit": "on",
            "listen_addresses": "127.0.0.1",
        }
        assert conn.get_server_version().major >= 13  # DROP DATABASE ... WITH (FORCE)
    finally:
        await conn.close()


def test_database_names_are_checked(pg_cluster: PostgresCluster):
    for bad in ("Upper", "has-dash", 'quo"te', "", "x" * 64):
        with pytest.raises(ValueError, match="database name"):
            pg_cluster.create_database(bad)


def test_stop_shuts_the_server_down_and_removes_its_directory():
    if find_bin_dir() is None:
        need_tool("PostgreSQL", missing_binaries())
    with PostgresCluster() as cluster:
        directory, port = cluster.dir, cluster.port
        assert directory is not None and (directory / "data" / "PG_VERSION").exists()
        assert (directory / "postgres.log").exists()
        assert cluster.create_database("kept").endswith(f":{port}/kept")
    assert cluster.dir is None and not directory.exists()
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", port))
    cluster.stop()  # twice is fine


def test_a_failed_start_says_why_and_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    bin_dir = find_bin_dir()
    if bin_dir is None:
        need_tool("PostgreSQL", missing_binaries())
    cluster = PostgresCluster(bin_dir)
    # a setting postgres rejects: it exits at startup, and the error carries its log
    monkeypatch.setattr(cluster, "max_connections", -1)
    with pytest.raises(PostgresError, match=r"postgres exited .*\n.*last lines of .*postgres\.log"):
        cluster.start()
    assert cluster.dir is None


def test_missing_binaries_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("STATEHOST_PG_BIN", str(tmp_path))
    assert find_bin_dir() is None
    with pytest.raises(PostgresError, match=r"PostgreSQL is not installed: \$STATEHOST_PG_BIN \(.*\) has no postgres"):
        PostgresCluster()
