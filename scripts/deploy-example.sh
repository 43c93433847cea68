#!/usr/bin/env bash
# A whole MegaContext deployment on one machine, on 127.0.0.1 only (docs/deployment.md):
#
#   PostgreSQL (tree metadata, lexical index, audit chain)   scripts/postgres.sh, in a temp dir
#   moto_server (stand-in for S3: sealed segments)           .venv/bin/moto_server
#   a dask scheduler and 2 dask workers (ingest)             .venv/bin/dask
#   megacontext ingest --cluster  (docs/*.md into one tree, one writer)
#   2 megacontext serve processes over the same --root, one request to each
#
# then stops everything and deletes the temp dir (also on Ctrl-C or a failure).
#
#   bash scripts/deploy-example.sh            (run from anywhere; uses the repo's .venv)
#   KEEP=1 bash scripts/deploy-example.sh     keep the temp dir (logs) after stopping
#
# Needs the Debian package `postgresql` (initdb, pg_ctl) and the dev dependencies in .venv
# (moto[server], dask/distributed). Throwaway data only: the database trusts local connections.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$REPO/.venv/bin"
WORK=$(mktemp -d /tmp/mc-deploy.XXXXXX)
ROOT="$WORK/service"                      # the services' --root (keys.sqlite, tenants/…)
TREE="$ROOT/tenants/demo/trees/docs"      # one tree: tenant demo, name docs
PIDS=()
PG_DIR=""

say() { printf '\n== %s\n' "$*"; }

