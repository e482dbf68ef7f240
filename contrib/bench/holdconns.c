/* Opens many libpq connections at once, for contrib/bench/scale.sh (built by it with
 * cc and libpq). Two modes:
 *
 *   holdconns hold N CONNINFO STATUSFILE [PARALLEL]
 *       opens N connections, at most PARALLEL (default 64) in progress at a time, and
 *       keeps them open and idle until SIGTERM or SIGINT. STATUSFILE is rewritten as
 *       "ok failed pending seconds" whenever a connection completes or fails, so the
 *       caller can wait for a count (a pooled route's clients beyond the pool stay
 *       pending: they wait for a connection).
 *   holdconns churn N CONNINFO SECONDS
 *       keeps N clients connecting for SECONDS: each connects, closes once the login is
 *       done, and connects again. Prints "N clients, S s: X sessions (R/s), failed Y,
 *       login p50 A ms, p99 B ms, max C ms" (a pooled route's clients wait for a
 *       connection inside their login). Exit status 1 when any failed.
 *   holdconns burst N CONNINFO [close]
 *       starts N connection attempts spread evenly over one second, waits (at most
 *       60 s) until each has succeeded or failed (with "close", each is closed once
 *       logged in: a pooled route's next client needs its connection), prints one line: "started N in S s:
 *       ok X, failed Y, slowest Z s, all done after W s", then the distinct error
 *       messages (at most five), and closes them. Exit status 1 when any failed.
 */
#include <libpq-fe.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum state { NOT_STARTED, CONNECTING, OK, FAILED };

struct conn {
    PGconn *pg;
    enum state state;
    PostgresPollingStatusType want;
    double started, finished;
};

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void start(struct conn *c, const char *conninfo)
{
    c->started = now();
    c->pg = PQconnectStart(conninfo);
    if (c->pg == NULL || PQstatus(c->pg) == CONNECTION_BAD) {
        c->state = FAILED;
        c->finished = now();
        return;
    }
    c->state = CONNECTING;
    c->want = PGRES_POLLING_WRITING;
}

/* One PQconnectPoll step for a connection whose socket is ready. */
static void advance(struct conn *c)
{
    c->want = PQconnectPoll(c->pg);
    if (c->want == PGRES_POLLING_OK || c->want == PGRES_POLLING_FAILED) {
        c->state = c->want == PGRES_POLLING_OK ? OK : FAILED;
        c->finished = now();
    }
}

/* Polls every connection in progress for up to timeout_ms; returns how many finished. */
static int step(struct conn *cs, int n, struct pollfd *pfds, int *idx, int timeout_ms)
{
    int m = 0, done = 0;
    for (int i = 0; i < n; i++) {
        if (cs[i].state != CONNECTING)
            continue;
        pfds[m].fd = PQsocket(cs[i].pg);
        pfds[m].events = cs[i].want == PGRES_POLLING_READING ? POLLIN : POLLOUT;
        pfds[m].revents = 0;
        idx[m++] = i;
    }
    if (m == 0) {
        if (timeout_ms > 0)
            poll(NULL, 0, timeout_ms);
        return 0;
    }
    if (poll(pfds, (nfds_t)m, timeout_ms) <= 0)
        return 0;
    for (int k = 0; k < m; k++)
        if (pfds[k].revents) {
            advance(&cs[idx[k]]);
            done += cs[idx[k]].state != CONNECTING;
        }
    return done;
}

static void count(const struct conn *cs, int n, int *ok, int *failed, int *pending)
{
    *ok = *failed = *pending = 0;
    for (int i = 0; i < n; i++) {
        *ok += cs[i].state == OK;
        *failed += cs[i].state == FAILED;
        *pending += cs[i].state == CONNECTING;
    }
}

static void write_status(const char *path, const struct conn *cs, int n, double t0)
{
    int ok, failed, pending;
    count(cs, n, &ok, &failed, &pending);
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (f == NULL)
        return;
    fprintf(f, "%d %d %d %.2f\n", ok, failed, pending, now() - t0);
    fclose(f);
    rename(tmp, path);
}

static int hold(int n, const char *conninfo, const char *status_path, int parallel)
{
    struct conn *cs = calloc((size_t)n, sizeof *cs);
    struct pollfd *pfds = calloc((size_t)n, sizeof *pfds);
    int *idx = calloc((size_t)n, sizeof *idx);
    const double t0 = now();
    int next = 0, in_progress = 0;
    write_status(status_path, cs, n, t0);
    while (!stop) {
        while (next < n && in_progress < parallel) {
            start(&cs[next], conninfo);
            in_progress += cs[next++].state == CONNECTING;
        }
        const int done = step(cs, n, pfds, idx, 200);
        in_progress -= done;
        if (done > 0 || next == n)
            write_status(status_path, cs, n, t0);
        if (next == n && in_progress == 0)
            break;
    }
    /* Idle until told to go; pending ones (a pool's queue) keep waiting too. */
    while (!stop) {
        if (step(cs, n, pfds, idx, 1000) > 0)
            write_status(status_path, cs, n, t0);
    }
    for (int i = 0; i < n; i++)
        if (cs[i].pg != NULL)
            PQfinish(cs[i].pg);
    return 0;
}

