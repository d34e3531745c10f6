# Shared set-up for scripts/demo.sh, scripts/test.sh and scripts/bench.sh. Every step is
# idempotent: it checks before it installs, so a second run costs seconds.
# Sourced, not run.

set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG_MAJOR=15
PG_CONFIG="${PG_CONFIG:-/usr/lib/postgresql/$PG_MAJOR/bin/pg_config}"
[ -x "$PG_CONFIG" ] || PG_CONFIG=/usr/bin/pg_config
PG_BIN="/usr/lib/postgresql/$PG_MAJOR/bin"
PGRX_VERSION=0.18.0
export PATH="$HOME/.cargo/bin:$PATH"

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages: the PostgreSQL 15 server and headers, clang for bindgen, sudo for --runas.
ensure_packages() {
    local wanted=(postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR libclang-dev clang sudo)
    local missing=()
    for p in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing Debian packages: ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    # Debian's package starts a cluster of its own on 5432; ours runs elsewhere and does not need it.
}

ensure_cargo_pgrx() {
    if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
        say "installing cargo-pgrx $PGRX_VERSION (about 5 minutes, once)"
        cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
    fi
    if ! grep -qs "pg$PG_MAJOR" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
        say "cargo pgrx init --pg$PG_MAJOR $PG_CONFIG"
        cargo pgrx init --pg$PG_MAJOR "$PG_CONFIG"
    fi
}

# pgvector, for the tests of vector/halfvec targets. A user's machine installs its
# distribution's package (postgresql-15-pgvector) or pgvector's own; Debian 12 has none, so
# here it is built from a vendored source release when one is at hand:
# $PG_BAILIAN_VENDOR_DIR, or ../shared/vendor beside the checkout or beside its local origin.
PGVECTOR_VERSION=0.8.6
ensure_pgvector() {
    local sharedir
    sharedir="$("$PG_CONFIG" --sharedir)"
    if [ -f "$sharedir/extension/vector.control" ]; then
        export PG_BAILIAN_PGVECTOR=installed
        return
    fi
    local tarball="" origin=""
    # A clone of a local checkout (git clone . /tmp/x) has ../shared beside its origin.
    origin="$(git -C "$REPO" remote get-url origin 2>/dev/null || true)"
    [ -d "$origin" ] || origin=""
    for dir in "${PG_BAILIAN_VENDOR_DIR:-}" "$REPO/../shared/vendor" ${origin:+"$origin/../shared/vendor"}; do
        if [ -n "$dir" ] && [ -f "$dir/pgvector-$PGVECTOR_VERSION.tar.gz" ]; then
            tarball="$dir/pgvector-$PGVECTOR_VERSION.tar.gz"
            break
        fi
    done
    if [ -z "$tarball" ]; then
        echo "note: pgvector is not installed and no pgvector-$PGVECTOR_VERSION.tar.gz was found;" \
            "tests of vector targets will be skipped" >&2
        export PG_BAILIAN_PGVECTOR=missing
        return
    fi
    say "building pgvector $PGVECTOR_VERSION from $tarball"
    local build
    build="$(mktemp -d)"
    tar xzf "$tarball" -C "$build"
    make -s -C "$build/pgvector-$PGVECTOR_VERSION" PG_CONFIG="$PG_CONFIG" >/dev/null
    as_root make -s -C "$build/pgvector-$PGVECTOR_VERSION" PG_CONFIG="$PG_CONFIG" install >/dev/null
    rm -rf "$build"
    export PG_BAILIAN_PGVECTOR=installed
}

ensure_toolchain() {
    ensure_packages
    ensure_cargo_pgrx
    ensure_pgvector
}

# Installs the extension into the system PostgreSQL (pass --release for an optimized build).
install_extension() {
    say "building and installing pg_bailian into PostgreSQL $PG_MAJOR $*"
    (cd "$REPO" && as_root env "PATH=$PATH" "HOME=$HOME" cargo pgrx install --pg-config "$PG_CONFIG" "$@")
    # The install scripts of released versions, so that CREATE EXTENSION ... VERSION can make
    # an old release for the upgrade test (cargo pgrx install copies only the update scripts).
    as_root cp "$REPO"/sql/releases/pg_bailian--*.sql "$("$PG_CONFIG" --sharedir)/extension/"
}