cleanup() {
  local rc=$?
  say "stopping"
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    kill "${PIDS[i]}" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$PG_DIR" ]; then
    if [ -n "${KEEP:-}" ]; then cp "$PG_DIR/server.log" "$WORK/postgres.log" 2>/dev/null || true; fi
    "$REPO/scripts/postgres.sh" stop "$PG_DIR" || true
  fi
  if [ -n "${KEEP:-}" ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
  if [ "$rc" = 0 ]; then echo "deploy-example: OK"; else echo "deploy-example: FAILED ($rc); logs were in $WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  "$BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() {  # wait_for URL NAME LOG: poll an HTTP URL until it answers (60 s)
  for _ in $(seq 1 120); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.5
  done
  echo "$2 did not come up; its log:" >&2
  tail -n 30 "$3" >&2
  return 1
}

# 1. PostgreSQL: shared metadata database ------------------------------------------------------
say "PostgreSQL"
# Its own temp dir (not under $WORK): as root, the server runs as the postgres user.
PG_ENV=$("$REPO/scripts/postgres.sh" start)
PG_DIR=$(sed -n 's/^MEGACONTEXT_PG_DIR=//p' <<<"$PG_ENV")
PG_URL=$(sed -n 's/^MEGACONTEXT_TEST_POSTGRES_URL=//p' <<<"$PG_ENV")
echo "metadata: $PG_URL"

# 2. moto_server: the S3 stand-in for sealed segments -----------------------------------------
say "object store (moto_server, S3 API)"
S3_PORT=$(free_port)
"$BIN/moto_server" -H 127.0.0.1 -p "$S3_PORT" >"$WORK/moto.log" 2>&1 &
PIDS+=($!)
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL_S3="http://127.0.0.1:$S3_PORT"
wait_for "$AWS_ENDPOINT_URL_S3/" moto_server "$WORK/moto.log"
"$BIN/python" -c 'import boto3; boto3.client("s3").create_bucket(Bucket="mc-segments")'
echo "segments: s3://mc-segments/mc at $AWS_ENDPOINT_URL_S3"

# 3. dask: a scheduler and two workers for ingest ----------------------------------------------
say "dask scheduler + 2 workers"
SCHED_PORT=$(free_port)
SCHED="tcp://127.0.0.1:$SCHED_PORT"
"$BIN/dask" scheduler --host 127.0.0.1 --port "$SCHED_PORT" --no-dashboard \
  >"$WORK/scheduler.log" 2>&1 &
PIDS+=($!)
for n in 1 2; do
  "$BIN/dask" worker "$SCHED" --host 127.0.0.1 --nworkers 1 --nthreads 1 --no-dashboard \
    --name "worker-$n" >"$WORK/worker-$n.log" 2>&1 &
  PIDS+=($!)
done
"$BIN/python" - "$SCHED" <<'EOF'
import sys
from distributed import Client
with Client(sys.argv[1], timeout=60) as client:
    client.wait_for_workers(2, timeout=60)
    print(f"scheduler {sys.argv[1]}: {len(client.scheduler_info()['workers'])} workers")
EOF

# 4. The tree: metadata in PostgreSQL, sealed segments copied to S3 ----------------------------
# The CLI has no option for a tree's metadata URL or replica roots: both are settings of the
# store, fixed when it is created. Create the store first (Python API), then ingest into it; the
# session adopts it and records the base and GistNet it is bound to.
say "tree $TREE"
"$BIN/python" - "$TREE/tree" "$PG_URL" <<'EOF'
import sys
from megacontext.models.bundle import load_bundle, resolve_focus
from megacontext.models.loading import load_base
from megacontext.store import LocalStore, Replication

path, url = sys.argv[1], sys.argv[2]
base = load_base("default")
bundle = load_bundle(resolve_focus("default", base.fingerprints, base.source),
                     fingerprints=base.fingerprints)
store = LocalStore.create(
    path,
    dim=base.d_model,
    K=bundle.get("gistnet").config.K,
    metadata_url=url,
    replication=Replication(roots=["s3://mc-segments/mc"], replicas=1, write_quorum=1,
                            keep_local=True),
    segment_bytes=1 << 20,  # small segments, so that this small corpus seals some
)
store.close()
print(f"created {path}: metadata in PostgreSQL, sealed segments on s3://mc-segments/mc")
EOF

say "megacontext ingest --cluster $SCHED"
"$BIN/megacontext" ingest "$REPO"/docs/*.md --tree "$TREE" --cluster "$SCHED"
"$BIN/megacontext" store info "$TREE/tree"
"$BIN/python" -c 'import boto3
r = boto3.client("s3").list_objects_v2(Bucket="mc-segments")
print("objects in s3://mc-segments:", [o["Key"] for o in r.get("Contents", [])])'

# 5. Two service processes over the same root and database -------------------------------------
say "API key"
KEY=$("$BIN/megacontext" keys create --root "$ROOT" --tenant demo --scopes read,write \
  --metadata-url "$PG_URL" | grep -o 'mck_[A-Za-z0-9_-]*' | head -n 1)
[ -n "$KEY" ] || { echo "no key printed" >&2; exit 1; }
echo "key: ${KEY:0:12}…"

say "2 x megacontext serve"
PORTS=()
for n in 1 2; do
  port=$(free_port)
  PORTS+=("$port")
  "$BIN/megacontext" serve --root "$ROOT" --host 127.0.0.1 --port "$port" \
    --metadata-url "$PG_URL" --canary-interval 0 >"$WORK/serve-$n.log" 2>&1 &
  PIDS+=($!)
done
for n in 1 2; do
  wait_for "http://127.0.0.1:${PORTS[n-1]}/v1/health" "serve $n" "$WORK/serve-$n.log"
done

say "GET /v1/trees/docs on serve 1 (port ${PORTS[0]})"
curl -fsS "http://127.0.0.1:${PORTS[0]}/v1/trees/docs" -H "Authorization: Bearer $KEY"
echo
say "POST /v1/trees/docs/ask on serve 2 (port ${PORTS[1]})"
curl -fsS "http://127.0.0.1:${PORTS[1]}/v1/trees/docs/ask" -H "Authorization: Bearer $KEY" \
  -H 'Content-Type: application/json' \
  -d '{"question": "How do I add a dask worker?", "max_new_tokens": 16}' | head -c 600
echo
