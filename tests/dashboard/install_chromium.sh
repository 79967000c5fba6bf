#!/usr/bin/env bash
# Installs Debian's chromium for the dashboard's end-to-end test when it is missing. Used by
# `make test` (target `browser`) and by the test itself. Exits non-zero when it cannot.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get > /dev/null; then
  echo "install_chromium: /usr/bin/chromium is missing and apt-get cannot run here (needs root on Debian)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
echo "installing Debian's chromium for the dashboard's browser test (apt-get)…"
apt-get install -y -qq chromium > /dev/null 2>&1 || { apt-get update -qq > /dev/null && apt-get install -y -qq chromium > /dev/null; }
[ -x /usr/bin/chromium ]
