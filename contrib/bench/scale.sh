#!/usr/bin/env bash
# Thousands of sessions on one host (issue 14, part 2): with max_client_conn = 2500 and
# PostgreSQL's max_connections to match, 2,000 idle sessions plus 200 busy ones (pgbench)
# through the real binary. Reports PSS per idle session, supervisor CPU while they sit
# idle, SHOW SESSIONS and a metrics scrape at 2,000 sessions, a burst of 500 connection
# attempts within one second, then the same on a pooled route of 50 connections.
# Heavy: 2,500 PostgreSQL backends (several GB); run it once, not in a loop.
#
# Environment: SCALE_IDLE (2000), SCALE_BUSY (200), SCALE_BURST (500), SCALE_MAX (2500),
# SCALE_POOL (50), SCALE_CPU_SECONDS (20), BENCH_SECONDS (pgbench, 20), BENCH_KEEP=1
# keeps the logs, SCALE_PERF=1 records the idle supervisor with perf into $work.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=contrib/lib.sh
source "$root/contrib/lib.sh"

BENCH_SECONDS=${BENCH_SECONDS:-20}
bench_setup "$root" "scale" || exit 1
idle=${SCALE_IDLE:-2000}
busy=${SCALE_BUSY:-200}
burst=${SCALE_BURST:-500}
max_conn=${SCALE_MAX:-2500}
pool=${SCALE_POOL:-50}
cpu_secs=${SCALE_CPU_SECONDS:-20}
scale=10
psql=$PG_BINDIR/psql

# Every session is a descriptor in the supervisor and in the holding client.
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -lt $((idle + burst + 200)) ]; then
    echo "scale: the open file limit ($(ulimit -n)) is too low for $idle sessions; raise ulimit -Hn" >&2
    exit 1
fi

work=$(work_dir pgwicket-scale)
pgdata=$work/pg
pgw_pid=
holder=

# shellcheck disable=SC2317  # run by the EXIT trap
cleanup()
{
    trap - EXIT INT TERM
    stop_holder
    pgw_stop
    pg_stop "$pgdata"
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        echo "scale: logs and data kept in $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

holdconns=$work/holdconns
cc -O2 -o "$holdconns" "$root/contrib/bench/holdconns.c" -I"$(pg_config --includedir 2>/dev/null ||
    echo /usr/include/postgresql)" -lpq

echo "scale: PostgreSQL 15 cluster in $work (max_connections $((max_conn + 100)))"
pg_init "$pgdata"
pgport=$(free_port 55432)
pg_start "$pgdata" "$pgport" "-c max_connections=$((max_conn + 100)) -c shared_buffers=256MB -c fsync=off \
-c synchronous_commit=off"
pgbench_init "scale" "$pgport" || exit 1

metrics_port=$(free_port 59187)
PGW_EXTRA_SETTINGS="max_client_conn = $max_conn
spare_workers = 8
admin_users = postgres
query_wait_timeout = 0
metrics_listen = 127.0.0.1:$metrics_port" \
    PGW_EXTRA_DATABASES="pooled = host=127.0.0.1 port=$pgport dbname=postgres user=postgres pool_mode=session \
pool_size=$pool" \
    pgw_start "$bin" "$work" "$pgport" "scale" || exit 1
grep -h "open files" "$work/pgwicket.log" | sed 's/^/scale: pgwicket: /' || true

conn() { echo "host=127.0.0.1 port=$pgwport user=postgres dbname=$1"; }

# hold N DB PARALLEL: a holder of N connections to DB in the background ($holder, status
# in $work/hold.status: "ok failed pending seconds"), PARALLEL logins in flight at most.
hold()
{
    rm -f "$work/hold.status"
    "$holdconns" hold "$1" "$(conn "$2")" "$work/hold.status" "$3" &
    holder=$!
}

# stop_holder: closes the holder's connections and waits until pgwicket has reaped
# their workers (the session count is back to what it was).
# shellcheck disable=SC2317  # also run by cleanup
stop_holder()
{
    if [ -n "$holder" ]; then
        kill -TERM "$holder" 2>/dev/null || true
        wait "$holder" 2>/dev/null || true
        holder=
    fi
}

# wait_hold OK TIMEOUT: until the holder has OK connections (and no more pending ones
# than PENDING, default 0). Prints the holder's status; fails on a failed connection.
wait_hold()
{
    local want=$1 timeout=$2 pending_ok=${3:-0} ok failed pending t i
    for ((i = 0; i < timeout * 5; i++)); do
        if read -r ok failed pending t 2>/dev/null <"$work/hold.status"; then
            if [ "$failed" -gt 0 ]; then
                echo "scale: $failed connections failed; pgwicket's log:" >&2
                grep -E "FATAL|ERROR|WARN" "$work/pgwicket.log" | tail -n 5 >&2
                return 1
            fi
            if [ "$ok" -ge "$want" ] && [ "$pending" -le "$pending_ok" ]; then
                echo "$ok open, $pending waiting, after ${t} s"
                return 0
            fi
        fi
        sleep 0.2
    done
    echo "scale: timed out waiting for $want connections (status: $(cat "$work/hold.status"))" >&2
    return 1
}

