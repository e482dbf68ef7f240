#!/usr/bin/env bash
# Cancel latency: how long from PQcancel() until the cancelled query's ErrorResponse arrives,
# through pgwicket and directly against PostgreSQL, on a fresh throwaway cluster.
# Prints the median and the 99th percentile of each.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=contrib/lib.sh
source "$root/contrib/lib.sh"

count=${CANCEL_COUNT:-200}
warmup=${CANCEL_WARMUP:-5}

bin=$(pgw_binary "$root" "cancel bench") || exit 1
for tool in "$PG_BINDIR/initdb" "$PG_BINDIR/pg_ctl"; do
    if [ ! -x "$tool" ]; then
        echo "cancel bench: $tool not found; run contrib/install-deps.sh" >&2
        exit 1
    fi
done
cc=${CC:-cc}
pq_include=$(pg_config --includedir 2>/dev/null || echo /usr/include/postgresql)
pq_libdir=$(pg_config --libdir 2>/dev/null || echo /usr/lib)
if [ ! -f "$pq_include/libpq-fe.h" ]; then
    echo "cancel bench: libpq-fe.h not found in $pq_include; install libpq-dev" >&2
    exit 1
fi

work=$(work_dir pgwicket-cancel-bench)
pgdata=$work/pg
pgw_pid=

# shellcheck disable=SC2317  # run by the EXIT trap
cleanup()
{
    trap - EXIT INT TERM
    pgw_stop
    pg_stop "$pgdata"
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        echo "cancel bench: logs and data kept in $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The client: one session, COUNT times "SELECT pg_sleep(30)" and a PQcancel once the query
# runs upstream (seen in pg_stat_activity through a direct monitor connection). The time is
# taken from just before PQcancel() to the moment the ErrorResponse has been read.
cat >"$work/cancelbench.c" <<'EOF'
#include <libpq-fe.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp(const void* a, const void* b)
{
    double x = *(const double*)a, y = *(const double*)b;
    return x < y ? -1 : x > y;
}

/* Nearest rank: the smallest value with at least p of the samples at or below it. */
static double pct(const double* v, int n, double p)
{
    int rank = (int)(p * n + 0.999999);
    if (rank < 1)
        rank = 1;
    return v[rank - 1];
}

static int running(PGconn* mon, const char* tag)
{
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND "
             "application_name LIKE '%%%s%%' AND query LIKE 'SELECT pg_sleep(30)%%'", tag);
    PGresult* r = PQexec(mon, sql);
    int n = PQresultStatus(r) == PGRES_TUPLES_OK ? atoi(PQgetvalue(r, 0, 0)) : -1;
    PQclear(r);
    return n;
}

