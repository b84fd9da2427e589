#!/usr/bin/env bash
# A throwaway PostgreSQL 15 for the tests and for developers (Debian's package; no image registry).
#   scripts/postgres.sh install          install the Debian package if its binaries are missing (root)
#   scripts/postgres.sh start DIR PORT   initdb DIR (if new) and start it on 127.0.0.1:PORT; prints the URL
#   scripts/postgres.sh stop DIR         stop it (fast shutdown)
# initdb refuses to run as root: as root, the cluster belongs to the `postgres` user.
set -euo pipefail

bindir() {
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
  [ -n "$found" ] && [ -x "$found/initdb" ] && echo "$found"
}

as_owner() {  # run "$@" as the cluster's owner
  if [ "$(id -u)" = 0 ]; then su postgres -s /bin/bash -c "$(printf '%q ' "$@")"; else "$@"; fi
}

case "${1:-}" in
  install)
    if bindir >/dev/null; then exit 0; fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
      echo "PostgreSQL is missing: install Debian's postgresql package (apt-get install postgresql)" >&2
      exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null
    # The package starts a system cluster on 5432; the tests start their own.
    bindir >/dev/null
    ;;
  start)
    dir=${2:?DIR}; port=${3:?PORT}; bin=$(bindir) || { echo "no PostgreSQL: scripts/postgres.sh install" >&2; exit 1; }
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    if [ ! -f "$dir/PG_VERSION" ]; then
      as_owner "$bin/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
    fi
    as_owner "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 30 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c max_connections=200" start >/dev/null
    echo "postgresql://postgres@127.0.0.1:$port/postgres"
    ;;
  stop)
    dir=${2:?DIR}; bin=$(bindir)
    as_owner "$bin/pg_ctl" -D "$dir" -m fast -w stop >/dev/null
    ;;
  *)
    echo "usage: $0 install | start DIR PORT | stop DIR" >&2; exit 2 ;;
esac
