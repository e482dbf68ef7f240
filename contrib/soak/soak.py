#!/usr/bin/python3
"""The fault soak's clients, faults, checks and report (contrib/soak/soak.sh sets up the
cluster and pgwicket, then runs `soak.py run`; `soak.py jwks` makes the token signing key).

Debian's python3 with python3-psycopg2 (libpq underneath); pgbench, psql and openssl as
commands. Every statement a client sends carries a marker, /* soak:cN:sM:qK */, so the
audit file can be compared with what the clients saw."""

import argparse
import base64
import collections
import glob
import io
import itertools
import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import threading
import time

import psycopg2

ISSUER = "https://soak.pgwicket.test"
AUDIENCE = "pgwicket-soak"
SCRAM_USERS = {"soak": "soak-password", "soakadmin": "soakadmin-password"}
JWT_USER = "soakjwt"
ROW_CAP = 1000

MARKER = re.compile(r"soak:c(\d+):s(\d+):q(\d+)")
PGB_SIMPLE = re.compile(r"soak-pgb \*/ (\d+)::int AS run, (\d+)::int AS client, (\d+)::int AS seq")


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# ---- tokens ------------------------------------------------------------------------------------


def make_jwks(work):
    """An RSA key (work/jwt.key) and the JWKS file pgwicket reads (work/jwks.json)."""
    key = os.path.join(work, "jwt.key")
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key],
                   check=True, capture_output=True)
    modulus = subprocess.run(["openssl", "rsa", "-in", key, "-noout", "-modulus"], check=True,
                             capture_output=True, text=True).stdout.strip().split("=", 1)[1]
    jwk = {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": "soak-1", "n": b64u(bytes.fromhex(modulus)),
           "e": "AQAB"}
    with open(os.path.join(work, "jwks.json"), "w") as f:
        json.dump({"keys": [jwk]}, f)


def mint_token(work, identity, lifetime=4 * 3600):
    """An RS256 token for `identity`, signed by `openssl dgst` with work/jwt.key."""
    now = int(time.time())
    header = {"alg": "RS256", "typ": "JWT", "kid": "soak-1"}
    claims = {"iss": ISSUER, "aud": AUDIENCE, "exp": now + lifetime, "iat": now - 5, "nbf": now - 5,
              "sub": identity, "email": identity}
    signing_input = b64u(json.dumps(header).encode()) + "." + b64u(json.dumps(claims).encode())
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", os.path.join(work, "jwt.key")],
                         input=signing_input.encode(), check=True, capture_output=True).stdout
    return signing_input + "." + b64u(sig)


# ---- shared state --------------------------------------------------------------------------------


class Soak:
    def __init__(self, args):
        self.a = args
        self.t0 = time.time()
        self.deadline = self.t0 + args.seconds
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.log_file = open(os.path.join(args.work, "soak.log"), "w", buffering=1)
        self.faults = []            # Fault dicts, in the order they happened
        self.sessions = []          # finished client sessions
        self.statements = {}        # marker -> statement dict
        self.pgbench_runs = []
        self.probes = []            # (time, ok, error)
        self.cancel_latency = []    # seconds from cancel() to the client's error
        self.cancel_failures = []
        self.vanished = collections.Counter()
        self.token = mint_token(args.work, JWT_USER)
        self.seed = int(os.environ.get("SOAK_SEED", str(int(self.t0))))
        random.seed(self.seed)

    def now(self):
        return time.time() - self.t0

    def log(self, fmt, *args):
        line = "%7.2f %s" % (self.now(), fmt % args if args else fmt)
        with self.lock:
            self.log_file.write(line + "\n")
            if not self.a.quiet:
                print(line, flush=True)

    def remaining(self):
        return self.deadline - time.time()

    # connections ---------------------------------------------------------------------------------

    def connect(self, db, login, app, timeout=10):
        """A session through pgwicket: login "scram" (auth file, plaintext) or "jwt" (TLS)."""
        if login == "jwt":
            user, password, sslmode = JWT_USER, self.token, "require"
        else:
            user, password, sslmode = login, SCRAM_USERS[login], "disable"
        conn = psycopg2.connect(host="127.0.0.1", port=self.a.pgwport, dbname=db, user=user, password=password,
                                sslmode=sslmode, application_name=app, connect_timeout=timeout)
        conn.autocommit = True
        return conn

    def admin(self, *commands):
        """Rows of admin console commands, as dicts (a list of them for several commands,
        which run in one session, so that no other admin worker comes and goes between)."""
        conn = self.connect("pgwicket", "soakadmin", "soak-admin", timeout=5)
        try:
            results = []
            for sql in commands:
                cur = conn.cursor()
                cur.execute(sql)
                names = [d[0] for d in cur.description]
                results.append([dict(zip(names, row)) for row in cur.fetchall()])
            return results[0] if len(commands) == 1 else results
        finally:
            conn.close()

    def direct(self):
        """A connection to PostgreSQL itself, bypassing pgwicket."""
        conn = psycopg2.connect(host="127.0.0.1", port=self.a.pgport, dbname="postgres", user="postgres",
                                application_name="soak-monitor", connect_timeout=5)
        conn.autocommit = True
        return conn

    def pg_query(self, sql):
        conn = self.direct()
        try:
            cur = conn.cursor()
            cur.execute(sql)
            return cur.fetchall()
        finally:
            conn.close()

    def as_pg(self, argv):
        return (["runuser", "-u", "postgres", "--"] + argv) if os.getuid() == 0 else argv

    def add_fault(self, kind, start, end, scope, victims=(), detail=""):
        """scope: "all" touches every session alive in [start, end + 1 s]; "pid" touches the
        victims (application names) and any session that began within a second of it; "none"
        touches nothing. A fault is listed from its start (end None: still going on)."""
        f = {"kind": kind, "start": start - self.t0, "end": None if end is None else end - self.t0,
             "scope": scope, "victims": sorted(set(victims)), "detail": detail}
        with self.lock:
            self.faults.append(f)
        if end is not None:
            self.fault_done(f)
        return f

    def fault_done(self, f, detail=None):
        f["end"] = self.now()
        if detail is not None:
            f["detail"] = detail
        self.log("fault %-20s %5.1fs %s%s", f["kind"], f["end"] - f["start"], f["detail"],
                 (" victims=" + ",".join(f["victims"])) if f["victims"] else "")


