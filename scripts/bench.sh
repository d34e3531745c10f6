#!/usr/bin/env bash
# Benchmarks against the stand-in, each with its baseline in the same run: scalar-call
# overhead, column throughput for embeddings and generation, the rate limit, memory, and
# batched queries (UPDATE with ai_embed, ai_gen under a LIMIT, batching overhead, the query
# shapes of filters, aggregates and sorts against row by row), and CALL ai_update against
# ai_embed_column; on a Citus cluster (coordinator and two workers), ai_update's scale-out and
# one rate limit shared by the nodes.
# Prints a table and records it, with the command, in benches/RESULTS.md.
#   bash scripts/bench.sh                 # all scenarios (about 14 minutes after the build)
#   bash scripts/bench.sh overhead memory # some of them
source "$(dirname "$0")/lib.sh"
cd "$REPO"

ensure_toolchain
install_extension --release
say "building the benchmark driver"
cargo build --release -q -p pg_bailian_bench
cluster_start
trap 'cluster_stop; citus_cluster_stop' EXIT
# The Citus scenarios' cluster (PostgreSQL 15 with Citus built from ../shared/vendor only).
case " ${*:-citus} " in *" citus "*) citus_cluster_start ;; esac

TABLE="$(mktemp)"
say "running: target/release/pg_bailian_bench $*"
status=0
BENCH_RESULTS="$TABLE" "$REPO/target/release/pg_bailian_bench" "$@" || status=$?

{
    echo "# Benchmark results"
    echo
    echo "Command: \`bash scripts/bench.sh${*:+ $*}\` on $(date -u +%Y-%m-%d), $(nproc) cores,"
    echo "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), PostgreSQL $PG_MAJOR,"
    echo "pg_bailian release build, stand-in in the benchmark process on loopback."
    echo
    cat "$TABLE"
} >"$REPO/benches/RESULTS.md"
say "recorded in benches/RESULTS.md"
exit $status
