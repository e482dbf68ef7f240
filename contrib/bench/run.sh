#!/usr/bin/env bash
# Read-only pgbench through pgwicket, against PostgreSQL directly and through PgBouncer
# (session mode), on a fresh throwaway cluster. Prints a table of TPS and ratios.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=contrib/lib.sh
source "$root/contrib/lib.sh"

bench_setup "$root" "bench" || exit 1
scale=${BENCH_SCALE:-10}
have_pgbouncer=0
if command -v pgbouncer >/dev/null 2>&1; then
    have_pgbouncer=1
fi

work=$(work_dir pgwicket-bench)
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
        echo "bench: logs and data kept in $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "bench: PostgreSQL 15 cluster in $work"
pg_init "$pgdata"
pgport=$(free_port 55432)
pg_start "$pgdata" "$pgport" "-c max_connections=200 -c fsync=off -c synchronous_commit=off"

pgw_start "$bin" "$work" "$pgport" "bench" || exit 1

if [ "$have_pgbouncer" = 1 ]; then
    pgbouncer_start "bench" "$pgport" || exit 1
fi

pgbench_init "bench" "$pgport" || exit 1

# tps PORT ARGS...: runs pgbench against PORT and prints its TPS, or "fail".
tps()
{
    local port=$1
    shift
    pgbench_tps bench "host=127.0.0.1 port=$port user=postgres dbname=postgres" "$@"
}


echo "bench: warm-up (not counted)"
secs=2 tps "$pgport" -c 2 -j 2 >/dev/null

rows=()
run_case()
{
    local label=$1 direct pgw pgb="-"
    shift
    echo "bench: $label ($secs s each)"
    direct=$(tps "$pgport" "$@")
    pgw=$(tps "$pgwport" "$@")
    if [ "$have_pgbouncer" = 1 ]; then
        pgb=$(tps "$pgbport" "$@")
    fi
    rows+=("$(printf '%-26s %10s %10s %10s %12s %14s' "$label" "$direct" "$pgw" "$pgb" \
        "$(ratio "$pgw" "$direct")" "$(ratio "$pgw" "$pgb")")")
}

for mode in simple prepared; do
    for clients in 1 8; do
        jobs=$((clients < 2 ? clients : 2))
        run_case "-S -M $mode -c $clients" -M "$mode" -c "$clients" -j "$jobs"
    done
done
# -C: a new connection per transaction, where forking a session costs most.
run_case "-S -C -M simple -c 8" -C -M simple -c 8 -j 2

echo
echo "pgbench -S (select only), scale $scale, $secs s per run, $(nproc) CPUs, all on one host; TPS:"
printf '%-26s %10s %10s %10s %12s %14s\n' "case" "direct" "pgwicket" "pgbouncer" "pgw/direct" "pgw/pgbouncer"
for row in "${rows[@]}"; do
    echo "$row"
done
