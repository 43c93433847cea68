#!/usr/bin/env bash
# Start or stop a throwaway PostgreSQL cluster on 127.0.0.1 (for tests and local trials).
#
#   scripts/postgres.sh start [DIR]   create a cluster in DIR (default: a new /tmp/mc-pg.XXXXXX),
#                                     start it on a free loopback port and print, eval-ready:
#                                       MEGACONTEXT_PG_DIR=DIR
#                                       MEGACONTEXT_TEST_POSTGRES_URL=postgresql+psycopg://...
#   scripts/postgres.sh stop DIR      stop the cluster and delete DIR
#
#   eval "$(scripts/postgres.sh start | sed 's/^/export /')"
#
# The server listens on 127.0.0.1 only, trusts local connections (throwaway data only) and runs
# with fsync off. PostgreSQL refuses to run as root: as root, the server runs as the `postgres`
# user (created by the Debian package `postgresql`; install with
# `apt-get install -y --no-install-recommends postgresql`).
set -euo pipefail

find_bin() {
  local dir
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
    pg_config --bindir; return
  fi
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$dir" ] && [ -x "$dir/initdb" ]; then echo "$dir"; return; fi
  if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; return; fi
  echo "postgres.sh: no PostgreSQL server binaries (initdb) found; install the Debian package" \
       "postgresql" >&2
  exit 3
}

as_owner() {  # run a command as the cluster owner
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

cmd=${1:-}
case "$cmd" in
  start)
    BIN=$(find_bin)
    DIR=${2:-$(mktemp -d /tmp/mc-pg.XXXXXX)}
    mkdir -p "$DIR"
    chmod 755 "$DIR"
    if [ "$(id -u)" = 0 ]; then
      id postgres >/dev/null 2>&1 || { echo "postgres.sh: no 'postgres' user to run the server" >&2; exit 3; }
      chown postgres "$DIR"
    fi
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    as_owner "$BIN/initdb" -D "$DIR/data" -U mc --auth=trust -E UTF8 --no-sync >"$DIR/initdb.log" 2>&1 \
      || { cat "$DIR/initdb.log" >&2; exit 4; }
    as_owner "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 start -o \
      "-c listen_addresses=127.0.0.1 -p $PORT -k $DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
      >/dev/null || { cat "$DIR/server.log" >&2; exit 5; }
    as_owner "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U mc megacontext
    URL="postgresql+psycopg://mc@127.0.0.1:$PORT/megacontext"
    echo "$URL" >"$DIR/url"
    echo "MEGACONTEXT_PG_DIR=$DIR"
    echo "MEGACONTEXT_TEST_POSTGRES_URL=$URL"
    ;;
  stop)
    DIR=${2:?usage: postgres.sh stop DIR}
    BIN=$(find_bin)
    if [ -d "$DIR/data" ]; then as_owner "$BIN/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null || true; fi
    rm -rf "$DIR"
    ;;
  *)
    sed -n '2,17p' "$0" >&2
    exit 2
    ;;
esac