/* With close_each, ends the sessions that have logged in (their state stays OK). */
static void close_done(struct conn *cs, int n, int close_each)
{
    for (int i = 0; close_each && i < n; i++)
        if (cs[i].state == OK && cs[i].pg != NULL) {
            PQfinish(cs[i].pg);
            cs[i].pg = NULL;
        }
}

static int burst(int n, const char *conninfo, int close_each)
{
    struct conn *cs = calloc((size_t)n, sizeof *cs);
    struct pollfd *pfds = calloc((size_t)n, sizeof *pfds);
    int *idx = calloc((size_t)n, sizeof *idx);
    const double t0 = now();
    int next = 0;
    while (next < n) {
        /* Attempt i starts at t0 + i/n s. */
        while (next < n && now() - t0 >= (double)next / n)
            start(&cs[next++], conninfo);
        step(cs, n, pfds, idx, 1);
        close_done(cs, n, close_each);
    }
    const double all_started = now() - t0;
    int ok, failed, pending;
    for (;;) {
        count(cs, n, &ok, &failed, &pending);
        if (pending == 0 || now() - t0 > 60 || stop)
            break;
        step(cs, n, pfds, idx, 100);
        close_done(cs, n, close_each);
    }
    double slowest = 0, last = 0;
    for (int i = 0; i < n; i++)
        if (cs[i].state == OK || cs[i].state == FAILED) {
            if (cs[i].finished - cs[i].started > slowest)
                slowest = cs[i].finished - cs[i].started;
            if (cs[i].finished - t0 > last)
                last = cs[i].finished - t0;
        }
    printf("started %d in %.2f s: ok %d, failed %d, still pending %d, slowest %.2f s, all done after %.2f s\n", n,
           all_started, ok, failed, pending, slowest, last);
    const char *seen[5];
    int nseen = 0;
    for (int i = 0; i < n && nseen < 5; i++) {
        if (cs[i].state != FAILED)
            continue;
        const char *msg = cs[i].pg != NULL ? PQerrorMessage(cs[i].pg) : "out of memory";
        int dup = 0;
        for (int k = 0; k < nseen; k++)
            dup |= strcmp(seen[k], msg) == 0;
        if (!dup) {
            seen[nseen++] = msg;
            printf("  error: %s", msg);
        }
    }
    fflush(stdout);
    for (int i = 0; i < n; i++)
        if (cs[i].pg != NULL)
            PQfinish(cs[i].pg);
    return failed == 0 && pending == 0 ? 0 : 1;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int churn(int n, const char *conninfo, double seconds)
{
    struct conn *cs = calloc((size_t)n, sizeof *cs);
    struct pollfd *pfds = calloc((size_t)n, sizeof *pfds);
    int *idx = calloc((size_t)n, sizeof *idx);
    size_t cap = 1 << 16, nlat = 0;
    double *lat = malloc(cap * sizeof *lat);
    long failed = 0;
    char first_error[512] = "";
    const double t0 = now();
    for (int i = 0; i < n; i++)
        start(&cs[i], conninfo);
    while (!stop) {
        const int running = now() - t0 < seconds;
        int pending = 0;
        for (int i = 0; i < n; i++) {
            struct conn *c = &cs[i];
            if (c->state == OK || c->state == FAILED) {
                if (c->state == OK) {
                    if (nlat == cap)
                        lat = realloc(lat, (cap *= 2) * sizeof *lat);
                    lat[nlat++] = c->finished - c->started;
                } else {
                    if (failed++ == 0 && c->pg != NULL)
                        snprintf(first_error, sizeof first_error, "%s", PQerrorMessage(c->pg));
                }
                if (c->pg != NULL)
                    PQfinish(c->pg);
                c->pg = NULL;
                c->state = NOT_STARTED;
                if (running)
                    start(c, conninfo);
            }
            pending += c->state == CONNECTING;
        }
        if (!running && pending == 0)
            break;
        if (!running && now() - t0 > seconds + 60)
            break;
        step(cs, n, pfds, idx, 100);
    }
    const double elapsed = now() - t0;
    qsort(lat, nlat, sizeof *lat, cmp_double);
    double p50 = nlat ? lat[nlat / 2] : 0, p99 = nlat ? lat[(size_t)((double)nlat * 0.99)] : 0,
           max = nlat ? lat[nlat - 1] : 0;
    printf("%d clients, %.1f s: %zu sessions (%.0f/s), failed %ld, login p50 %.0f ms, p99 %.0f ms, max %.0f ms\n", n,
           elapsed, nlat, (double)nlat / elapsed, failed, p50 * 1000, p99 * 1000, max * 1000);
    if (failed > 0)
        printf("  first error: %s", first_error);
    fflush(stdout);
    return failed == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);
    if (argc >= 5 && strcmp(argv[1], "hold") == 0)
        return hold(atoi(argv[2]), argv[3], argv[4], argc > 5 ? atoi(argv[5]) : 64);
    if (argc == 5 && strcmp(argv[1], "churn") == 0)
        return churn(atoi(argv[2]), argv[3], atof(argv[4]));
    if ((argc == 4 || argc == 5) && strcmp(argv[1], "burst") == 0)
        return burst(atoi(argv[2]), argv[3], argc == 5 && strcmp(argv[4], "close") == 0);
    fprintf(stderr, "usage: holdconns hold N CONNINFO STATUSFILE [PARALLEL]\n"
                    "       holdconns churn N CONNINFO SECONDS\n"
                    "       holdconns burst N CONNINFO [close]\n");
    return 2;
}