def is_lost(err):
    """Whether a psycopg2 error ended the connection (rather than one statement)."""
    code = getattr(err, "pgcode", None)
    return code is None or code.startswith("08") or code in ("57P01", "57P02", "57P03")


# ---- SQL clients ---------------------------------------------------------------------------------


class Session:
    """One client session: every statement it sends, with the outcome it expects and gets."""

    def __init__(self, soak, client, number, db, login):
        self.s = soak
        self.client, self.number, self.db, self.login = client, number, db, login
        self.app = "soak-c%d-s%d" % (client, number)
        self.seq = 0
        self.markers = []
        self.failure = None
        self.fail_t = None          # when the first failure was seen
        self.start = time.time()
        self.end = None
        self.conn = None

    def marker(self, kind, expect):
        self.seq += 1
        m = "soak:c%d:s%d:q%d" % (self.client, self.number, self.seq)
        st = {"marker": m, "kind": kind, "expect": expect, "outcome": "sent", "done": None, "app": self.app}
        with self.s.lock:
            self.s.statements[m] = st
        self.markers.append(m)
        return st

    def fail(self, msg):
        if self.failure is None:
            self.failure, self.fail_t = msg, time.time()

    def settle(self, st, outcome):
        st["outcome"] = outcome
        st["done"] = time.time() - self.s.t0
        if outcome != st["expect"]:
            self.fail("%s %s: expected %s, got %s" % (st["marker"], st["kind"], st["expect"], outcome))

    def run_statement(self, kind, sql_of, expect="cc", check=None):
        st = self.marker(kind, expect)
        cur = self.conn.cursor()
        try:
            cur.execute(sql_of(st["marker"]))
            if check:
                problem = check(cur)
                if problem:
                    self.settle(st, "cc")
                    self.fail("%s %s: %s" % (st["marker"], kind, problem))
                    return st
            self.settle(st, "cc")
        except psycopg2.Error as e:
            self.settle(st, "lost" if is_lost(e) else "err:" + e.pgcode)
            if is_lost(e):
                raise
        return st

    # the operations ------------------------------------------------------------------------------

    def op_select(self):
        self.run_statement("select", lambda m: "SELECT /* %s */ count(*) FROM pgbench_branches" % m)

    def op_multi(self):
        sts = [self.marker("multi", "cc") for _ in range(3)]
        sql = "; ".join("SELECT /* %s */ %d" % (st["marker"], i) for i, st in enumerate(sts))
        try:
            self.conn.cursor().execute(sql)
            for st in sts:
                self.settle(st, "cc")
        except psycopg2.Error as e:
            for st in sts:
                self.settle(st, "lost" if is_lost(e) else "err:" + e.pgcode)
            raise

    def op_multi_error(self):
        """The middle statement fails: the first completed, the third never ran (no record)."""
        first = self.marker("multi", "cc")
        bad = self.marker("multi-error", "err:22012")
        never = self.marker("multi-skipped", "skipped")
        sql = "SELECT /* %s */ 1; SELECT /* %s */ 1 / 0; SELECT /* %s */ 3" % (
            first["marker"], bad["marker"], never["marker"])
        try:
            self.conn.cursor().execute(sql)
            for st in (first, bad, never):
                self.settle(st, "cc")
        except psycopg2.Error as e:
            if is_lost(e):
                for st in (first, bad, never):
                    self.settle(st, "lost")
                raise
            self.settle(first, "cc")
            self.settle(bad, "err:" + e.pgcode)
            self.settle(never, "skipped")

    def op_copy_in(self):
        st = self.marker("copy-in", "cc")
        data = "".join("%d\t%d\tpayload %s\n" % (self.client, i, "x" * 100) for i in range(300))
        try:
            self.conn.cursor().copy_expert("COPY /* %s */ soak_copy (client, n, payload) FROM STDIN" % st["marker"],
                                           io.StringIO(data))
            self.settle(st, "cc")
        except psycopg2.Error as e:
            self.settle(st, "lost" if is_lost(e) else "err:" + e.pgcode)
            if is_lost(e):
                raise

    def op_copy_out(self):
        st = self.marker("copy-out", "cc")
        out = io.StringIO()
        try:
            self.conn.cursor().copy_expert(
                "COPY (SELECT /* %s */ g, md5(g::text) FROM generate_series(1, 500) g) TO STDOUT" % st["marker"], out)
            self.settle(st, "cc")
            if out.getvalue().count("\n") != 500:
                self.fail("%s copy-out: %d lines" % (st["marker"], out.getvalue().count("\n")))
        except psycopg2.Error as e:
            self.settle(st, "lost" if is_lost(e) else "err:" + e.pgcode)
            if is_lost(e):
                raise

    def op_listen_notify(self):
        channel = "soak_c%d" % self.client
        self.run_statement("listen", lambda m: "LISTEN /* %s */ %s" % (m, channel))
        payload = "n%d-%d" % (self.number, self.seq)
        st = self.run_statement("notify", lambda m: "NOTIFY /* %s */ %s, '%s'" % (m, channel, payload))
        deadline = time.time() + 5
        while st["outcome"] == "cc" and not any(n.payload == payload for n in self.conn.notifies):
            if time.time() > deadline:
                self.fail("%s: notification %s never arrived" % (st["marker"], payload))
                break
            select.select([self.conn], [], [], 0.5)
            self.conn.poll()
        self.conn.notifies.clear()
        self.run_statement("unlisten", lambda m: "UNLISTEN /* %s */ *" % m)

    def op_denied(self):
        self.run_statement("denied", lambda m: "TRUNCATE /* %s */ soak_copy" % m, expect="err:42501")

    def op_row_cap(self):
        def check(cur):
            rows = cur.fetchall()
            if len(rows) != ROW_CAP:
                return "row cap: %d rows" % len(rows)
            if not any("max_rows" in n for n in self.conn.notices):
                return "row cap: no warning"
            return None
        self.run_statement("row-cap", lambda m: "SELECT /* %s */ g FROM generate_series(1, 5000) g" % m,
                           check=check)
        del self.conn.notices[:]

    def op_txn(self):
        self.run_statement("txn", lambda m: "BEGIN /* %s */" % m)
        self.run_statement("txn", lambda m: "INSERT /* %s */ INTO soak_txn VALUES (%d, %d)" % (m, self.client, self.seq))
        self.run_statement("txn", lambda m: "COMMIT /* %s */" % m)

    def op_cancel(self):
        """A long statement cancelled from another thread (libpq's PQcancel, as Ctrl-C)."""
        st = self.marker("cancel", "err:57014")
        sent = {}

        def fire():
            sent["t"] = time.time()
            self.conn.cancel()
        timer = threading.Timer(random.uniform(0.2, 0.6), fire)
        try:
            timer.start()
            self.conn.cursor().execute("SELECT /* %s */ pg_sleep(20)" % st["marker"])
            self.settle(st, "cc")
        except psycopg2.Error as e:
            got = time.time()
            self.settle(st, "lost" if is_lost(e) else "err:" + e.pgcode)
            if st["outcome"] == "err:57014" and "t" in sent:
                with self.s.lock:
                    self.s.cancel_latency.append((got - sent["t"], st["marker"], sent["t"] - self.s.t0))
            if is_lost(e):
                raise
        finally:
            timer.cancel()
            timer.join()

    OPS = [("select", 6), ("multi", 2), ("multi_error", 2), ("copy_in", 2), ("copy_out", 2), ("listen_notify", 2),
           ("denied", 2), ("row_cap", 2), ("txn", 2), ("cancel", 1)]

    def run(self):
        try:
            self.conn = self.s.connect(self.db, self.login, self.app)
        except psycopg2.Error as e:
            self.fail("login: " + (str(e).strip().splitlines() or ["?"])[0])
            self.end = time.time()
            return
        names = [n for n, w in self.OPS for _ in range(w)]
        try:
            for _ in range(random.randint(5, 30)):
                if self.s.stop.is_set():
                    break
                getattr(self, "op_" + random.choice(names))()
                time.sleep(random.uniform(0, 0.05))
        except psycopg2.Error as e:
            self.fail("lost: " + (str(e).strip().splitlines() or ["?"])[0])
        finally:
            try:
                self.conn.close()
            except psycopg2.Error:
                pass
            self.end = time.time()


