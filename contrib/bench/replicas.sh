#!/usr/bin/env bash
# Replicas: read-only load (pgbench -S) through pgwicket entries over a primary and two
# streaming standbys, on a fresh throwaway cluster: the primary alone (direct and through
# pgwicket), and an entry with target_session_attrs=standby that spreads sessions over
# both standbys (round-robin), with how the transactions spread over the hosts (from
# each host's pg_stat_database); then the cost of choosing a host per connection
# (pgbench -C through a multi-host entry vs a one-host entry); then read routing: pgbench
# -S (each session on its own) through a read_routing=auto entry, with the same spread, and
# pgwicket's CPU per transaction (supervisor and exited workers) with routing on and off;
# last, a connection per transaction (pgbench -S -C) through read_routing=auto entries
# without and with pool_mode.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=contrib/lib.sh
source "$root/contrib/lib.sh"

bench_setup "$root" "replicas bench" || exit 1
scale=${BENCH_SCALE:-10}

work=$(work_dir pgwicket-replicas-bench)
pgw_pid=
nodes=("$work/p0" "$work/s1" "$work/s2")
ports=()

# shellcheck disable=SC2317  # run by the EXIT trap
cleanup()
{
    trap - EXIT INT TERM
    pgw_stop
    for d in "${nodes[@]}"; do
        [ -d "$d" ] && pg_stop "$d"
    done
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        echo "replicas bench: logs and data kept in $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "replicas bench: a primary and two standbys in $work"
pg_init "${nodes[0]}"
echo "host replication all 127.0.0.1/32 trust" >>"${nodes[0]}/pg_hba.conf"
ports[0]=$(free_port 55432)
settings="-c max_connections=200 -c fsync=off -c wal_level=replica -c max_wal_senders=8 -c hot_standby=on"
pg_start "${nodes[0]}" "${ports[0]}" "$settings"
for i in 1 2; do
    mkdir -p "${nodes[$i]}"
    [ "$(id -u)" -eq 0 ] && chown postgres:postgres "${nodes[$i]}"
    chmod 700 "${nodes[$i]}"
    as_pg "$PG_BINDIR/pg_basebackup" -h 127.0.0.1 -p "${ports[0]}" -U postgres -D "${nodes[$i]}" -R -X stream \
        >"$work/basebackup$i.log" 2>&1 || {
        cat "$work/basebackup$i.log" >&2
        exit 1
    }
    ports[i]=$(free_port $((55433 + i)))
    pg_start "${nodes[$i]}" "${ports[$i]}" "$settings"
done

hosts="host=127.0.0.1,127.0.0.1,127.0.0.1 port=${ports[0]},${ports[1]},${ports[2]} dbname=postgres user=postgres"
PGW_EXTRA_SETTINGS="max_client_conn = 200
server_check_period = 1" \
    PGW_EXTRA_DATABASES="ro = $hosts target_session_attrs=standby
rw = $hosts target_session_attrs=primary
one = host=127.0.0.1 port=${ports[0]} dbname=postgres user=postgres
routed = $hosts read_routing=auto
pooledrouted = $hosts read_routing=auto pool_mode=session pool_size=8" \
    pgw_start "$bin" "$work" "${ports[0]}" "replicas bench" || exit 1

pgbench_init "replicas bench" "${ports[0]}" || exit 1
# Until both standbys have the pgbench tables.
for i in 1 2; do
    for _ in $(seq 1 120); do
        if [ "$(psql -X -A -t -h 127.0.0.1 -p "${ports[$i]}" -U postgres -d postgres \
            -c "SELECT count(*) FROM pg_class WHERE relname = 'pgbench_accounts'" 2>/dev/null)" = 1 ]; then
            break
        fi
        sleep 0.5
    done
done
sleep 2  # a health check round sees the standbys

commits()
{
    psql -X -A -t -h 127.0.0.1 -p "$1" -U postgres -d postgres \
        -c "SELECT xact_commit FROM pg_stat_database WHERE datname = 'postgres'"
}

tps()
{
    local port=$1 db=$2
    shift 2
    pgbench_tps "replicas bench" "host=127.0.0.1 port=$port user=postgres dbname=$db" "$@"
}

# spread DB ARGS...: TPS through pgwicket, and the share of transactions per host.
spread()
{
    local db=$1 before=() after=() t i total=0 out=""
    shift
    for i in 0 1 2; do before[i]=$(commits "${ports[$i]}"); done
    t=$(tps "$pgwport" "$db" "$@")
    for i in 0 1 2; do
        after[i]=$(commits "${ports[$i]}")
        total=$((total + after[i] - before[i]))
    done
    for i in 0 1 2; do
        out+=$(awk -v d=$((after[i] - before[i])) -v t="$total" 'BEGIN { printf " %5.1f%%", t ? 100 * d / t : 0 }')
    done
    echo "$t$out"
}

echo "replicas bench: warm-up (not counted)"
secs=2 tps "$pgwport" ro -c 8 -j 2 >/dev/null

echo "replicas bench: pgbench -S -c 8 -j 2, $secs s each"
direct=$(tps "${ports[0]}" postgres -c 8 -j 2)
read -r rw_tps rw_p0 rw_s1 rw_s2 <<<"$(spread rw -c 8 -j 2)"
read -r ro_tps ro_p0 ro_s1 ro_s2 <<<"$(spread ro -c 8 -j 2)"
echo "replicas bench: pgbench -S -C -c 4 -j 2 (a connection per transaction), $secs s each"
one_c=$(tps "$pgwport" one -C -c 4 -j 2)
rw_c=$(tps "$pgwport" rw -C -c 4 -j 2)

# per_txn DB ARGS...: "TPS spread... CPU-microseconds-per-transaction" through pgwicket
# (the workers of the run have exited when their CPU is read).
per_txn()
{
    local db=$1 t0 t1 line tps_
    shift
    t0=$(cpu_ticks "$pgw_pid")
    line=$(spread "$db" "$@")
    sleep 1
    t1=$(cpu_ticks "$pgw_pid")
    tps_=${line%% *}
    echo "$line $(awk -v d=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v t="$tps_" -v s="$secs" \
        'BEGIN { printf "%.0f", (t > 0 ? d / hz * 1e6 / (t * s) : 0) }')"
}
echo "replicas bench: read routing, pgbench -S -c 8 -j 2 (simple and prepared), $secs s each"
read -r one_tps _ _ _ one_cpu <<<"$(per_txn one -c 8 -j 2)"
read -r rt_tps rt_p0 rt_s1 rt_s2 rt_cpu <<<"$(per_txn routed -c 8 -j 2)"
read -r onep_tps _ _ _ onep_cpu <<<"$(per_txn one -c 8 -j 2 -M prepared)"
read -r rtp_tps rtp_p0 rtp_s1 rtp_s2 rtp_cpu <<<"$(per_txn routed -c 8 -j 2 -M prepared)"
echo "replicas bench: read routing, pgbench -S -C -c 8 -j 2 (a connection per transaction), $secs s each"
direct_c=$(tps "${ports[0]}" postgres -C -c 8 -j 2)
read -r rtc_tps rtc_p0 rtc_s1 rtc_s2 <<<"$(spread routed -C -c 8 -j 2)"
read -r prc_tps prc_p0 prc_s1 prc_s2 <<<"$(spread pooledrouted -C -c 8 -j 2)"

echo
printf '%-44s %9s %9s   %s\n' "path" "TPS" "vs direct" "transactions on primary / standby 1 / standby 2"
printf '%-44s %9s %9s\n' "primary, direct" "$direct" "1.00"
printf '%-44s %9s %9s   %s %s %s\n' "pgwicket, target_session_attrs=primary" "$rw_tps" "$(ratio "$rw_tps" "$direct")" \
    "$rw_p0" "$rw_s1" "$rw_s2"
printf '%-44s %9s %9s   %s %s %s\n' "pgwicket, target_session_attrs=standby" "$ro_tps" "$(ratio "$ro_tps" "$direct")" \
    "$ro_p0" "$ro_s1" "$ro_s2"
echo
printf '%-44s %9s\n' "pgwicket -C, one-host entry" "$one_c"
printf '%-44s %9s %9s\n' "pgwicket -C, 3-host entry (primary chosen)" "$rw_c" "$(ratio "$rw_c" "$one_c")"
echo
printf '%-44s %9s %9s %12s   %s\n' "read routing (pgbench -S -c 8)" "TPS" "vs direct" "pgw us/txn" \
    "transactions on primary / standby 1 / standby 2"
printf '%-44s %9s %9s %12s\n' "pgwicket, primary only (simple)" "$one_tps" "$(ratio "$one_tps" "$direct")" "$one_cpu"
printf '%-44s %9s %9s %12s   %s %s %s\n' "pgwicket, read_routing=auto (simple)" "$rt_tps" "$(ratio "$rt_tps" "$direct")" \
    "$rt_cpu" "$rt_p0" "$rt_s1" "$rt_s2"
printf '%-44s %9s %9s %12s\n' "pgwicket, primary only (prepared)" "$onep_tps" "$(ratio "$onep_tps" "$direct")" "$onep_cpu"
printf '%-44s %9s %9s %12s   %s %s %s\n' "pgwicket, read_routing=auto (prepared)" "$rtp_tps" \
    "$(ratio "$rtp_tps" "$direct")" "$rtp_cpu" "$rtp_p0" "$rtp_s1" "$rtp_s2"
echo
printf '%-44s %9s %9s   %s\n' "read routing (pgbench -S -C -c 8)" "TPS" "vs direct" \
    "transactions on primary / standby 1 / standby 2"
printf '%-44s %9s %9s\n' "primary, direct" "$direct_c" "1.00"
printf '%-44s %9s %9s   %s %s %s\n' "pgwicket, read_routing=auto" "$rtc_tps" "$(ratio "$rtc_tps" "$direct_c")" \
    "$rtc_p0" "$rtc_s1" "$rtc_s2"
printf '%-44s %9s %9s   %s %s %s\n' "pgwicket, read_routing=auto, pool_mode=session" "$prc_tps" \
    "$(ratio "$prc_tps" "$direct_c")" "$prc_p0" "$prc_s1" "$prc_s2"
