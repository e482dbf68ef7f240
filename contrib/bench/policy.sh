#!/usr/bin/env bash
# Policy cost: read-only pgbench (-S) against PostgreSQL directly and through pgwicket with
# no policy, an allow-all policy (every statement classified and checked, none denied), a
# read_only policy, and a read_only policy with an audit file, on a fresh throwaway
# cluster. One pgwicket instance per case, all started up front on their own ports, so the
# runs of one mode follow each other closely. Prints a table of TPS and ratios.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=contrib/lib.sh
source "$root/contrib/lib.sh"

bench_setup "$root" "policy bench" || exit 1
scale=${BENCH_SCALE:-10}

work=$(work_dir pgwicket-policy-bench)
pgdata=$work/pg
# The pgwicket cases, in the order they run: name, then the lines each adds to [pgwicket]
# and the sections after [databases] (a policy applies through default_policy).
cases=(nopolicy allowall readonly audit)
declare -A case_label=(
    [nopolicy]="pgwicket, no policy"
    [allowall]="pgwicket, allow-all policy"
    [readonly]="pgwicket, read_only"
    [audit]="pgwicket, read_only + audit"
)
declare -A case_port=() case_pid=()

# shellcheck disable=SC2317  # run by the EXIT trap
cleanup()
{
    trap - EXIT INT TERM
    local name
    for name in "${cases[@]}"; do
        pgw_pid=${case_pid[$name]:-}
        pgw_stop
    done
    pg_stop "$pgdata"
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        echo "policy bench: logs and data kept in $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "policy bench: PostgreSQL 15 cluster in $work"
pg_init "$pgdata"
pgport=$(free_port 55432)
pg_start "$pgdata" "$pgport" "-c max_connections=200 -c fsync=off -c synchronous_commit=off"

# pgw_case_start NAME: pgwicket as pgw_start in lib.sh starts it, in $work/NAME, plus the
# policy settings of case NAME. Sets case_port[NAME] and case_pid[NAME].
pgw_case_start()
{
    local name=$1 dir=$work/$1 port
    local -a global=() sections=()
    case $name in
    nopolicy) ;;
    allowall)
        # checkpoint is a kind pgbench never sends: every statement is classified and
        # checked against the deny list, and allowed.
        global=("default_policy = all")
        sections=("[policy.all]" "deny = checkpoint")
        ;;
    readonly)
        global=("default_policy = ro")
        sections=("[policy.ro]" "read_only = 1")
        ;;
    audit)
        global=("default_policy = ro" "audit_file = $dir/audit.jsonl")
        sections=("[policy.ro]" "read_only = 1")
        ;;
    esac
    mkdir -p "$dir"
    port=$(free_port 56432)
    printf '%s\n' "[pgwicket]" "listen_addr = 127.0.0.1" "listen_port = $port" \
        "unix_socket_dir = $dir" "logfile = $dir/pgwicket.log" "${global[@]}" "" \
        "[databases]" "* = host=127.0.0.1 port=$pgport" "" "${sections[@]}" >"$dir/pgwicket.ini"
    "$bin" -c "$dir/pgwicket.ini" 2>>"$dir/pgwicket.log" &
    case_pid[$name]=$!
    case_port[$name]=$port
    if ! wait_listening "$port" 10; then
        echo "policy bench: pgwicket ($name) did not start; its log:" >&2
        cat "$dir/pgwicket.log" >&2
        return 1
    fi
}

for name in "${cases[@]}"; do
    pgw_case_start "$name" || exit 1
done

pgbench_init "policy bench" "$pgport" || exit 1

# tps PORT ARGS...: runs pgbench against PORT and prints its TPS, or "fail".
tps()
{
    local port=$1
    shift
    pgbench_tps "policy bench" "host=127.0.0.1 port=$port user=postgres dbname=postgres" "$@"
}


# below A B: whether A/B is a number under 0.9 (the target for the policy cases).
below()
{
    awk -v a="$1" -v b="$2" 'BEGIN {
        exit !(a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0 && a / b < 0.9) }'
}

echo "policy bench: warm-up (not counted)"
for port in "$pgport" "${case_port[@]}"; do
    secs=2 tps "$port" -c 2 -j 2 >/dev/null
done

# worker_cpu_ticks NAME: CPU time (user + system, clock ticks) of the finished, reaped
# session workers of case NAME, as its supervisor's cutime + cstime.
worker_cpu_ticks()
{
    awk '{ print $16 + $17 }' "/proc/${case_pid[$1]}/stat"
}