# --- the throwaway cluster --------------------------------------------------------------
# A project-local cluster run by the postgres user (PostgreSQL refuses root). When the
# postgres user cannot reach the checkout (a home directory of mode 700, say), it lives
# under /tmp instead.

RUN_DIR="${PG_BAILIAN_RUN_DIR:-$REPO/.run}"
PGPORT="${PG_BAILIAN_PORT:-28816}"
export PGPORT PGHOST=127.0.0.1 PGUSER=postgres

# The key the demo and tests deploy with 'env:PG_BAILIAN_DEMO_KEY'; the stand-in accepts it.
export PG_BAILIAN_DEMO_KEY="${PG_BAILIAN_DEMO_KEY:-sk-demo-env-key-00000000}"

prepare_run_dir() {
    mkdir -p "$RUN_DIR"
    chmod 755 "$RUN_DIR"
    if ! sudo -u postgres test -x "$RUN_DIR" 2>/dev/null; then
        RUN_DIR="/tmp/pg_bailian-$(echo "$REPO" | md5sum | cut -c1-8)"
        echo "note: the postgres user cannot reach $REPO; the cluster lives in $RUN_DIR"
        mkdir -p "$RUN_DIR"
        chmod 755 "$RUN_DIR"
    fi
    PGDATA_DIR="$RUN_DIR/pgdata"
    PGLOG="$RUN_DIR/postgres.log"
    export PG_BAILIAN_LOG="$PGLOG"
}

pg_as_postgres() { sudo -u postgres env "PG_BAILIAN_DEMO_KEY=$PG_BAILIAN_DEMO_KEY" "$@"; }

cluster_start() {
    prepare_run_dir
    if [ ! -s "$PGDATA_DIR/PG_VERSION" ]; then
        say "initdb $PGDATA_DIR"
        rm -rf "$PGDATA_DIR"
        mkdir -p "$PGDATA_DIR"
        chown postgres:postgres "$PGDATA_DIR"
        pg_as_postgres "$PG_BIN/initdb" -D "$PGDATA_DIR" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    fi
    grep -q "pg_bailian_cluster.conf" "$PGDATA_DIR/postgresql.conf" ||
        echo "include_if_exists = 'pg_bailian_cluster.conf'" >>"$PGDATA_DIR/postgresql.conf"
    # Rewritten at every start, so a changed setting reaches an existing cluster.
    cat >"$PGDATA_DIR/pg_bailian_cluster.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$PGDATA_DIR'
max_connections = 60
shared_buffers = ${PG_BAILIAN_SHARED_BUFFERS:-128MB}
log_line_prefix = '%m [%p] %q%u@%d '
log_min_messages = info
log_error_verbosity = verbose
# The stand-in listens on loopback: let roles that may deploy (not only superusers) use it.
pg_bailian.allowed_hosts = 'http://127.0.0.1, http://localhost, dashscope.aliyuncs.com, dashscope-intl.aliyuncs.com, dashscope-us.aliyuncs.com, *.opensearch.aliyuncs.com'
EOF
    chown postgres:postgres "$PGDATA_DIR/pg_bailian_cluster.conf"
    cluster_stop quiet
    : >"$PGLOG"
    chown postgres:postgres "$PGLOG"
    say "starting PostgreSQL $PG_MAJOR on 127.0.0.1:$PGPORT (log: $PGLOG)"
    if ! pg_as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -l "$PGLOG" -w -t 60 start >/dev/null; then
        echo "PostgreSQL did not start; the end of $PGLOG:" >&2
        tail -n 5 "$PGLOG" >&2
        echo "(another server on port $PGPORT? set PG_BAILIAN_PORT to use another)" >&2
        return 1
    fi
}

cluster_stop() {
    prepare_run_dir
    if [ -s "$PGDATA_DIR/postmaster.pid" ]; then
        [ "${1:-}" = quiet ] || say "stopping PostgreSQL"
        pg_as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w stop >/dev/null 2>&1 || true
    fi
}

# Runs psql against the throwaway cluster.
psql_run() { psql -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U postgres "$@"; }