int main(int argc, char** argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: %s CONNINFO MONITOR_CONNINFO TAG COUNT WARMUP\n", argv[0]);
        return 2;
    }
    const char* tag = argv[3];
    int count = atoi(argv[4]), warmup = atoi(argv[5]);
    char conninfo[1024];
    snprintf(conninfo, sizeof conninfo, "%s application_name=%s", argv[1], tag);
    PGconn* c = PQconnectdb(conninfo);
    PGconn* mon = PQconnectdb(argv[2]);
    if (PQstatus(c) != CONNECTION_OK || PQstatus(mon) != CONNECTION_OK) {
        fprintf(stderr, "connect: %s%s", PQerrorMessage(c), PQerrorMessage(mon));
        return 1;
    }
    PGcancel* cancel = PQgetCancel(c);
    double* lat = calloc((size_t)count, sizeof *lat);
    int spurious = 0;
    for (int i = -warmup; i < count; ++i) {
        if (!PQsendQuery(c, "SELECT pg_sleep(30)")) {
            fprintf(stderr, "send: %s", PQerrorMessage(c));
            return 1;
        }
        double wait_until = now_ms() + 10000;
        int ended_early = 0;
        while (running(mon, tag) < 1) {
            /* PostgreSQL signals a cancelled backend twice; a late second signal can
               cancel the next statement before it is seen running. Count it, retry. */
            if (!PQconsumeInput(c)) {
                fprintf(stderr, "read: %s", PQerrorMessage(c));
                return 1;
            }
            if (!PQisBusy(c)) {
                PGresult* r;
                while ((r = PQgetResult(c)) != NULL)
                    PQclear(r);
                ended_early = 1;
                break;
            }
            if (now_ms() > wait_until) {
                fprintf(stderr, "the query did not start within 10 s\n");
                return 1;
            }
        }
        if (ended_early) {
            ++spurious;
            --i;
            continue;
        }
        char err[256] = "";
        double t0 = now_ms();
        if (!PQcancel(cancel, err, sizeof err)) {
            fprintf(stderr, "PQcancel: %s\n", err);
            return 1;
        }
        double deadline = t0 + 10000;
        while (PQisBusy(c)) {
            struct pollfd p = {PQsocket(c), POLLIN, 0};
            double left = deadline - now_ms();
            if (left <= 0) {
                fprintf(stderr, "cancel %d: no answer within 10 s\n", i);
                return 1;
            }
            poll(&p, 1, (int)left + 1);
            if (!PQconsumeInput(c)) {
                fprintf(stderr, "read: %s", PQerrorMessage(c));
                return 1;
            }
        }
        double t1 = now_ms();
        int ok = 0;
        PGresult* r;
        while ((r = PQgetResult(c)) != NULL) {
            const char* st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
            if (PQresultStatus(r) == PGRES_FATAL_ERROR && st && strcmp(st, "57014") == 0)
                ok = 1;
            PQclear(r);
        }
        if (!ok) {
            fprintf(stderr, "cancel %d: the query did not end with 57014\n", i);
            return 1;
        }
        if (i >= 0)
            lat[i] = t1 - t0;
    }
    qsort(lat, (size_t)count, sizeof *lat, cmp);
    double sum = 0;
    for (int i = 0; i < count; ++i)
        sum += lat[i];
    if (spurious)
        fprintf(stderr, "%s: %d statement(s) ended before they were seen running (cancelled "
                        "by the server's second signal for the previous cancel); retried\n",
                tag, spurious);
    printf("%d %.3f %.3f %.3f %.3f %.3f\n", count, pct(lat, count, 0.5), pct(lat, count, 0.99),
           lat[0], lat[count - 1], sum / count);
    PQfreeCancel(cancel);
    PQfinish(mon);
    PQfinish(c);
    free(lat);
    return 0;
}
EOF
"$cc" -O2 -Wall -o "$work/cancelbench" "$work/cancelbench.c" -I"$pq_include" -L"$pq_libdir" -lpq

echo "cancel bench: PostgreSQL 15 cluster in $work"
pg_init "$pgdata"
pgport=$(free_port 55432)
pg_start "$pgdata" "$pgport" "-c max_connections=100 -c fsync=off"

pgw_start "$bin" "$work" "$pgport" "cancel bench" || exit 1

monitor="host=127.0.0.1 port=$pgport dbname=postgres user=postgres sslmode=disable application_name=cancelbench_monitor"
# measure LABEL PORT: prints "LABEL count median p99 min max mean".
measure()
{
    local label=$1 port=$2 out
    echo "cancel bench: $label: $count cancels of SELECT pg_sleep(30) (+$warmup warm-up)" >&2
    out=$("$work/cancelbench" "host=127.0.0.1 port=$port dbname=postgres user=postgres sslmode=disable" \
        "$monitor" "cancelbench_$label" "$count" "$warmup")
    echo "$label $out"
}

rows=()
rows+=("$(measure direct "$pgport")")
rows+=("$(measure pgwicket "$pgwport")")

echo
echo "cancel latency, PQcancel() call to ErrorResponse (57014) received, $(nproc) CPUs, one host; ms:"
printf '%-10s %6s %9s %9s %9s %9s %9s\n' "target" "count" "median" "p99" "min" "max" "mean"
for row in "${rows[@]}"; do
    # shellcheck disable=SC2086  # the row is split into its fields on purpose
    printf '%-10s %6s %9s %9s %9s %9s %9s\n' $row
done
