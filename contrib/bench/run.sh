#!/usr/bin/env bash
# Read-only pgbench against PostgreSQL directly, through a bare relay (bare_relay.c, the floor),
# through pgwicket and through PgBouncer (session mode), on a fresh throwaway cluster. Prints
# TPS with ratios, and the whole machine's busy CPU per transaction with each proxy's overhead.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=contrib/lib.sh
source "$root/contrib/lib.sh"

bench_setup "$root" "bench" || exit 1
scale=${BENCH_SCALE:-10}
rounds=${BENCH_ROUNDS:-1}
if ! [[ "$rounds" =~ ^[1-9][0-9]*$ ]]; then
    echo "bench: BENCH_ROUNDS must be a positive integer, not '$rounds'" >&2
    exit 1
fi
cc=${CC:-cc}
hz=$(getconf CLK_TCK)
have_pgbouncer=0
if command -v pgbouncer >/dev/null 2>&1; then
    have_pgbouncer=1
fi

work=$(work_dir pgwicket-bench)
pgdata=$work/pg
pgw_pid=
bare_pid=
poll_pid=

# shellcheck disable=SC2317  # run by the EXIT trap
cleanup()
{
    trap - EXIT INT TERM
    pgw_stop
    local pid
    for pid in "$bare_pid" "$poll_pid"; do
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
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

# The bare relay: a process per client that copies bytes both ways, nothing else. Its
# connections end with the cluster's, so only the listener needs stopping.
if ! "$cc" -O2 -Wall -Wextra -pthread -o "$work/bare_relay" "$root/contrib/bench/bare_relay.c" \
    2>"$work/bare_relay.cc.log"; then
    echo "bench: compiling contrib/bench/bare_relay.c failed:" >&2
    cat "$work/bare_relay.cc.log" >&2
    exit 1
fi
# start_relay PORT [poll]: bare_relay on PORT in front of the cluster; prints its pid.
start_relay()
{
    "$work/bare_relay" "$1" 127.0.0.1 "$pgport" ${2:+"$2"} >/dev/null 2>>"$work/bare_relay.log" &
    local pid=$!
    if ! wait_listening "$1" 10; then
        echo "bench: bare_relay did not start; its log:" >&2
        cat "$work/bare_relay.log" >&2
        return 1
    fi
    echo "$pid"
}
bareport=$(free_port 58432)
bare_pid=$(start_relay "$bareport") || exit 1
# BENCH_POLL_RELAY=1: the same relay in pgwicket's shape (one thread, ppoll, recv, send).
if [ "${BENCH_POLL_RELAY:-0}" = 1 ]; then
    pollport=$(free_port 58532)
    poll_pid=$(start_relay "$pollport" poll) || exit 1
fi

pgw_start "$bin" "$work" "$pgport" "bench" || exit 1

if [ "$have_pgbouncer" = 1 ]; then
    pgbouncer_start "bench" "$pgport" || exit 1
fi

pgbench_init "bench" "$pgport" || exit 1

# measure PORT ARGS...: runs pgbench against PORT and prints "TPS US_PER_TXN": its TPS and
# the whole machine's busy CPU time over the run divided by the transactions it processed,
# in microseconds (pgbench, PostgreSQL and the proxy all count); "fail fail" when it failed.
measure()
{
    local port=$1 before after result
    shift
    before=$(busy_ticks)
    result=$(pgbench_run bench "host=127.0.0.1 port=$port user=postgres dbname=postgres" "$@")
    after=$(busy_ticks)
    # shellcheck disable=SC2086  # "TPS TXNS" is split into its two fields on purpose
    set -- $result
    awk -v tps="$1" -v txns="$2" -v ticks=$((after - before)) -v hz="$hz" 'BEGIN {
        if (tps ~ /^[0-9]+$/ && txns ~ /^[0-9]+$/ && txns > 0)
            printf "%s %.1f\n", tps, ticks / hz * 1e6 / txns
        else
            print "fail fail" }'
}

