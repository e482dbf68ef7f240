#!/usr/bin/env bash
# pgbench through HAProxy (TCP, round robin) over three pgwicket instances, against one
# instance directly and HAProxy over that one instance, on a fresh throwaway cluster.
# Prints a table of TPS. Everything shares one host's CPUs: read the ratios.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=contrib/lib.sh
source "$root/contrib/lib.sh"

bench_setup "$root" "haproxy bench" || exit 1
scale=${BENCH_SCALE:-10}
haproxy=${HAPROXY:-/usr/sbin/haproxy}
if [ ! -x "$haproxy" ]; then
    echo "haproxy bench: $haproxy not found; run contrib/install-deps.sh" >&2
    exit 1
fi

work=$(work_dir pgwicket-haproxy-bench)
pgdata=$work/pg
pids=()
ports=()
pgw_pid=

# shellcheck disable=SC2317  # run by the EXIT trap
cleanup()
{
    trap - EXIT INT TERM
    for pgw_pid in "${pids[@]}"; do
        pgw_stop
    done
    pg_stop "$pgdata"
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        echo "haproxy bench: logs and data kept in $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "haproxy bench: PostgreSQL 15 cluster in $work"
pg_init "$pgdata"
pgport=$(free_port 55432)
pg_start "$pgdata" "$pgport" "-c max_connections=200 -c fsync=off -c synchronous_commit=off"

# Three instances as contrib/haproxy/pgwicket-N.ini has them: own peer_id and metrics port.
metrics=()
for i in 1 2 3; do
    mkdir -p "$work/pgw$i"
    metrics+=("$(free_port 59632)")
    PGW_EXTRA_SETTINGS="max_client_conn = 200
peer_id = $i
metrics_listen = 127.0.0.1:${metrics[$((i - 1))]}" \
        pgw_start "$bin" "$work/pgw$i" "$pgport" "haproxy bench" || exit 1
    pids+=("$pgw_pid")
    ports+=("$pgwport")
done

# haproxy_start NAME N: HAProxy over the first N instances, health-checked on /healthz;
# sets lbport.
haproxy_start()
{
    local name=$1 n=$2 port i
    port=$(free_port 56500)
    lbport=$port
    {
        printf '%s\n' "global" "    maxconn 1024" "defaults" "    mode tcp" "    timeout connect 5s" \
            "    timeout client 1h" "    timeout server 1h" "frontend postgres" "    bind 127.0.0.1:$port" \
            "    default_backend pgwicket" "backend pgwicket" "    balance roundrobin" \
            "    option httpchk GET /healthz" "    default-server inter 2s fall 2 rise 2"
        for ((i = 0; i < n; i++)); do
            echo "    server pgwicket$((i + 1)) 127.0.0.1:${ports[$i]} check port ${metrics[$i]}"
        done
    } >"$work/$name.cfg"
    "$haproxy" -db -f "$work/$name.cfg" >"$work/$name.log" 2>&1 &
    pids+=("$!")
    wait_listening "$port" 10
}
haproxy_start haproxy3 3
lb3=$lbport
haproxy_start haproxy1 1
lb1=$lbport

pgbench_init "haproxy bench" "$pgport" || exit 1

tps()
{
    pgbench_tps "haproxy bench" "host=127.0.0.1 port=$1 user=postgres dbname=postgres" "${@:2}"
}

echo "haproxy bench: warm-up (not counted)"
secs=2 tps "$lb3" -c 8 -j 2 >/dev/null

rows=()
run_case()
{
    local label=$1 one lb_one lb_three
    shift
    echo "haproxy bench: $label ($secs s each)"
    one=$(tps "${ports[0]}" "$@")
    lb_one=$(tps "$lb1" "$@")
    lb_three=$(tps "$lb3" "$@")
    rows+=("$(printf '%-18s %10s %12s %14s %12s' "$label" "$one" "$lb_one" "$lb_three" "$(ratio "$lb_three" "$one")")")
}

run_case "-S -c 8" -M simple -c 8 -j 2
run_case "-S -C -c 8" -C -M simple -c 8 -j 2

echo
echo "pgbench -S (select only), scale $scale, $secs s per run, $(nproc) CPUs, all on one host; TPS:"
printf '%-18s %10s %12s %14s %12s\n' "case" "1 direct" "haproxy+1" "haproxy+3" "3 via lb/1"
for row in "${rows[@]}"; do
    echo "$row"
done
