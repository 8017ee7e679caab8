# Shared by scripts/*.sh. Source it; do not run it.
# Settings come from pgrx.toml at the repository root.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$HOME/.cargo/bin:$PATH"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
warn() { printf '\033[33mwarning:\033[0m %s\n' "$*" >&2; }
die() { printf '\033[31merror:\033[0m %s\n' "$*" >&2; exit 1; }

# toml_value SECTION KEY: a string value from pgrx.toml (flat sections, "quoted" values).
toml_value() {
    awk -v section="[$1]" -v key="$2" '
        /^\[/ { in_section = ($0 == section) }
        in_section && $1 == key { sub(/^[^=]*=[ \t]*"/, ""); sub(/".*$/, ""); print; exit }
    ' "$ROOT/pgrx.toml"
}

# Cluster data directories live where the postgres OS user can reach them, whatever the
# permissions of the directories above this checkout.
RUN_DIR="${CAUSAL_RUN_DIR:-/tmp/pg_causal-run}"

PGRX_VERSION="$(toml_value pgrx version)"
PG_MAJOR="$(toml_value postgres major)"
PG_CONFIG="$(toml_value postgres pg_config)"
PG_BIN="$(dirname "$PG_CONFIG")"
[ -n "$PGRX_VERSION" ] && [ -n "$PG_MAJOR" ] && [ -n "$PG_CONFIG" ] || die "pgrx.toml is missing [pgrx] version or [postgres] major/pg_config"

APT_PACKAGES=(postgresql-"$PG_MAJOR" postgresql-server-dev-"$PG_MAJOR" libclang-dev sudo pkg-config libssl-dev)

# Installs whatever is missing, and says what it does. Safe to run again.
ensure_setup() {
    command -v cargo >/dev/null || die "cargo is not on PATH: install the Rust toolchain (rustup) first"
    # The lint gates of scripts/test.sh.
    if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
        command -v rustup >/dev/null || die "rustfmt or clippy is missing, and there is no rustup to add them"
        say "Adding the rustfmt and clippy components"
        rustup component add rustfmt clippy
    fi

    local missing=()
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        [ "$(id -u)" -eq 0 ] || die "missing Debian packages (${missing[*]}); run as root to install them"
        say "Installing Debian packages: ${missing[*]}"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
    else
        say "Debian packages present: ${APT_PACKAGES[*]}"
    fi

    if cargo pgrx --version 2>/dev/null | grep -q " $PGRX_VERSION\$"; then
        say "cargo-pgrx $PGRX_VERSION present"
    else
        say "Installing cargo-pgrx $PGRX_VERSION (takes about 5 minutes)"
        cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
    fi

    local pgrx_config="$HOME/.pgrx/config.toml"
    if [ -f "$pgrx_config" ] && grep -q "pg$PG_MAJOR = \"$PG_CONFIG\"" "$pgrx_config"; then
        say "pgrx knows PostgreSQL $PG_MAJOR at $PG_CONFIG"
    else
        say "Registering PostgreSQL $PG_MAJOR with pgrx (cargo pgrx init --pg$PG_MAJOR $PG_CONFIG)"
        cargo pgrx init --pg"$PG_MAJOR" "$PG_CONFIG"
    fi
}

# Builds the extension in release mode and installs it into PostgreSQL's directories.
install_extension() {
    say "Building and installing pg_causal into PostgreSQL $PG_MAJOR"
    # A failed build must stop here: the library of an earlier install would otherwise be
    # tested or benchmarked in its place.
    (cd "$ROOT" && set -o pipefail &&
        cargo pgrx install --release --pg-config "$PG_CONFIG" 2>&1 | { grep -vE '^\s*(Compiling|Checking)' || true; }) ||
        die "building pg_causal failed"
    [ -f "$("$PG_CONFIG" --sharedir)/extension/pg_causal.control" ] || die "pg_causal was not installed"
    # The full scripts of released versions (cargo pgrx installs the current one and the
    # upgrade scripts in sql/): CREATE EXTENSION ... VERSION '<old>' needs them, as the
    # upgrade tests do.
    cp "$ROOT"/sql/released/pg_causal--*.sql "$("$PG_CONFIG" --sharedir)/extension/"
}

# as_postgres CMD...: runs a command as the postgres OS user (Postgres refuses to run as root).
as_postgres() {
    if [ "$(id -u)" -eq 0 ]; then
        sudo -u postgres -- "$@"
    else
        "$@"
    fi
}

# free_port: a loopback TCP port nobody listens on.
free_port() {
    local port
    for _ in $(seq 1 200); do
        port=$((20000 + RANDOM % 20000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    die "no free loopback port found"
}

# start_cluster DIR PORT: initdb (if needed) and start a throwaway cluster listening on
# 127.0.0.1:PORT with its socket in DIR/sock. Extra postgresql.conf lines come on stdin.
start_cluster() {
    local dir="$1" port="$2"
    mkdir -p "$dir"
    chmod 755 "$RUN_DIR" 2>/dev/null || true
    [ "$(id -u)" -ne 0 ] || chown postgres:postgres "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        as_postgres "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 ||
            { cat "$dir/initdb.log" >&2; die "initdb failed in $dir"; }
    fi
    as_postgres mkdir -p "$dir/sock"
    {
        echo "port = $port"
        echo "listen_addresses = '127.0.0.1'"
        echo "unix_socket_directories = '$dir/sock'"
        echo "fsync = off"
        echo "wal_level = logical"
        echo "output_plugin_libraries = 'pgoutput, test_decoding, pg_causal'"
        cat
    } | as_postgres tee "$dir/data/postgresql.auto.conf" >/dev/null
    as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null ||
        { cat "$dir/server.log" >&2; die "PostgreSQL did not start in $dir"; }
}

stop_cluster() {
    local dir="$1"
    if [ -f "$dir/data/postmaster.pid" ]; then
        as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null 2>&1 ||
            as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    fi
}

# Stops every cluster whose data directory lies under DIR (leftovers of an aborted run).
stop_clusters_under() {
    local base="$1" pidfile
    [ -d "$base" ] || return 0
    while IFS= read -r pidfile; do
        stop_cluster "$(dirname "$(dirname "$pidfile")")"
    done < <(find "$base" -maxdepth 4 -name postmaster.pid -path '*/data/*' 2>/dev/null)
}

# The write-path benchmarks (bench/capture.sh, bench/seal_lag.sh) use one cluster, in
# $BENCH_NODE listening on $BENCH_PORT, holding a plain and a replicated table alike.
bench_psql() {
    as_postgres psql -X -q -h "$BENCH_NODE/sock" -p "$BENCH_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"
}
bench_value() { bench_psql -t -A -c "$1"; }
# Restarts the cluster in DIR with the sync worker loaded, syncing database postgres.
restart_with_sync_worker() {
    local dir="$1"
    stop_cluster "$dir"
    printf "shared_preload_libraries = 'pg_causal'\ncausal.database = 'postgres'\n" |
        as_postgres tee -a "$dir/data/postgresql.auto.conf" >/dev/null
    as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null ||
        die "PostgreSQL did not start again with the sync worker"
}
bench_tables() {
    bench_psql -c "CREATE EXTENSION pg_causal; SELECT causal.create_group('bench');
        CREATE TABLE plain (id bigserial PRIMARY KEY, payload text NOT NULL, n integer);
        CREATE TABLE replicated (id bigserial PRIMARY KEY, payload text NOT NULL, n integer);
        SELECT causal.replicate('bench', 'replicated');" >/dev/null
}
bench_tps() { # script clients [pgbench options...] -> transactions per second of bench/<script>.sql
    local script="$1" clients="$2"
    shift 2
    as_postgres "$PG_BIN/pgbench" -n -h "$BENCH_NODE/sock" -p "$BENCH_PORT" -U postgres -c "$clients" -j "$clients" \
        "$@" -f - postgres <"$ROOT/bench/$script.sql" 2>/dev/null | awk '/^tps = / { printf "%.1f", $3 }'
}

# Benchmarks: `bench_log NAME` at the start keeps a copy of everything the script prints;
# `bench_json` at the end writes its markdown tables as JSON to bench/results/NAME.json
# (untracked), with the commit, date and machine, so a run can be compared with the last.
bench_log() {
    BENCH_NAME="$1"
    BENCH_OUT="$(mktemp)"
    exec > >(tee "$BENCH_OUT")
}

bench_json() {
    [ -n "${BENCH_OUT:-}" ] || return 0
    sleep 0.2 # let tee catch up
    local dir="$ROOT/bench/results" commit
    mkdir -p "$dir"
    commit="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    local dirty=""
    git -C "$ROOT" diff --quiet HEAD 2>/dev/null || dirty="+changes"
    awk -v name="$BENCH_NAME" -v commit="$commit$dirty" -v date="$(date -u +%FT%TZ)" \
        -v cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')" -v cores="$(nproc)" '
        function esc(s) { gsub(/\\/, "\\\\", s); gsub(/"/, "\\\"", s); gsub(/\033\[[0-9;]*m/, "", s); return s }
        function cells(line, out,   n, i, parts) {
            sub(/^\|/, "", line); sub(/\|[ \t]*$/, "", line)
            n = split(line, parts, "|")
            for (i = 1; i <= n; i++) { out[i] = parts[i]; gsub(/^ +| +$/, "", out[i]) }
            return n
        }
        function issep(l) { return l ~ /^\|[-| :]+\|?[ \t]*$/ }
        { line[NR] = $0 }
        END {
            printf "{\"bench\": \"%s\", \"commit\": \"%s\", \"date\": \"%s\", \"machine\": {\"cpu\": \"%s\", \"cores\": %d}, \"tables\": [", esc(name), commit, date, esc(cpu), cores
            t = 0; open = 0
            for (k = 1; k <= NR; k++) {
                l = line[k]
                if (l !~ /^\|/ || issep(l)) continue
                if (k < NR && issep(line[k + 1])) {
                    # A header: a new table.
                    nh = cells(l, head); printf "%s[", (open ? "]," : ""); open = 1; rows = 0; continue
                }
                if (!open) continue
                n = cells(l, c); printf "%s{", (rows++ ? "," : "")
                for (i = 1; i <= n; i++) printf "%s\"%s\": \"%s\"", (i > 1 ? ", " : ""), esc(head[i]), esc(c[i])
                printf "}"
            }
            printf "%s], \"log\": \"bench/results/%s.log\"}\n", (open ? "]" : ""), name
        }
    ' "$BENCH_OUT" >"$dir/$BENCH_NAME.json"
    sed 's/\x1b\[[0-9;]*m//g' "$BENCH_OUT" >"$dir/$BENCH_NAME.log"
    rm -f "$BENCH_OUT"
    say "Figures written to bench/results/$BENCH_NAME.json"
}
