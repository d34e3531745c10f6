#!/usr/bin/env bash
# The whole test suite, on a fresh machine or again: installs what is missing, then runs
#   1. unit tests of the core crate and the stand-in (no database),
#   2. in-database tests (pgrx-tests/, through `cargo pgrx test`),
#   3. end-to-end tests (tests/) against a throwaway PostgreSQL cluster and the stand-in.
# PG_MAJOR=16 (or 18) runs them on that PostgreSQL (see scripts/lib.sh); E2E_TESTS="ai_functions
# column_jobs ..." runs only those end-to-end test files (tests/Cargo.toml names them).
source "$(dirname "$0")/lib.sh"
cd "$REPO"

ensure_toolchain

say "1/3 unit tests: registry, validation, retry policy, HTTP client against the stand-in"
cargo test -p bailian-core -p bailian-standin

say "2/3 in-database tests: cargo pgrx test pg$PG_MAJOR"
prepare_run_dir
mkdir -p "$RUN_DIR/pgrx-test-data$PG_SUFFIX"
chown postgres:postgres "$RUN_DIR/pgrx-test-data$PG_SUFFIX"
cargo pgrx test "pg$PG_MAJOR" --runas postgres --pgdata "$RUN_DIR/pgrx-test-data$PG_SUFFIX"

say "3/3 end-to-end tests: PostgreSQL $PG_MAJOR + pg_bailian + the stand-in over loopback"
install_extension
cluster_start
trap 'cluster_stop' EXIT
only=()
for t in ${E2E_TESTS:-}; do only+=(--test "$t"); done
# The official DashScope SDK, the referee of tests/token_counts.rs.
case " ${E2E_TESTS:-token_counts} " in *" token_counts "*) ensure_token_referee ;; esac
[ ${#only[@]} -eq 0 ] || say "only these end-to-end tests: ${E2E_TESTS}"
cargo test -p pg_bailian_e2e "${only[@]}" -- --test-threads="${E2E_THREADS:-2}"

# Every e2e key contains "e2esecret"; none may have reached the server log.
if grep -n "e2esecret" "$PGLOG"; then
    echo "FAIL: an API key reached the server log ($PGLOG)" >&2
    exit 1
fi
say "all tests passed"
