# shellcheck shell=bash
# Shared helpers for contrib/demo.sh, contrib/bench/*.sh and contrib/soak/soak.sh (sourced, not run).
# They start throwaway PostgreSQL 15 clusters on free ports, as the postgres user when root.

PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/15/bin}

# Prints the ports that a TCP socket is bound to, in decimal, from /proc (no ss
# needed). TIME_WAIT leftovers do not count: servers bind with SO_REUSEADDR.
bound_ports()
{
    local f _ addr state
    for f in /proc/net/tcp /proc/net/tcp6; do
        [ -r "$f" ] || continue
        while read -r _ addr _ state _; do
            if [[ "$addr" == *:* ]] && [ "$state" != 06 ]; then
                echo $((16#${addr##*:}))
            fi
        done <"$f"
    done
}

# free_port START: the first port from START up that nothing is bound to.
free_port()
{
    local port=$1 used
    used=" $(bound_ports | sort -un | tr '\n' ' ') "
    while [[ "$used" == *" $port "* ]]; do
        port=$((port + 1))
    done
    echo "$port"
}

# port_listening PORT: whether something listens on PORT.
port_listening()
{
    local f hex
    hex=$(printf '%04X' "$1")
    for f in /proc/net/tcp /proc/net/tcp6; do
        [ -r "$f" ] || continue
        if awk -v p="$hex" 'NR > 1 { split($2, a, ":"); if (a[2] == p && $4 == "0A") found = 1 }
                           END { exit !found }' "$f"; then
            return 0
        fi
    done
    return 1
}

# wait_listening PORT SECONDS: waits until PORT listens; fails after SECONDS.
wait_listening()
{
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        port_listening "$1" && return 0
        sleep 0.1
    done
    return 1
}

# PostgreSQL and PgBouncer refuse to run as root: run them as postgres then.
as_pg()
{
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# pg_data_dir WANTED: WANTED if the user running PostgreSQL can reach it, else a
# folder under /var/tmp (a checkout under /root is out of reach of postgres).
pg_data_dir()
{
    local wanted=$1
    mkdir -p "$(dirname "$wanted")"
    if [ "$(id -u)" -ne 0 ] || runuser -u postgres -- test -x "$(dirname "$wanted")"; then
        echo "$wanted"
    else
        echo "/var/tmp/pgwicket-$(basename "$(dirname "$wanted")")-$(id -u)/$(basename "$wanted")"
    fi
}

# pg_init DIR: creates a cluster in DIR (superuser postgres, trust auth) unless one is there.
pg_init()
{
    local dir=$1
    if [ -f "$dir/PG_VERSION" ]; then
        return 0
    fi
    rm -rf "$dir"
    mkdir -p "$dir"
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres:postgres "$dir"
    fi
    chmod 700 "$dir"
    as_pg "$PG_BINDIR/initdb" -D "$dir" -U postgres --auth=trust --no-sync -E UTF8 \
        --locale=C >"$dir.initdb.log" 2>&1 || {
        cat "$dir.initdb.log" >&2
        return 1
    }
}

# pg_start DIR PORT [EXTRA_OPTIONS]: starts the cluster on 127.0.0.1:PORT, TCP only.
pg_start()
{
    local dir=$1 port=$2 extra=${3:-}
    pg_stop "$dir"
    as_pg "$PG_BINDIR/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories='' $extra" \
        start >/dev/null || {
        tail -n 20 "$dir/server.log" >&2
        return 1
    }
}

# pg_stop DIR: stops the cluster in DIR if it runs (quietly).
pg_stop()
{
    local dir=$1
    [ -f "$dir/postmaster.pid" ] || return 0
    as_pg "$PG_BINDIR/pg_ctl" -D "$dir" -m fast -w stop >/dev/null 2>&1 || true
}

# pgw_start BIN WORKDIR PGPORT LABEL: writes WORKDIR/pgwicket.ini (a free port, the
# Unix socket and the log in WORKDIR, every database on 127.0.0.1:PGPORT), starts
# BIN in the background and waits until it listens. Sets pgwport and pgw_pid.
# $PGW_EXTRA_SETTINGS and $PGW_EXTRA_DATABASES (lines) go into [pgwicket] and [databases].
pgw_start()
{
    local bin=$1 work=$2 pg_port=$3 label=$4
    pgwport=$(free_port 56432)
    printf '%s\n' "[pgwicket]" "listen_addr = 127.0.0.1" "listen_port = $pgwport" \
        "unix_socket_dir = $work" "logfile = $work/pgwicket.log" "${PGW_EXTRA_SETTINGS:-}" "" \
        "[databases]" "* = host=127.0.0.1 port=$pg_port" "${PGW_EXTRA_DATABASES:-}" >"$work/pgwicket.ini"
    "$bin" -c "$work/pgwicket.ini" 2>>"$work/pgwicket.log" &
    pgw_pid=$!
    if ! wait_listening "$pgwport" 10; then
        echo "$label: pgwicket did not start; its log:" >&2
        cat "$work/pgwicket.log" >&2
        return 1
    fi
}

# pgw_stop: stops the pgwicket started by pgw_start (or any $pgw_pid), if it runs.
pgw_stop()
{
    if [ -n "${pgw_pid:-}" ] && kill -0 "$pgw_pid" 2>/dev/null; then
        kill -TERM "$pgw_pid" 2>/dev/null || true
        wait "$pgw_pid" 2>/dev/null || true
    fi
}

# pgw_binary ROOT LABEL: prints the pgwicket binary to measure: $PGWICKET_BIN, or the
# one built in ROOT (in-tree or in build/); fails with a message when there is none.
pgw_binary()
{
    local root=$1 label=$2 candidate
    local candidates=("$root/pgwicket" "$root/build/pgwicket")
    if [ -n "${PGWICKET_BIN:-}" ]; then
        candidates=("$PGWICKET_BIN")  # asked for by name: that one or none
    fi
    for candidate in "${candidates[@]}"; do
        if [ -x "$candidate" ]; then
            echo "$candidate"
            return 0
        fi
    done
    echo "$label: no pgwicket binary; build first (make, or contrib/demo.sh), or set PGWICKET_BIN" >&2
    return 1
}

# work_dir PREFIX: a new folder /tmp/PREFIX.XXXXXX that the server user can use
# (owned by postgres when we are root, since PostgreSQL refuses to run as root).
work_dir()
{
    local dir
    dir=$(mktemp -d "/tmp/$1.XXXXXX")
    chmod 755 "$dir"
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres:postgres "$dir"
    fi
    echo "$dir"
}

# pgbench_run LABEL CONNINFO ARGS...: runs `pgbench -n -S -T $secs ARGS CONNINFO` (the
# caller sets $pgbench, $secs and $work) and prints "TPS TXNS": its TPS (rounded) and the
# number of transactions it processed; or "fail fail" with the end of pgbench's output on
# stderr.
pgbench_run()
{
    local label=$1 conninfo=$2 out
    shift 2
    out=$work/pgbench-$RANDOM-$RANDOM.log
    if "$pgbench" -n -S -T "$secs" "$@" "$conninfo" >"$out" 2>&1; then
        awk '/^tps = / && tps == "" { tps = sprintf("%.0f", $3) }
             /^number of transactions actually processed:/ && txns == "" { split($6, a, "/"); txns = a[1] }
             END { if (tps == "" || txns == "") print "fail fail"; else print tps, txns }' "$out"
    else
        echo "$label: pgbench $* ($conninfo) failed:" >&2
        tail -n 5 "$out" >&2
        echo fail fail
    fi
}

# pgbench_tps LABEL CONNINFO ARGS...: as pgbench_run, but prints only the TPS (or "fail").
pgbench_tps()
{
    local result
    result=$(pgbench_run "$@")
    echo "${result%% *}"
}

# busy_ticks: the whole machine's busy CPU time so far, in clock ticks (USER_HZ, see
# `getconf CLK_TCK`): user + nice + system + irq + softirq + steal of /proc/stat's
# aggregate "cpu" line (guest time is already counted in user).
busy_ticks()
{
    awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat
}

# cpu_ticks PID: CPU clock ticks used by a process and its reaped children (utime,
# stime, cutime, cstime of /proc/PID/stat): for pgwicket's supervisor, its workers'
# CPU once they have exited.
cpu_ticks()
{
    awk '{ sub(/^.*\) /, ""); print $12 + $13 + $14 + $15 }' "/proc/$1/stat"
}

# ratio A B: A / B with two decimals, or "-" when either is not a number.
ratio()
{
    awk -v a="$1" -v b="$2" 'BEGIN {
        if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.2f", a / b; else printf "-" }'
}

# bench_setup ROOT LABEL: what every bench script starts with: sets $secs (BENCH_SECONDS,
# 10), $pgbench and $bin (pgw_binary), and checks PostgreSQL's tools are there.
bench_setup()
{
    local root=$1 label=$2 tool
    secs=${BENCH_SECONDS:-10}
    pgbench=$PG_BINDIR/pgbench
    bin=$(pgw_binary "$root" "$label") || return 1
    for tool in "$PG_BINDIR/initdb" "$PG_BINDIR/pg_ctl" "$pgbench"; do
        if [ ! -x "$tool" ]; then
            echo "$label: $tool not found; run contrib/install-deps.sh" >&2
            return 1
        fi
    done
}

# pgbench_init LABEL PORT: `pgbench -i -s $scale` on the cluster at PORT (the caller sets
# $pgbench, $scale and $work); prints pgbench's output and fails when it fails.
pgbench_init()
{
    local label=$1 port=$2
    echo "$label: pgbench -i -s $scale"
    if ! "$pgbench" -i -q -s "$scale" -h 127.0.0.1 -p "$port" -U postgres postgres >"$work/init.log" 2>&1; then
        cat "$work/init.log" >&2
        return 1
    fi
}

# pgbouncer_start LABEL PGPORT [EXTRA_LINES]: PgBouncer 1.18 in session mode (20 server
# connections per pool, as pgwicket's pooled bench entries) in $work on a free port,
# every database on 127.0.0.1:PGPORT; EXTRA_LINES go into [pgbouncer]. Sets pgbport.
pgbouncer_start()
{
    local label=$1 pg_port=$2 extra=${3:-}
    pgbport=$(free_port 57432)
    echo '"postgres" ""' >"$work/userlist.txt"
    printf '%s\n' "[databases]" "* = host=127.0.0.1 port=$pg_port" "" "[pgbouncer]" \
        "listen_addr = 127.0.0.1" "listen_port = $pgbport" "unix_socket_dir = $work" \
        "auth_type = trust" "auth_file = $work/userlist.txt" "pool_mode = session" \
        "max_client_conn = 200" "default_pool_size = 20" "logfile = $work/pgbouncer.log" \
        "pidfile = $work/pgbouncer.pid" "$extra" >"$work/pgbouncer.ini"
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres:postgres "$work/pgbouncer.ini" "$work/userlist.txt"
    fi
    as_pg pgbouncer -d "$work/pgbouncer.ini"
    if ! wait_listening "$pgbport" 10; then
        echo "$label: pgbouncer did not start; its log:" >&2
        cat "$work/pgbouncer.log" >&2 || true
        return 1
    fi
}

# pgbouncer_stop: stops the PgBouncer of pgbouncer_start, if it runs, and waits for it.
pgbouncer_stop()
{
    if [ -f "$work/pgbouncer.pid" ]; then
        kill -TERM "$(cat "$work/pgbouncer.pid")" 2>/dev/null || true
        for _ in $(seq 50); do
            [ -f "$work/pgbouncer.pid" ] || break
            sleep 0.1
        done
    fi
}

# tls_certs DIR LABEL: a throwaway CA (DIR/ca.crt, ca.key) and a server certificate for
# localhost / 127.0.0.1 signed by it (DIR/server.crt, server.key), RSA 2048, made with the
# openssl command; its output goes to DIR/openssl.log, shown when it fails.
tls_certs()
{
    local tls=$1 label=$2
    mkdir -p "$tls"
    {
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=pgwicket $label CA" \
            -keyout "$tls/ca.key" -out "$tls/ca.crt" &&
            openssl req -new -newkey rsa:2048 -nodes -subj "/CN=localhost" \
                -keyout "$tls/server.key" -out "$tls/server.csr" &&
            printf '%s\n' "basicConstraints = CA:FALSE" "keyUsage = digitalSignature, keyEncipherment" \
                "extendedKeyUsage = serverAuth" "subjectAltName = DNS:localhost, IP:127.0.0.1" \
                >"$tls/server.ext" &&
            openssl x509 -req -days 2 -set_serial "0x$(openssl rand -hex 8)" -in "$tls/server.csr" \
                -CA "$tls/ca.crt" -CAkey "$tls/ca.key" -extfile "$tls/server.ext" -out "$tls/server.crt"
    } >"$tls/openssl.log" 2>&1 || {
        echo "$label: openssl failed:" >&2
        cat "$tls/openssl.log" >&2
        return 1
    }
}
