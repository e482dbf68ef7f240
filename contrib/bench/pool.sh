#!/usr/bin/env bash
# Pooling: connect-per-transaction (pgbench -C) through a pooled pgwicket entry, against
# PostgreSQL directly, pgwicket unpooled and PgBouncer (session mode), then steady state
# pooled vs unpooled, on a fresh throwaway cluster. Prints a table of TPS and ratios.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=contrib/lib.sh
source "$root/contrib/lib.sh"

bench_setup "$root" "pool bench" || exit 1
scale=${BENCH_SCALE:-10}
have_pgbouncer=0
if command -v pgbouncer >/dev/null 2>&1; then
    have_pgbouncer=1
fi

work=$(work_dir pgwicket-pool-bench)
pgdata=$work/pg
pgw_pid=

# shellcheck disable=SC2317  # run by the EXIT trap
cleanup()
{
    trap - EXIT INT TERM
    pgw_stop
    pgbouncer_stop
    pg_stop "$pgdata"
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        echo "pool bench: logs and data kept in $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "pool bench: PostgreSQL 15 cluster in $work"
pg_init "$pgdata"
pgport=$(free_port 55432)
pg_start "$pgdata" "$pgport" "-c max_connections=200 -c fsync=off -c synchronous_commit=off"

# The same server behind two entries: "postgres" (through '*') unpooled, "pooled" pooled
# as PgBouncer's is (session mode, 20 connections).
PGW_EXTRA_SETTINGS="max_client_conn = 200" \
    PGW_EXTRA_DATABASES="pooled = host=127.0.0.1 port=$pgport dbname=postgres user=postgres pool_mode=session pool_size=20" \
    pgw_start "$bin" "$work" "$pgport" "pool bench" || exit 1

if [ "$have_pgbouncer" = 1 ]; then
    pgbouncer_start "pool bench" "$pgport" || exit 1
fi

pgbench_init "pool bench" "$pgport" || exit 1

# tps PORT DB ARGS...: runs pgbench against PORT and prints its TPS, or "fail".
tps()
{
    local port=$1 db=$2
    shift 2
    pgbench_tps "pool bench" "host=127.0.0.1 port=$port user=postgres dbname=$db" "$@"
}

echo "pool bench: warm-up (not counted)"
secs=2 tps "$pgwport" pooled -C -c 8 -j 2 >/dev/null

rows=()
run_case()
{
    local label=$1 direct pgw pooled pgb="-"
    shift
    echo "pool bench: $label ($secs s each)"
    direct=$(tps "$pgport" postgres "$@")
    pgw=$(tps "$pgwport" postgres "$@")
    pooled=$(tps "$pgwport" pooled "$@")
    if [ "$have_pgbouncer" = 1 ]; then
        pgb=$(tps "$pgbport" postgres "$@")
    fi
    rows+=("$(printf '%-22s %9s %9s %9s %9s %13s %13s %12s' "$label" "$direct" "$pgw" "$pooled" "$pgb" \
        "$(ratio "$pooled" "$direct")" "$(ratio "$pooled" "$pgb")" "$(ratio "$pooled" "$pgw")")")
}

run_case "-S -C -c 8" -C -M simple -c 8 -j 2
run_case "-S -C -c 1" -C -M simple -c 1 -j 1
run_case "-S -c 8 (steady)" -M simple -c 8 -j 2

echo
echo "pgbench -S (select only), scale $scale, $secs s per run, $(nproc) CPUs, all on one host; TPS:"
printf '%-22s %9s %9s %9s %9s %13s %13s %12s\n' "case" "direct" "pgwicket" "pooled" "pgbouncer" "pooled/direct" \
    "pooled/pgbnc" "pooled/unp"
for row in "${rows[@]}"; do
    echo "$row"
done