workers() { ps -o pid= --ppid "$pgw_pid" | tr -d ' '; }
backends() { ps -o pid= --ppid "$(head -n 1 "$pgdata/postmaster.pid")" | tr -d ' '; }

# pss_kib PID...: the sum of their PSS in KiB.
pss_kib()
{
    local p
    for p in "$@"; do
        cat "/proc/$p/smaps_rollup" 2>/dev/null || true
    done | awk '$1 == "Pss:" { s += $2 } END { print s + 0 }'
}

# wait_workers_below N: until pgwicket has N child processes at most.
wait_workers_below()
{
    local n=$1 i
    for ((i = 0; i < 600; i++)); do
        [ "$(workers | wc -l)" -le "$n" ] && return 0
        sleep 0.2
    done
    echo "scale: pgwicket still has $(workers | wc -l) workers" >&2
    return 1
}

# supervisor_cpu SECONDS LABEL: the supervisor's CPU time over SECONDS (schedstat, ns), its
# utime+stime in clock ticks (/proc/PID/stat) and its wake-ups (context switches).
supervisor_cpu()
{
    local secs=$1 ns0 ns1 t0 t1 w0 w1
    read -r ns0 _ </proc/"$pgw_pid"/schedstat
    t0=$(awk '{ print $14 + $15 }' /proc/"$pgw_pid"/stat)
    w0=$(awk '/^voluntary_ctxt_switches/ { print $2 }' /proc/"$pgw_pid"/status)
    if [ "${SCALE_PERF:-0}" = 1 ] && command -v perf >/dev/null; then
        perf record -q -e cpu-clock --call-graph dwarf,16384 --no-inherit -p "$pgw_pid" -o "$work/perf.$2.data" \
            -- sleep "$secs" >/dev/null 2>&1 || true
    else
        sleep "$secs"
    fi
    read -r ns1 _ </proc/"$pgw_pid"/schedstat
    t1=$(awk '{ print $14 + $15 }' /proc/"$pgw_pid"/stat)
    w1=$(awk '/^voluntary_ctxt_switches/ { print $2 }' /proc/"$pgw_pid"/status)
    awk -v ns=$((ns1 - ns0)) -v ticks=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v s="$secs" \
        -v w=$((w1 - w0)) 'BEGIN {
        printf "%.1f ms CPU in %d s (%.3f%% of a core; /proc/PID/stat: %d ticks of 1/%d s), %.1f wake-ups/s\n",
            ns / 1e6, s, ns / 1e7 / s, ticks, hz, w / s }'
}