median()
{
    printf '%s\n' "$@" | grep -E '^[0-9.]+$' | sort -n | awk '{ v[NR] = $1 } END {
        if (NR == 0) print "fail"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.0f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# Each round runs every target once, starting at a different one, so a slow stretch of
# the machine does not always fall on the same case; the table shows the median round.
# Beside TPS, the CPU the pgwicket workers spent per transaction (from the supervisor's
# cutime/cstime; pgbench's sessions end, and are reaped, with each run): what a policy
# costs, whatever else the machine is doing.
rounds=${BENCH_ROUNDS:-3}
hz=$(getconf CLK_TCK)
rows=()
run_mode()
{
    local mode=$1 targets=(direct "${cases[@]}") round i n name t before after
    shift
    declare -A runs=() cpu=()
    echo "policy bench: -M $mode, ${#targets[@]} targets x $rounds rounds ($secs s each)"
    for ((round = 0; round < rounds; round++)); do
        n=${#targets[@]}
        for ((i = 0; i < n; i++)); do
            name=${targets[$(((i + round) % n))]}
            if [ "$name" = direct ]; then
                t=$(tps "$pgport" -M "$mode" "$@")
            else
                before=$(worker_cpu_ticks "$name")
                t=$(tps "${case_port[$name]}" -M "$mode" "$@")
                sleep 0.5  # the workers exit and are reaped after pgbench disconnects
                after=$(worker_cpu_ticks "$name")
                if [[ $t =~ ^[0-9]+$ ]] && [ "$t" -gt 0 ]; then
                    cpu[$name]+="$(awk -v d=$((after - before)) -v hz="$hz" -v x=$((t * secs)) \
                        'BEGIN { printf "%.1f", d / hz * 1e6 / x }') "
                fi
            fi
            runs[$name]+="$t "
        done
    done
    local direct base
    # shellcheck disable=SC2086 # the lists are words
    direct=$(median ${runs[direct]})
    # shellcheck disable=SC2086
    base=$(median ${runs[nopolicy]})
    rows+=("$(printf '%-40s %8s %11s %9s %12s   %s' "-M $mode: direct" "$direct" "-" "1.00" "-" "${runs[direct]}")")
    for name in "${cases[@]}"; do
        # shellcheck disable=SC2086
        t=$(median ${runs[$name]})
        local mark=
        if [ "$name" != nopolicy ] && below "$t" "$base"; then
            mark="  < 0.9"
        fi
        # shellcheck disable=SC2086
        rows+=("$(printf '%-40s %8s %11s %9s %12s   %s%s' "-M $mode: ${case_label[$name]}" "$t" \
            "$(ratio "$t" "$base")" "$(ratio "$t" "$direct")" "$(median ${cpu[$name]:-})" "${runs[$name]}" "$mark")")
    done
}

for mode in simple prepared; do
    run_mode "$mode" -c 8 -j 2
done

echo
echo "pgbench -n -S -c 8 -j 2 (select only), scale $scale, $secs s per run, $(nproc) CPUs, all on one host;"
echo "median of $rounds rounds; target: every policy case >= 0.9 of pgwicket with no policy."
echo "worker us/xact: CPU time of pgwicket's session workers per transaction (median round)"
printf '%-40s %8s %11s %9s %12s   %s\n' "case" "TPS" "/no policy" "/direct" "worker us/xact" "TPS of each round"
for row in "${rows[@]}"; do
    echo "$row"
done

# Whether the policies applied, and anything that went wrong, as each pgwicket saw it. A
# denial is always a bug here: pgbench -S sends nothing but reads.
echo
for name in "${cases[@]}"; do
    log=$work/$name/pgwicket.log
    sessions=$(grep -c 'policy "' "$log" || true)
    denied=$(grep -c 'denied by policy' "$log" || true)
    problems=$(grep -ciE 'error|fatal|warning|panic' "$log" || true)
    line="policy bench: $name: $sessions sessions with a policy, $denied denials, $problems error/warning lines"
    if [ -f "$work/$name/audit.jsonl" ]; then
        line+=", $(wc -l <"$work/$name/audit.jsonl") audit records"
    fi
    echo "$line"
    if [ "$denied" -gt 0 ]; then
        grep 'denied by policy' "$log" | head -n 5
    fi
    if [ "$problems" -gt 0 ]; then
        grep -iE 'error|fatal|warning|panic' "$log" | head -n 5
    fi
done