def sql_client(soak, client):
    number = 0
    while not soak.stop.is_set():
        number += 1
        db = random.choice(["postgres", "postgres", "pooled"])
        login = "jwt" if random.random() < 0.3 else "soak"
        s = Session(soak, client, number, db, login)
        s.run()
        with soak.lock:
            soak.sessions.append(s)
        if s.failure:
            soak.log("client %d session %d (%s, %s): %s", client, number, db, login, s.failure)
            time.sleep(0.3)


# ---- pgbench -------------------------------------------------------------------------------------

PGBENCH_SCRIPT = """\\set aid random(1, 100000)
\\set seq :seq + 1
SELECT /* soak-pgb */ :run::int AS run, :client_id::int AS client, :seq::int AS seq, abalance FROM pgbench_accounts WHERE aid = :aid;
"""


def pgbench_loop(soak, mode, db, clients, rate, counter, script):
    while not soak.stop.is_set() and soak.remaining() > 3:
        run = next(counter)
        app = "soak-pgb%d" % run
        prefix = os.path.join(soak.a.work, "pgb", str(run))
        secs = int(min(6, soak.remaining() - 1))
        env = dict(os.environ, PGPASSWORD=SCRAM_USERS["soak"], PGAPPNAME=app, PGSSLMODE="disable",
                   PGCONNECT_TIMEOUT="10")
        start = time.time()
        p = subprocess.run([os.path.join(soak.a.pg_bindir, "pgbench"), "-n", "-T", str(secs), "-c", str(clients),
                            "-j", "1", "-M", mode, "-R", str(rate), "-f", script, "-D", "run=%d" % run, "-D", "seq=0",
                            "--log", "--log-prefix=" + prefix, "-h", "127.0.0.1", "-p", str(soak.a.pgwport),
                            "-U", "soak", db], env=env, capture_output=True, text=True)
        end = time.time()
        done = collections.defaultdict(list)   # client -> completion times
        for path in glob.glob(prefix + ".*"):
            with open(path) as f:
                for line in f:
                    fields = line.split()
                    if len(fields) >= 6:
                        done[int(fields[0])].append(int(fields[4]) + int(fields[5]) / 1e6 - soak.t0)
        aborted = [line for line in p.stderr.splitlines() if "aborted" in line or "connection" in line.lower()]
        r = {"run": run, "app": app, "mode": mode, "db": db, "clients": clients, "start": start - soak.t0,
             "end": end - soak.t0, "rc": p.returncode, "done": dict(done),
             "errors": aborted[:5] or p.stderr.strip().splitlines()[-2:],
             "transactions": sum(len(v) for v in done.values())}
        with soak.lock:
            soak.pgbench_runs.append(r)
        if p.returncode != 0:
            soak.log("pgbench run %d (%s, %s): exit %d: %s", run, mode, db, p.returncode,
                     "; ".join(aborted[:2]) or p.stderr.strip()[-200:])
            time.sleep(0.5)


