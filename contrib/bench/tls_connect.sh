#!/usr/bin/env bash
# TLS connection setup rate: pgbench -C -S (a new connection per transaction) with
# sslmode=require against PostgreSQL directly (ssl=on), through pgwicket with client TLS
# and through PgBouncer with client TLS, on a fresh throwaway cluster and a throwaway CA.
# The plain (sslmode=disable) rate of the same three is measured for reference.
# Prints a table of TPS (= connections per second) and ratios.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=contrib/lib.sh
source "$root/contrib/lib.sh"

bench_setup "$root" "tls bench" || exit 1
scale=${BENCH_SCALE:-1}
if ! command -v openssl >/dev/null 2>&1; then
    echo "tls bench: openssl (the command) not found; install openssl" >&2
    exit 1
fi
have_pgbouncer=0
if command -v pgbouncer >/dev/null 2>&1; then
    have_pgbouncer=1
fi

work=$(work_dir pgwicket-tls-bench)
pgdata=$work/pg
tls=$work/tls
pgw_pid=

# shellcheck disable=SC2317  # run by the EXIT trap
cleanup()
{
    trap - EXIT INT TERM
    pgw_stop
    pgbouncer_stop
    pg_stop "$pgdata"
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        echo "tls bench: logs and data kept in $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A throwaway CA and a server certificate for localhost / 127.0.0.1 signed by it, both RSA
# 2048. The three servers present the same certificate, so the handshakes cost the same.
echo "tls bench: throwaway CA and server certificate in $tls"
tls_certs "$tls" "tls bench" || exit 1
# PostgreSQL wants its key owned by the server user and not readable by others.
chmod 600 "$tls/server.key" "$tls/ca.key"
if [ "$(id -u)" -eq 0 ]; then
    chown -R postgres:postgres "$tls"
fi

echo "tls bench: PostgreSQL 15 cluster in $work, ssl=on"
pg_init "$pgdata"
pgport=$(free_port 55432)
pg_start "$pgdata" "$pgport" "-c max_connections=200 -c fsync=off -c synchronous_commit=off \
-c ssl=on -c ssl_cert_file=$tls/server.crt -c ssl_key_file=$tls/server.key"

# pgwicket as pgw_start in lib.sh starts it, plus client TLS: prefer, so that one instance
# serves both the sslmode=require and the sslmode=disable runs. Upstream stays plain.
pgwport=$(free_port 56432)
printf '%s\n' "[pgwicket]" "listen_addr = 127.0.0.1" "listen_port = $pgwport" \
    "unix_socket_dir = $work" "logfile = $work/pgwicket.log" \
    "client_tls_sslmode = prefer" "client_tls_cert_file = $tls/server.crt" \
    "client_tls_key_file = $tls/server.key" "" \
    "[databases]" "* = host=127.0.0.1 port=$pgport sslmode=disable" \
    "pooled = host=127.0.0.1 port=$pgport dbname=postgres user=postgres sslmode=disable pool_mode=session pool_size=20" \
    "pooledtls = host=127.0.0.1 port=$pgport dbname=postgres user=postgres sslmode=require pool_mode=session pool_size=20" \
    >"$work/pgwicket.ini"
"$bin" -c "$work/pgwicket.ini" 2>>"$work/pgwicket.log" &
pgw_pid=$!
if ! wait_listening "$pgwport" 10; then
    echo "tls bench: pgwicket did not start; its log:" >&2
    cat "$work/pgwicket.log" >&2
    exit 1
fi

if [ "$have_pgbouncer" = 1 ]; then
    pgbouncer_start "tls bench" "$pgport" "$(printf '%s\n' "client_tls_sslmode = allow" \
        "client_tls_cert_file = $tls/server.crt" "client_tls_key_file = $tls/server.key" \
        "server_tls_sslmode = disable")" || exit 1
fi

pgbench_init "tls bench" "$pgport" || exit 1

# tps PORT SSLMODE ARGS...: runs pgbench against PORT (database $db, postgres unless set)
# with a conninfo carrying SSLMODE and prints its TPS, or "fail".
tps()
{
    local port=$1 sslmode=$2
    shift 2
    pgbench_tps "tls bench" "host=127.0.0.1 port=$port user=postgres dbname=${db:-postgres} sslmode=$sslmode" "$@"
}


echo "tls bench: warm-up (not counted)"
for port in "$pgwport" ${pgbport:+"$pgbport"} "$pgport"; do
    secs=2 tps "$port" require -C -c 2 -j 2 >/dev/null
done

rows=()
# run_case LABEL SSLMODE PGWICKET_DATABASE ARGS...: one row; pgwicket serves its
# PGWICKET_DATABASE entry (postgres: unpooled; pooled, pooledtls: pooled, upstream plain or TLS).
run_case()
{
    local label=$1 sslmode=$2 pgwdb=$3 direct pgw pgb="-"
    shift 3
    echo "tls bench: $label ($secs s each)"
    direct=$(tps "$pgport" "$sslmode" "$@")
    pgw=$(db=$pgwdb tps "$pgwport" "$sslmode" "$@")
    if [ "$have_pgbouncer" = 1 ]; then
        pgb=$(tps "$pgbport" "$sslmode" "$@")
    fi
    rows+=("$(printf '%-30s %10s %10s %10s %12s %14s' "$label" "$direct" "$pgw" "$pgb" \
        "$(ratio "$pgw" "$direct")" "$(ratio "$pgw" "$pgb")")")
}

run_case "TLS: -C -S -c 8 require" require postgres -C -c 8 -j 2
run_case "plain: -C -S -c 8 disable" disable postgres -C -c 8 -j 2
run_case "TLS, pooled, plain upstream" require pooled -C -c 8 -j 2
run_case "TLS, pooled, TLS upstream" require pooledtls -C -c 8 -j 2
run_case "plain, pooled, TLS upstream" disable pooledtls -C -c 8 -j 2

echo
echo "pgbench -n -C -S -c 8 -j 2 (a new connection per transaction: TPS = connections/s),"
echo "scale $scale, $secs s per run, $(nproc) CPUs, all on one host, RSA 2048 certificate:"
printf '%-30s %10s %10s %10s %12s %14s\n' "case" "direct" "pgwicket" "pgbouncer" "pgw/direct" "pgw/pgbouncer"
for row in "${rows[@]}"; do
    echo "$row"
done

# Anything that went wrong on the way, as the proxies saw it.
problems=$(grep -ciE 'error|fatal|warning|panic' "$work/pgwicket.log" || true)
if [ "$problems" -gt 0 ]; then
    echo
    echo "tls bench: $problems error/warning lines in pgwicket's log, the first ones:"
    grep -iE 'error|fatal|warning|panic' "$work/pgwicket.log" | head -n 5
fi
if [ "$have_pgbouncer" = 1 ]; then
    problems=$(grep -ciE 'error|fatal|warning' "$work/pgbouncer.log" || true)
    if [ "$problems" -gt 0 ]; then
        echo
        echo "tls bench: $problems error/warning lines in PgBouncer's log, the first ones:"
        grep -iE 'error|fatal|warning' "$work/pgbouncer.log" | head -n 5
    fi
fi