# median VALUES...: the median of numbers (the mean of the middle two for an even count),
# "fail" if any is not a number. Integers stay integers when they can.
median()
{
    printf '%s\n' "$@" | sort -g | awk '
        !/^[0-9.]+$/ { bad = 1 }
        { v[NR] = $1 }
        END {
            if (bad || NR == 0) { print "fail"; exit }
            m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            print (m == int(m) && v[1] !~ /\./) ? m : sprintf("%.1f", m)
        }'
}

# minus A B: A - B with one decimal, or "-" when either is not a number.
minus()
{
    awk -v a="$1" -v b="$2" 'BEGIN {
        if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/) printf "%+.1f", a - b; else printf "-" }'
}

echo "bench: warm-up (not counted)"
secs=2 measure "$pgport" -c 2 -j 2 >/dev/null

paths=(direct bare)
declare -A port_of=([direct]=$pgport [bare]=$bareport [pgwicket]=$pgwport)
if [ -n "$poll_pid" ]; then
    paths+=(poll)
    port_of[poll]=$pollport
fi
paths+=(pgwicket)
if [ "$have_pgbouncer" = 1 ]; then
    paths+=(pgbouncer)
    port_of[pgbouncer]=$pgbport
fi

rows=()
row_format='%-22s %-10s %9s %10s %13s %9s %16s'
# run_case LABEL ARGS...: BENCH_ROUNDS rounds of pgbench ARGS over every path, in turn
# (direct, bare, pgwicket, pgbouncer, then again), so that a slow stretch of a shared
# machine spreads over all of them; adds a row per path with the medians to $rows.
run_case()
{
    local label=$1 path round result tps_med us_med extra
    shift
    local -A tps_all=() us_all=() tps_of=() us_of=()
    echo "bench: $label ($secs s each, $rounds round(s))"
    for ((round = 1; round <= rounds; round++)); do
        for path in "${paths[@]}"; do
            result=$(measure "${port_of[$path]}" "$@")
            tps_all[$path]+="${result% *} "
            us_all[$path]+="${result#* } "
        done
    done
    for path in "${paths[@]}"; do
        # shellcheck disable=SC2086  # the lists of rounds are split on purpose
        tps_of[$path]=$(median ${tps_all[$path]})
        # shellcheck disable=SC2086
        us_of[$path]=$(median ${us_all[$path]})
    done
    for path in "${paths[@]}"; do
        tps_med=${tps_of[$path]}
        us_med=${us_of[$path]}
        extra=
        if [ "$rounds" -gt 1 ]; then
            extra="   ${tps_all[$path]% }"
        fi
        # shellcheck disable=SC2059  # the format is ours
        rows+=("$(printf "$row_format" "$label" "$path" "$tps_med" \
            "$(ratio "$tps_med" "${tps_of[direct]}")" "$(ratio "$tps_med" "${tps_of[pgbouncer]:--}")" \
            "$us_med" "$(if [ "$path" = direct ]; then echo -; else minus "$us_med" "${us_of[direct]}"; fi)")$extra")
    done
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
echo "pgbench -S (select only), scale $scale, $secs s per run, $(nproc) CPUs, all on one host;"
echo "median of $rounds round(s); us/txn = the whole machine's busy CPU (user+nice+system+irq+"
echo "softirq+steal of /proc/stat, pgbench and PostgreSQL included) per transaction; overhead ="
echo "a path's us/txn minus direct's; bare = bare_relay.c, a process per client and no parsing (poll: the same in pgwicket's one-thread ppoll shape):"
# shellcheck disable=SC2059
printf "$row_format" "case" "path" "TPS" "vs direct" "vs pgbouncer" "us/txn" "overhead us/txn"
if [ "$rounds" -gt 1 ]; then
    printf '   %s' "TPS of each round"
fi
echo
for row in "${rows[@]}"; do
    echo "$row"
done