# ---- clients that vanish -------------------------------------------------------------------------


def vanisher(soak):
    """psql clients killed with SIGKILL in the middle of a result or of a COPY FROM STDIN."""
    env = dict(os.environ, PGPASSWORD=SCRAM_USERS["soak"], PGSSLMODE="disable", PGCONNECT_TIMEOUT="10")
    psql = os.path.join(soak.a.pg_bindir, "psql")
    base = [psql, "-X", "-q", "-h", "127.0.0.1", "-p", str(soak.a.pgwport), "-U", "soak"]
    while not soak.stop.wait(random.uniform(3, 6)):
        kind = random.choice(["mid-result-slow", "mid-result-big", "mid-copy"])
        db = random.choice(["postgres", "pooled"])
        env["PGAPPNAME"] = "soak-vanish"
        if kind == "mid-result-slow":
            sql = "SELECT /* soak:vanish */ g, pg_sleep(0.01) FROM generate_series(1, 900) g"
        elif kind == "mid-result-big":
            sql = "SELECT /* soak:vanish */ repeat('x', 200000) FROM generate_series(1, 900)"
        else:
            sql = "COPY /* soak:vanish */ soak_copy FROM STDIN"
        p = subprocess.Popen(base + ["-d", db, "-c", sql], env=env, stdin=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            if kind == "mid-copy":
                p.stdin.write(b"".join(b"99\t%d\tvanishing\n" % i for i in range(2000)))
                p.stdin.flush()
            time.sleep(random.uniform(0.3, 0.8))
        except OSError:
            pass
        alive = p.poll() is None
        p.kill()
        p.wait()
        with soak.lock:
            soak.vanished[kind + ("" if alive else " (had ended)")] += 1
        soak.log("vanish %s on %s%s", kind, db, "" if alive else " (psql had already ended)")


# ---- the probe -----------------------------------------------------------------------------------


def prober(soak):
    """Every second: is the supervisor alive, and does it accept (an admin console login)?"""
    while not soak.stop.wait(1):
        t = soak.now()
        try:
            os.kill(soak.a.pgw_pid, 0)
        except OSError:
            soak.probes.append((t, False, "supervisor is gone"))
            soak.log("probe: SUPERVISOR IS GONE")
            return
        try:
            soak.admin("SHOW VERSION")
            soak.probes.append((t, True, ""))
        except psycopg2.Error as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
            soak.probes.append((t, False, msg))
            soak.log("probe failed: %s", msg)


# ---- faults --------------------------------------------------------------------------------------


def children(pid):
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    stat = f.read()
            except OSError:
                continue
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if int(ppid) == pid and state != "Z":   # a zombie has ended already
                kids.append(int(d))
    return kids


def soak_app(app):
    """The client's application_name in the upstream one ('<prefix> <identity>@<addr> <app>')."""
    return (app or "").split(" ")[-1]


class Faults:
    def __init__(self, soak):
        self.s = soak
        self.stop_secs = 3 if soak.a.seconds < 120 else 5

    def pick_session(self, states):
        for _ in range(20):
            rows = [r for r in self.s.admin("SHOW SESSIONS")
                    if r["state"] in states and (r["application_name"] or "").startswith("soak-")
                    and r["application_name"] != "soak-admin" and r["worker_pid"]]
            if rows:
                return random.choice(rows)
            time.sleep(0.1)
        return None

    def kill_worker(self, kind, states):
        row = self.pick_session(states)
        if not row:
            return self.s.log("fault %s: no %s session to kill (skipped)", kind, "/".join(states))
        t = time.time()
        os.kill(int(row["worker_pid"]), signal.SIGKILL)
        self.s.add_fault(kind, t, t, "pid", [row["application_name"]],
                         "worker %s (%s, %s)" % (row["worker_pid"], row["state"], row["database"]))

    def kill_busy(self):
        self.kill_worker("kill_busy", ("active",))

    def kill_idle(self):
        self.kill_worker("kill_idle", ("idle", "idle in transaction"))

    def kill_spare(self):
        for _ in range(20):
            sessions, servers = self.s.admin("SHOW SESSIONS", "SHOW SERVERS")
            busy = {int(r["worker_pid"]) for r in sessions + servers if r["worker_pid"]}
            spares = [p for p in children(self.s.a.pgw_pid) if p not in busy]
            if spares:
                pid = random.choice(spares)
                t = time.time()
                os.kill(pid, signal.SIGKILL)
                return self.s.add_fault("kill_spare", t, t, "pid", [], "worker %d" % pid)
            time.sleep(0.1)
        self.s.log("fault kill_spare: no spare worker (skipped)")

    def kill_warm(self):
        for _ in range(30):
            warm = [r for r in self.s.admin("SHOW SERVERS") if r["state"] == "warm" and r["worker_pid"]]
            if warm:
                row = random.choice(warm)
                t = time.time()
                os.kill(int(row["worker_pid"]), signal.SIGKILL)
                return self.s.add_fault("kill_warm", t, t, "pid", [],
                                        "pooled worker %s (backend %s)" % (row["worker_pid"], row["backend_pid"]))
            time.sleep(0.1)
        self.s.log("fault kill_warm: no warm pooled worker (skipped)")

    def soak_backends(self):
        return self.s.pg_query("SELECT pid, application_name FROM pg_stat_activity "
                               "WHERE backend_type = 'client backend' AND application_name LIKE '%soak-%' "
                               "AND application_name NOT LIKE '%soak-monitor%'")

    def sigstop_backend(self):
        rows = self.soak_backends()
        if not rows:
            return self.s.log("fault sigstop_backend: no backend (skipped)")
        pid, app = random.choice(rows)
        # The session must live through it: its statements only wait, so it is not excluded.
        f = self.s.add_fault("sigstop_backend", time.time(), None, "none", [],
                             "backend %d (%s) stopped" % (pid, soak_app(app)))
        os.kill(pid, signal.SIGSTOP)
        time.sleep(self.stop_secs)
        os.kill(pid, signal.SIGCONT)
        self.s.fault_done(f)

    def terminate_backend(self):
        rows = self.soak_backends()
        if not rows:
            return self.s.log("fault terminate_backend: no backend (skipped)")
        pid, app = random.choice(rows)
        t = time.time()
        self.s.pg_query("SELECT pg_terminate_backend(%d)" % pid)
        self.s.add_fault("terminate_backend", t, t, "pid", [soak_app(app)], "backend %d" % pid)

    def pg_restart(self, mode):
        f = self.s.add_fault("pg_restart_" + mode, time.time(), None, "all")
        # The server's output goes to its log, not to a pipe of ours that it would keep open.
        p = subprocess.run(self.s.as_pg([os.path.join(self.s.a.pg_bindir, "pg_ctl"), "-D", self.s.a.pgdata, "-m", mode,
                                         "-l", os.path.join(self.s.a.pgdata, "server.log"), "-w", "-t", "60",
                                         "restart"]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.s.fault_done(f, "pg_ctl restart -m %s: exit %d" % (mode, p.returncode))

    def pg_restart_fast(self):
        self.pg_restart("fast")

    def pg_restart_immediate(self):
        self.pg_restart("immediate")

    def postmaster_stop(self):
        """The upstream unreachable: no netns/tc here (other work shares this machine's
        loopback), so SIGSTOP of the postmaster: new connections and cancel requests hang."""
        with open(os.path.join(self.s.a.pgdata, "postmaster.pid")) as f:
            pid = int(f.readline())
        f = self.s.add_fault("postmaster_stop", time.time(), None, "all", [], "postmaster %d" % pid)
        os.kill(pid, signal.SIGSTOP)
        time.sleep(self.stop_secs)
        os.kill(pid, signal.SIGCONT)
        self.s.fault_done(f)

    def audit_disk_full(self):
        if not self.s.a.audit_tmpfs:
            return self.s.log("fault audit_disk_full: skipped (the audit file is not on a tmpfs of its own)")
        filler = os.path.join(self.s.a.audit_dir, "filler")
        f = self.s.add_fault("audit_disk_full", time.time(), None, "all", [], "tmpfs full, then freed")
        with open(filler, "wb", buffering=0) as out:
            for size in (1 << 20, 4096, 1):   # down to the last byte
                try:
                    while True:
                        out.write(b"\0" * size)
                except OSError:
                    pass
        time.sleep(self.stop_secs)
        os.unlink(filler)
        self.s.fault_done(f)

    KINDS = ["kill_busy", "kill_idle", "kill_spare", "kill_warm", "sigstop_backend", "terminate_backend",
             "pg_restart_fast", "pg_restart_immediate", "postmaster_stop", "audit_disk_full"]

    def run(self):
        secs = self.s.a.seconds
        warmup, tail = min(10, secs * 0.1), min(20, secs * 0.15)
        usable = secs - warmup - tail
        n = max(len(self.KINDS), int(usable // 12))
        period = usable / n
        plan = []
        while len(plan) < n:
            cycle = self.KINDS[:]
            random.shuffle(cycle)
            plan += cycle
        plan = plan[:n]
        self.s.log("faults: %d, one every %.1f s from %.0f s: %s", n, period, warmup, " ".join(plan))
        for i, kind in enumerate(plan):
            if self.s.stop.wait(max(0, self.s.t0 + warmup + i * period - time.time())):
                return
            try:
                getattr(self, kind)()
            except Exception as e:   # a fault that could not be injected is logged, not fatal
                self.s.log("fault %s: could not inject: %r", kind, e)


# ---- measurements --------------------------------------------------------------------------------


def proc_status(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def supervisor_snapshot(soak):
    pid = soak.a.pgw_pid
    return {"fds": len(os.listdir("/proc/%d/fd" % pid)), "children": len(children(pid)),
            "rss_kib": proc_status(pid, "VmRSS")}


# ---- checks --------------------------------------------------------------------------------------


def read_audit(path, bad):
    """The records of the audit file, one at a time (the file may hold hundreds of MiB);
    lines that are not a JSON object are counted in bad[0]."""
    with open(path, "rb") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
            if isinstance(rec, dict):
                yield rec
            else:
                bad[0] += 1


def param_values(rec):
    return [p.get("text") if isinstance(p, dict) else p for p in (rec.get("parameters") or [])]


def touched_by(soak, start, end, app, fail_t=None):
    """The fault that touched a session (or pgbench run) that lived in [start, end] and failed
    at fail_t (None: not known), or None. A fault on the whole upstream ("all") touches a
    session that failed during it or up to 3 s after (a restart breaks every connection; a
    client notices at its next statement); without a failure time, any session alive then.
    The full audit disk touches every session alive meanwhile: with audit_failure = block, a
    session whose record failed refuses its statements to its end. A fault on one process
    ("pid") touches its victims and any session that started within a second of it (a spare
    or a warm worker may just have been given a client)."""
    for f in soak.faults:
        f_end = soak.now() if f["end"] is None else f["end"]
        if f["scope"] == "all":
            if f["kind"] == "audit_disk_full" or fail_t is None:
                if start <= f_end + 1.0 and end >= f["start"]:
                    return f["kind"]
            elif f["start"] - 0.5 <= fail_t <= f_end + 3.0:
                return f["kind"]
        if f["scope"] == "pid" and (app in f["victims"] or abs(start - f["start"]) <= 1.0):
            return f["kind"]
    return None


def check(soak, base, warm, end_snap, leaks):
    failures, lines = [], []
    say = lines.append

    def fail(msg):
        failures.append(msg)
        say("FAIL: " + msg)

    secs = soak.a.seconds
    say("== pgwicket fault soak: %d s, seed %d ==" % (secs, soak.seed))

    # faults
    kinds = collections.Counter(f["kind"] for f in soak.faults)
    say("faults injected: %d (%s)" % (len(soak.faults), ", ".join("%s %d" % kv for kv in sorted(kinds.items()))))
    say("clients vanished: %d (%s)" % (sum(soak.vanished.values()),
                                       ", ".join("%s %d" % kv for kv in sorted(soak.vanished.items()))))
    if not soak.a.audit_tmpfs:
        say("NOTE: audit_disk_full skipped: the audit file is not on a tmpfs of its own (needs root)")

    # 1. the supervisor never died and never stopped accepting
    failed_probes = [p for p in soak.probes if not p[1]]
    say("probes: %d, failed %d" % (len(soak.probes), len(failed_probes)))
    for t, _, msg in failed_probes[:10]:
        fail("probe at %.1f s: %s" % (t, msg))
    if not end_snap:
        fail("the supervisor is gone")

    # 2. untouched sessions completed all their statements
    sess = soak.sessions
    touched = collections.Counter()
    bad = []
    for s in sess:
        if s.failure is None:
            continue
        f = touched_by(soak, s.start - soak.t0, s.end - soak.t0, s.app, s.fail_t - soak.t0)
        if f:
            touched[f] += 1
        else:
            bad.append(s)
    ok_sessions = sum(1 for s in sess if s.failure is None)
    say("client sessions: %d, %d completed every statement, %d ended early under a fault (%s), %d failed untouched"
        % (len(sess), ok_sessions, sum(touched.values()), ", ".join("%s %d" % kv for kv in sorted(touched.items())),
           len(bad)))
    for s in bad[:15]:
        fail("untouched session %s (%s, %s, %.1f-%.1f s): %s" % (s.app, s.db, s.login, s.start - soak.t0,
                                                                s.end - soak.t0, s.failure))
    per_client = collections.defaultdict(lambda: [0, 0])
    for st in soak.statements.values():
        c = int(st["marker"].split(":")[1][1:])
        per_client[c][0] += 1
        per_client[c][1] += st["outcome"] == st["expect"]
    say("statements per client (sent/as expected): " + ", ".join(
        "c%d %d/%d" % (c, v[0], v[1]) for c, v in sorted(per_client.items())))

    runs = soak.pgbench_runs
    bad_runs = [r for r in runs if r["rc"] != 0 and not touched_by(soak, r["start"], r["end"], r["app"])]
    say("pgbench runs: %d (%s), %d transactions; %d ended with errors under a fault, %d failed untouched" % (
        len(runs), ", ".join("%s %d" % kv for kv in sorted(collections.Counter(r["mode"] + "/" + r["db"] for r in runs).items())),
        sum(r["transactions"] for r in runs), sum(1 for r in runs if r["rc"] != 0) - len(bad_runs), len(bad_runs)))
    for r in bad_runs[:10]:
        fail("untouched pgbench run %d (%s, %s, %.1f-%.1f s): exit %d: %s" % (
            r["run"], r["mode"], r["db"], r["start"], r["end"], r["rc"], "; ".join(r["errors"][:2])))

    # 3. audit records: one per completed statement, none for a statement that never ran
    full_windows = [(f["start"], (f["end"] or soak.now()) + 1.0) for f in soak.faults if f["kind"] == "audit_disk_full"]
    in_full = lambda t: t is not None and any(a <= t <= b for a, b in full_windows)
    stmt_rec = collections.defaultdict(list)
    denial_rec = collections.defaultdict(list)
    pgb_rec = collections.defaultdict(set)
    phantoms = []
    records, unparsable = 0, [0]
    for rec in read_audit(os.path.join(soak.a.audit_dir, "audit.jsonl"), unparsable):
        records += 1
        text = rec.get("statement") or ""
        if rec.get("event") == "statement" and "soak-pgb" in text:
            m = PGB_SIMPLE.search(text)
            vals = m.groups() if m else param_values(rec)[:3]
            try:
                pgb_rec[(int(vals[0]), int(vals[1]))].add(int(vals[2]))
            except (ValueError, IndexError, TypeError):
                phantoms.append("pgbench record without run/client/seq: " + text[:80])
            continue
        for mk in MARKER.finditer(text):
            key = mk.group(0)
            if key not in soak.statements:
                phantoms.append("record of a statement no client sent: " + key)
            elif rec.get("event") == "statement":
                stmt_rec[key].append(rec)
            elif rec.get("event") == "denial":
                denial_rec[key].append(rec)
    if unparsable[0]:
        fail("%d audit lines are not JSON objects (cut records)" % unparsable[0])
    missing, missing_full, never_ran, wrong = [], [], [], []
    for key, st in soak.statements.items():
        recs = stmt_rec.get(key, [])
        if st["outcome"] == "cc":
            if not any(r.get("tag") for r in recs):
                (missing_full if in_full(st["done"]) else missing).append(key)
        elif st["outcome"] == "skipped" and recs:
            never_ran.append(key + " (skipped after an error, yet recorded)")
        elif st["outcome"] == "err:42501":
            if any(r.get("tag") for r in recs):
                never_ran.append(key + " (denied, yet recorded as run)")
            if not denial_rec.get(key) and not in_full(st["done"]):
                wrong.append(key + " denied without a denial record")
        cut_tag = "SELECT %d" % ROW_CAP
        if st["kind"] == "row-cap" and st["outcome"] == "cc" and recs and not any(
                r.get("truncated") and r.get("tag") == cut_tag and r.get("sqlstate") is None for r in recs):
            wrong.append("%s cut by max_rows: no record with truncated, tag %s and no sqlstate (what the client "
                         "got): %s" % (key, cut_tag, [(r.get("tag"), r.get("sqlstate"), r.get("truncated"))
                                                      for r in recs]))
    pgb_missing, pgb_missing_full, pgb_extra = 0, 0, 0
    for r in runs:
        for client, times in r["done"].items():
            got = pgb_rec.get((r["run"], client), set())
            for seq, t in enumerate(sorted(times), 1):
                if seq not in got:
                    if in_full(t):
                        pgb_missing_full += 1
                    else:
                        pgb_missing += 1
            pgb_extra += sum(1 for seq in got if seq > len(times) + 1)
    audit_failures = soak.log_text.count("AUDIT FAILURE")
    cc = sum(1 for st in soak.statements.values() if st["outcome"] == "cc")
    say("audit: %d records; %d client statements completed (+%d pgbench transactions): %d without a record, "
        "%d without a record while the audit disk was full (%d AUDIT FAILURE log lines), "
        "%d records of statements that never ran" % (
            records, cc, sum(r["transactions"] for r in runs), len(missing) + pgb_missing,
            len(missing_full) + pgb_missing_full, audit_failures, len(never_ran) + pgb_extra + len(phantoms)))
    for key in missing[:10]:
        st = soak.statements[key]
        fail("completed statement without an audit record: %s (%s, done at %.1f s)" % (key, st["kind"], st["done"]))
    if pgb_missing:
        fail("%d pgbench transactions completed without an audit record" % pgb_missing)
    if (missing_full or pgb_missing_full) and not audit_failures:
        fail("statements lost their records while the disk was full, and no AUDIT FAILURE was logged")
    for msg in (never_ran + phantoms)[:10]:
        fail(msg)
    if pgb_extra:
        fail("%d pgbench records of transactions that never ran" % pgb_extra)
    for msg in wrong[:10]:
        fail(msg)

    # 4. leaks
    say("supervisor: before %s; after warm-up %s; at the end %s" % (base, warm, end_snap))
    for msg in leaks:
        fail(msg)
    if end_snap:
        if end_snap["fds"] - end_snap["children"] != base["fds"] - base["children"]:
            fail("supervisor descriptors: %d with %d children at the start, %d with %d children at the end" % (
                base["fds"], base["children"], end_snap["fds"], end_snap["children"]))
        growth = end_snap["rss_kib"] - warm["rss_kib"]
        if growth > max(2048, warm["rss_kib"] // 10):
            fail("supervisor RSS grew from %d KiB (after warm-up) to %d KiB" % (warm["rss_kib"], end_snap["rss_kib"]))
    crashes = re.findall(r"killed by signal (\d+)", soak.log_text)
    internal = soak.log_text.count("internal error (70)")
    kills = sum(1 for f in soak.faults if f["kind"].startswith("kill_"))
    say("workers killed by a signal: %d (SIGKILL by the soak: %d); internal errors (exit 70): %d" % (
        len(crashes), kills, internal))
    other = [s for s in crashes if s != "9"]
    if other:
        fail("workers died of signals the soak did not send: %s" % ", ".join(sorted(set(other))))
    if len([s for s in crashes if s == "9"]) > kills:
        fail("more workers were SIGKILLed (%d) than the soak killed (%d)" % (crashes.count("9"), kills))
    if internal:
        fail("%d workers ended with an internal error (exit 70)" % internal)

    # 5. figures
    lat = sorted(x[0] * 1000 for x in soak.cancel_latency)
    if lat:
        q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
        say("cancels: %d landed; latency ms p50 %.1f, p95 %.1f, max %.1f" % (len(lat), q(0.5), q(0.95), lat[-1]))
    else:
        say("cancels: none landed")
    ran = max(1.0, soak.ended - soak.t0)
    say("throughput: %.0f client statements/s, %.0f pgbench transactions/s (rate-limited to %d/s), over %.0f s" % (
        cc / ran, sum(r["transactions"] for r in runs) / ran, soak.pgbench_rate, ran))
    say("RESULT: %s" % ("PASS" if not failures else "FAIL (%d)" % len(failures)))
    return failures, lines


def leak_checks(soak):
    """After the clients stopped: what should be left is spares, warm pooled workers and
    their backends (and the admin session asking). Waits up to 20 s for it to settle."""
    problems = []
    for attempt in range(40):
        problems = []
        sessions, servers, stats = soak.admin("SHOW SESSIONS", "SHOW SERVERS", "SHOW STATS")
        sessions = [r for r in sessions if r["database"] != "pgwicket"]
        warm = [r for r in servers if r["state"] == "warm"]
        kids = children(soak.a.pgw_pid)
        spares = soak.a.spares
        if sessions:
            problems.append("sessions left in the table (slots): %s" % ", ".join(
                "%s %s %s" % (r["session"], r["state"], r["application_name"]) for r in sessions[:5]))
        if len(servers) != len(warm):
            problems.append("pooled connections not warm: %s" % [r for r in servers if r["state"] != "warm"][:3])
        # spares + warm pooled workers + the admin session's worker
        if len(kids) > spares + len(warm) + 1:
            problems.append("worker processes: %d, expected at most %d (%d spares, %d warm, 1 admin)" % (
                len(kids), spares + len(warm) + 1, spares, len(warm)))
        in_use = sum(float(r["value"]) for r in stats if r["metric"] == "pgwicket_sessions")
        if in_use != 1:
            problems.append("pgwicket_sessions (slots in use) is %g, expected 1 (the admin session asking)" % in_use)
        backends = soak.pg_query("SELECT pid, application_name FROM pg_stat_activity WHERE backend_type = "
                                 "'client backend' AND pid <> pg_backend_pid()")
        warm_pids = {int(r["backend_pid"]) for r in warm if r["backend_pid"]}
        leaked = [b for b in backends if b[0] not in warm_pids]
        if leaked:
            problems.append("PostgreSQL backends without a session: %s" % leaked[:5])
        if not problems:
            soak.log("leak check: clean after %.1f s (%d workers, %d warm, %d backends)", attempt * 0.5, len(kids),
                     len(warm), len(backends))
            return []
        time.sleep(0.5)
    return problems


def run(args):
    soak = Soak(args)
    soak.pgbench_rate = 3 * 150
    soak.log("soak: %d s against pgwicket %d (127.0.0.1:%d), PostgreSQL on %d, seed %d", args.seconds, args.pgw_pid,
             args.pgwport, args.pgport, soak.seed)
    time.sleep(1)   # let spares fill
    base = supervisor_snapshot(soak)
    threads = [threading.Thread(target=prober, args=(soak,), name="probe")]
    for c in range(args.clients):
        threads.append(threading.Thread(target=sql_client, args=(soak, c), name="client%d" % c))
    counter = itertools.count(1)
    script = os.path.join(args.work, "pgbench-soak.sql")
    with open(script, "w") as f:
        f.write(PGBENCH_SCRIPT)
    os.makedirs(os.path.join(args.work, "pgb"), exist_ok=True)
    for mode, db, clients in (("simple", "postgres", 2), ("extended", "postgres", 2), ("prepared", "pooled", 3)):
        threads.append(threading.Thread(target=pgbench_loop, args=(soak, mode, db, clients, 150, counter, script),
                                        name="pgbench-" + mode))
    threads.append(threading.Thread(target=vanisher, args=(soak,), name="vanisher"))
    faults = threading.Thread(target=Faults(soak).run, name="faults")
    for t in threads + [faults]:
        t.daemon = True
        t.start()
    time.sleep(min(10, args.seconds * 0.1))
    warm = supervisor_snapshot(soak)
    soak.stop.wait(max(0, soak.remaining()))
    soak.stop.set()
    soak.log("soak: time is up; waiting for the clients")
    for t in threads + [faults]:
        t.join(60)
        if t.is_alive():
            soak.log("soak: thread %s did not stop", t.name)
    soak.ended = time.time()
    alive = True
    try:
        os.kill(args.pgw_pid, 0)
    except OSError:
        alive = False
    leaks = leak_checks(soak) if alive else ["supervisor gone"]
    end_snap = supervisor_snapshot(soak) if alive else None
    with open(os.path.join(args.work, "pgwicket.log"), errors="replace") as f:
        soak.log_text = f.read()
    failures, lines = check(soak, base, warm, end_snap, leaks)
    report = "\n".join(lines) + "\n"
    with open(os.path.join(args.work, "report.txt"), "w") as f:
        f.write(report)
    with open(os.path.join(args.work, "faults.json"), "w") as f:
        json.dump(soak.faults, f, indent=1)
    print(report, end="", flush=True)
    return 1 if failures else 0


def main():
    p = argparse.ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    j = sub.add_parser("jwks")
    j.add_argument("--work", required=True)
    r = sub.add_parser("run")
    r.add_argument("--work", required=True)
    r.add_argument("--seconds", type=int, default=600)
    r.add_argument("--pgdata", required=True)
    r.add_argument("--pg-bindir", required=True)
    r.add_argument("--pgport", type=int, required=True)
    r.add_argument("--pgwport", type=int, required=True)
    r.add_argument("--pgw-pid", type=int, required=True)
    r.add_argument("--audit-dir", required=True)
    r.add_argument("--audit-tmpfs", type=int, default=0)
    r.add_argument("--spares", type=int, default=4, help="the config's spare_workers")
    r.add_argument("--clients", type=int, default=int(os.environ.get("SOAK_CLIENTS", "8")))
    r.add_argument("--quiet", action="store_true", default=os.environ.get("SOAK_QUIET") == "1")
    args = p.parse_args()
    if args.cmd == "jwks":
        make_jwks(args.work)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
