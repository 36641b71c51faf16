#!/usr/bin/env bash
# Make sure the MariaDB server, client and backup binaries (and the client headers the
# test clients build against, xfsprogs for the copy-on-write tests, and Debian's headless
# Chromium with its driver for the console's browser tests) are installed.
# Installs them with apt-get when they are missing and we are root; otherwise says what to do.
set -euo pipefail

missing=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }
have mariadbd || missing+=(mariadb-server)
have mariadb-install-db || missing+=(mariadb-server)
have mariadb || missing+=(mariadb-client)
have mariadb-backup || missing+=(mariadb-backup)
# Headers for building mysqlclient (a test client), and pkg-config to find them.
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
{ command -v mariadb_config >/dev/null 2>&1 || pkg-config --exists libmariadb 2>/dev/null; } \
  || missing+=(libmariadb-dev)
# mkfs.xfs: the tests make an XFS image with reflink (copy-on-write branches).
have mkfs.xfs || missing+=(xfsprogs)
# The console's tests drive a real browser: Debian's Chromium and chromedriver.
have chromium || missing+=(chromium)
have chromedriver || missing+=(chromium-driver)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
# de-duplicate
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)

if [ "$(id -u)" -ne 0 ]; then
  echo "selkie: missing MariaDB packages: ${missing[*]}" >&2
  echo "selkie: install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "selkie: missing MariaDB packages (${missing[*]}) and no apt-get here; install MariaDB >= 10.11 by hand" >&2
  exit 1
fi
echo "selkie: installing ${missing[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# A temporary policy-rc.d keeps the package scripts from starting a system-wide server on :3306:
# Selkie runs its own mariadbd processes and never uses the shared one.
policy=/usr/sbin/policy-rc.d
added_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && added_policy=1
fi
trap '[ "$added_policy" = 1 ] && rm -f "$policy"' EXIT
apt-get install -y -qq --no-install-recommends "${missing[@]}"