# admin_timed COMMAND: runs COMMAND in the admin console; prints rows and the time
# psql measured for the query (\timing) and for the whole run (connect included).
admin_timed()
{
    local out=$work/admin.out start end rows ms
    start=$(date +%s%N)
    "$psql" -X -At -h 127.0.0.1 -p "$pgwport" -U postgres -d pgwicket -c '\timing on' -c "$1" >"$out"
    end=$(date +%s%N)
    rows=$(grep -cv -e '^Time: ' -e '^Timing is on' "$out" || true)
    ms=$(sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' "$out" | tail -n 1)
    echo "$1: $rows rows, query ${ms} ms, psql run $(((end - start) / 1000000)) ms"
}

scrape_timed()
{
    curl -s -o "$work/metrics.out" -w '%{time_total} %{size_download}\n' "http://127.0.0.1:$metrics_port/metrics" |
        awk '{ printf "metrics scrape: %.1f ms, %d bytes\n", $1 * 1000, $2 }'
}

results=()
report() { results+=("$1"); echo "scale: $1"; }

baseline_workers=$(workers | wc -l)

# --- Unpooled: one upstream backend per session -------------------------------------
echo "scale: opening $idle idle sessions (64 logins in flight at a time)"
hold "$idle" postgres 64
report "unpooled, $idle idle sessions: $(wait_hold "$idle" 600)"

echo "scale: pgbench -S -c $busy -j 2 for $BENCH_SECONDS s beside them"
"$pgbench" -n -S -M simple -c "$busy" -j 2 -T "$BENCH_SECONDS" "$(conn postgres)" >"$work/pgbench.log" 2>&1 &
pgbench_pid=$!
sleep 5
report "supervisor with $idle idle + $busy busy: $(supervisor_cpu $((BENCH_SECONDS - 10)) busy)"
report "at $((idle + busy)) sessions, $(admin_timed 'SHOW SESSIONS')"
report "at $((idle + busy)) sessions, $(scrape_timed)"
if wait "$pgbench_pid"; then
    report "pgbench -S -c $busy beside $idle idle sessions: $(sed -n 's/^tps = \([0-9.]*\).*/\1/p' \
        "$work/pgbench.log" | head -n 1 | awk '{ printf "%.0f", $1 }') tps ($(grep -o \
        'initial connection time = .*' "$work/pgbench.log"), $(grep -o 'latency average = .*' "$work/pgbench.log"))"
else
    echo "scale: pgbench failed:" >&2
    tail -n 5 "$work/pgbench.log" >&2
    exit 1
fi
wait_workers_below $((baseline_workers + idle + 2))
sleep 2

mapfile -t pids < <(workers)
sup_kib=$(pss_kib "$pgw_pid")
all_kib=$(pss_kib "${pids[@]}")
mapfile -t bpids < <(backends)
pg_kib=$(pss_kib "${bpids[@]}")
report "PSS: $((all_kib / idle)) KiB per idle session ($((all_kib / 1024)) MiB over ${#pids[@]} worker and helper \
processes, spares included), supervisor $((sup_kib / 1024)) MiB PSS, $(awk '/^VmRSS/ { printf "%d", $2 / 1024 }' \
"/proc/$pgw_pid/status") MiB RSS; PostgreSQL $((pg_kib / ${#bpids[@]})) KiB per \
backend (${#bpids[@]} processes)"
# Where one idle session's PSS goes: its largest mappings.
one=$(for p in "${pids[@]}"; do [ -r "/proc/$p/smaps" ] && grep -q '^Pss' "/proc/$p/smaps_rollup" && echo "$p"; done |
    tail -n 100 | head -n 1)
if [ -n "$one" ]; then
    echo "scale: one idle session's worker ($one), PSS by mapping (KiB):"
    awk '/^[0-9a-f]+-[0-9a-f]+ / { name = NF >= 6 ? $6 : "[anon]"; sub(/.*\//, "", name) }
         $1 == "Pss:" { pss[name] += $2 } $1 == "Private_Dirty:" { priv[name] += $2 }
         END { for (n in pss) if (pss[n] >= 8) printf "  %6d %6d private dirty  %s\n", pss[n], priv[n], n }' \
        "/proc/$one/smaps" | sort -rn | head -n 8
fi
report "supervisor with $idle idle sessions: $(supervisor_cpu "$cpu_secs" idle)"
report "at $idle sessions, $(admin_timed 'SHOW SESSIONS')"
report "at $idle sessions, $(admin_timed 'SHOW STATS')"
report "at $idle sessions, $(scrape_timed)"
sleep 1

echo "scale: a burst of $burst connection attempts within one second, beside the $idle idle sessions"
if out=$("$holdconns" burst "$burst" "$(conn postgres)"); then
    report "burst beside $idle idle sessions: $out"
else
    report "burst beside $idle idle sessions FAILED: $out"
fi
echo "scale: pgwicket log lines about max_client_conn: $(grep -c "too many clients\|max_client_conn reached" "$work/pgwicket.log" || true)"

echo "scale: closing the idle sessions"
start=$(date +%s%N)
stop_holder
wait_workers_below $((baseline_workers + 2))
report "closing $idle sessions: every worker reaped after $((($(date +%s%N) - start) / 1000000)) ms"

# --- Pooled: a route of $pool upstream connections -----------------------------------
# Session pooling: a client holds its upstream connection for its whole session, so of
# $idle clients that stay connected, $pool are in a session and the rest wait in the
# pool's queue (their login is done, their ReadyForQuery is not). That is what idle
# means here: what clients cost while they wait, and what the supervisor does with a
# queue that long. Then the same clients churning (connect, log in, disconnect).
echo "scale: $idle clients on the pooled route (pool_size $pool)"
hold "$idle" pooled "$idle"
report "pooled, $idle clients: $(wait_hold "$pool" 600 $((idle - pool)))"
for ((i = 0; i < 150; i++)); do
    waiting=$(curl -s "http://127.0.0.1:$metrics_port/metrics" |
        awk '/^pgwicket_pool_waiting_clients/ { s += $2 } END { print s + 0 }')
    [ "$waiting" -ge $((idle - pool)) ] && break
    sleep 0.2
done
report "pooled: $waiting clients in the pool's queue"
mapfile -t pids < <(workers)
all_kib=$(pss_kib "${pids[@]}")
report "pooled PSS: $((all_kib / idle)) KiB per client ($((all_kib / 1024)) MiB over ${#pids[@]} processes), \
supervisor $(($(pss_kib "$pgw_pid") / 1024)) MiB PSS, $(awk '/^VmRSS/ { printf "%d", $2 / 1024 }' \
"/proc/$pgw_pid/status") MiB RSS"
report "supervisor with $pool pooled sessions and $waiting waiting: $(supervisor_cpu "$cpu_secs" pooled)"
report "pooled, $(admin_timed 'SHOW SESSIONS')"
report "pooled, $(admin_timed 'SHOW POOLS')"
report "pooled, $(scrape_timed)"
stop_holder
wait_workers_below $((baseline_workers + pool + 2))

echo "scale: $idle clients churning on the pooled route for $BENCH_SECONDS s"
if out=$("$holdconns" churn "$idle" "$(conn pooled)" "$BENCH_SECONDS"); then
    report "pooled churn: $out"
else
    report "pooled churn FAILED: $out"
fi
sleep 1
if out=$("$holdconns" burst "$burst" "$(conn pooled)" close); then
    report "pooled burst: $out"
else
    report "pooled burst FAILED: $out"
fi

echo
echo "scale: summary ($(nproc) CPUs, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo))"
printf '  %s\n' "${results[@]}"
