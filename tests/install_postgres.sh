#!/usr/bin/env bash
# Installs Debian's PostgreSQL server binaries for the tests of the PostgreSQL backend when they are
# missing. Used by `make test` (target `postgres`); the `pg_cluster` fixture (tests/conftest.py) starts
# its own throwaway server from them (tests/pg.py), or skips saying they are missing. Exits non-zero
# when it cannot install them.
set -euo pipefail
shopt -s nullglob
have_postgres() { local bins=(/usr/lib/postgresql/*/bin/postgres); [ ${#bins[@]} -gt 0 ]; }
if have_postgres; then exit 0; fi
# Where tests/pg.py's find_bin_dir also looks: $STATEHOST_PG_BIN, or initdb on PATH (not Debian).
if [ -x "${STATEHOST_PG_BIN:-/nonexistent}/postgres" ]; then exit 0; fi
if command -v initdb > /dev/null && [ -x "$(dirname "$(command -v initdb)")/postgres" ]; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get > /dev/null; then
  echo "install_postgres: no /usr/lib/postgresql/*/bin/postgres and apt-get cannot run here (needs root on Debian)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
echo "installing Debian's postgresql for the PostgreSQL backend's tests (apt-get)…"
apt_install() { apt-get install -y -qq "$@" > /dev/null 2>&1 || { apt-get update -qq > /dev/null && apt-get install -y -qq "$@" > /dev/null; }; }
# The tests need only the binaries: tell postgresql-common not to create (and start) the system's
# "main" cluster on port 5432 when the server package is installed.
apt_install postgresql-common
sed -i 's/^#\?\s*create_main_cluster\s*=.*/create_main_cluster = false/' /etc/postgresql-common/createcluster.conf
apt_install postgresql
have_postgres
