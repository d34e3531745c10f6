#!/usr/bin/env bash
# The main job end to end on a fresh machine: installs what is missing, builds and installs
# pg_bailian (release) into PostgreSQL 15 (or PG_MAJOR), starts a throwaway cluster and the Bailian
# stand-in, deploys models and runs ai_gen, ai_translate and ai_embed over a sample table.
# KEEP=1 leaves the cluster and the stand-in running afterwards.
source "$(dirname "$0")/lib.sh"
cd "$REPO"

ensure_toolchain
install_extension --release
say "building the Bailian stand-in"
cargo build --release -q -p bailian-standin
cluster_start

ADDR_FILE="$(mktemp)"
"$REPO/target/release/bailian-standin" --latency-ms "${STANDIN_LATENCY_MS:-20}" --addr-file "$ADDR_FILE" \
    >"$RUN_DIR/standin.log" 2>&1 &
STANDIN_PID=$!
cleanup() {
    if [ "${KEEP:-0}" = 1 ]; then
        echo "KEEP=1: PostgreSQL on 127.0.0.1:$PGPORT, stand-in pid $STANDIN_PID at http://$(cat "$ADDR_FILE")"
        return
    fi
    kill "$STANDIN_PID" 2>/dev/null || true
    cluster_stop
}
trap cleanup EXIT
for _ in $(seq 50); do [ -s "$ADDR_FILE" ] && break; sleep 0.1; done
BASE_URL="http://$(cat "$ADDR_FILE")/compatible-mode/v1"
say "stand-in for Bailian at $BASE_URL"

psql_run -q -c "DROP DATABASE IF EXISTS pg_bailian_demo WITH (FORCE)" -c "CREATE DATABASE pg_bailian_demo"
say "psql pg_bailian_demo < examples/demo.sql"
psql_run -d pg_bailian_demo -v "base_url=$BASE_URL" -f examples/demo.sql 2>&1
say "stand-in counters: $(curl -s "http://$(cat "$ADDR_FILE")/_standin/stats" 2>/dev/null || true)"
