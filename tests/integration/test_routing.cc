// Read routing (read_routing = auto) against a real streaming-replication cluster: in
// one session, statements proven read-only run on a standby and everything else on the
// primary, with transactions, prepared statements, session state, read-your-writes,
// cancels and a standby that goes away.
#include "../common/routing_corpus.hh"
#include "audit_file.hh"
#include "cluster.hh"
#include "harness.hh"

#include <boost/test/unit_test.hpp>

#include <signal.h>

#include <map>
#include <string>

using namespace pgw::it;

namespace {

// `app` routes reads with no read-your-writes delay; `sticky` keeps reads on the
// primary for a minute after a write (longer than any test needs); `pooledapp` is `app`
// with a pool of one connection, opened before its first client.
ProxyOptions routing_options(const ReplicaCluster& c)
{
    const std::string hosts = "host=" + c.hosts() + " port=" + c.ports() + " dbname=postgres user=postgres ";
    ProxyOptions o;
    o.extra_databases = "app = " + hosts + "read_routing=auto read_after_write_delay=0\n" +
                        "sticky = " + hosts + "read_routing=auto read_after_write_delay=1min\n" +
                        "pooledapp = " + hosts + "read_routing=auto read_after_write_delay=0 pool_mode=session " +
                        "pool_size=1 min_pool_size=1\n";
    o.extra_settings = "server_check_period = 1\nban_time = 2\nadmin_users = postgres\n";
    return o;
}

// Waits until the health checker knows every node's role.
void wait_roles(Proxy& p, const ReplicaCluster& c)
{
    BOOST_REQUIRE_MESSAGE(wait_for([&] {
                              Conn console = connect_ok(p.conninfo("pgwicket", "postgres"));
                              Result r(PQexec(console.get(), "SHOW HOSTS"));
                              int known = 0;
                              for (int i = 0; i < PQntuples(r.get()); ++i) {
                                  const std::string role = PQgetvalue(r.get(), i, PQfnumber(r.get(), "role"));
                                  known += role == "primary" || role == "standby";
                              }
                              return known == c.size();
                          }),
                          p.log_tail());
}

std::string port_str(const ReplicaCluster& c, int node) { return std::to_string(c.port(node)); }

// A primary and one standby (`setup` run on the primary and replayed first), and a
// pgwicket with the routing entries (`settings` added to [pgwicket]) that knows their roles.
struct Routed {
    explicit Routed(const std::string& name, const std::string& setup = "", const std::string& settings = "")
        : c("rr-" + name, 1), p("routing-" + name, options(c, setup, settings)), primary(port_str(c, 0)),
          standby(port_str(c, 1))
    {
        wait_roles(p, c);
    }
    static ProxyOptions options(ReplicaCluster& c, const std::string& setup, const std::string& settings)
    {
        if (!setup.empty()) {
            c.exec(0, setup);
            c.wait_replayed(1);
        }
        ProxyOptions o = routing_options(c);
        o.extra_settings += settings;
        return o;
    }
    ReplicaCluster c;
    Proxy p;
    const std::string primary, standby;
};

// The server port through the extended protocol (Parse/Bind/Execute/Sync, unnamed).
std::string port_extended(PGconn* c)
{
    Result r(PQexecParams(c, "SELECT inet_server_port()", 0, nullptr, nullptr, nullptr, nullptr, 0));
    BOOST_REQUIRE_MESSAGE(PQresultStatus(r.get()) == PGRES_TUPLES_OK, PQerrorMessage(c));
    return PQgetvalue(r.get(), 0, 0);
}

std::string port_prepared(PGconn* c, const char* name)
{
    Result r(PQexecPrepared(c, name, 0, nullptr, nullptr, nullptr, 0));
    BOOST_REQUIRE_MESSAGE(PQresultStatus(r.get()) == PGRES_TUPLES_OK, PQerrorMessage(c));
    return PQgetvalue(r.get(), 0, 0);
}

void prepare(PGconn* c, const char* name, const char* sql)
{
    Result r(PQprepare(c, name, sql, 0, nullptr));
    BOOST_REQUIRE_MESSAGE(PQresultStatus(r.get()) == PGRES_COMMAND_OK, PQerrorMessage(c));
}

void exec_ok(PGconn* c, const std::string& sql)
{
    Result r(PQexec(c, sql.c_str()));
    const auto st = PQresultStatus(r.get());
    BOOST_REQUIRE_MESSAGE(st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK, sql << ": " << PQerrorMessage(c));
}

const char* kPort = "SELECT inet_server_port()";

} // namespace

BOOST_AUTO_TEST_SUITE(routing)

BOOST_AUTO_TEST_CASE(reads_go_to_a_standby_and_everything_else_to_the_primary)
{
    Routed cluster("basic", "CREATE TABLE routed(i int); CREATE SEQUENCE routed_seq");
    Proxy& p = cluster.p;
    const std::string &primary = cluster.primary, &standby = cluster.standby;

    Conn a = connect_ok(p.conninfo("app"));
    // The session's own connection is the primary's: the greeting's backend pid is its.
    BOOST_CHECK_EQUAL(scalar(a.get(), kPort), standby);
    BOOST_CHECK_EQUAL(scalar(a.get(), "SELECT pg_is_in_recovery()"), "t");
    BOOST_CHECK_EQUAL(port_extended(a.get()), standby);
    // Writes, and reads that write or lock, go to the primary; reads after them go back.
    exec_ok(a.get(), "INSERT INTO routed VALUES (1)");
    BOOST_CHECK_EQUAL(scalar(a.get(), "SELECT inet_server_port() FROM routed FOR UPDATE"), primary);
    BOOST_CHECK_EQUAL(scalar(a.get(), "WITH w AS (INSERT INTO routed VALUES (2) RETURNING i) "
                                      "SELECT inet_server_port() FROM w"),
                      primary);
    BOOST_CHECK_EQUAL(scalar(a.get(), kPort), standby);
    // A transaction block stays on the primary from BEGIN to its end, reads included.
    exec_ok(a.get(), "BEGIN");
    BOOST_CHECK_EQUAL(scalar(a.get(), kPort), primary);
    BOOST_CHECK_EQUAL(port_extended(a.get()), primary);
    exec_ok(a.get(), "COMMIT");
    BOOST_CHECK_EQUAL(scalar(a.get(), kPort), standby);
    // A failed transaction too, until ROLLBACK.
    exec_ok(a.get(), "BEGIN");
    Result bad(PQexec(a.get(), "SELECT 1/0"));
    BOOST_CHECK_EQUAL(PQresultStatus(bad.get()), PGRES_FATAL_ERROR);
    Result aborted(PQexec(a.get(), kPort));
    BOOST_CHECK_EQUAL(std::string(PQresultErrorField(aborted.get(), PG_DIAG_SQLSTATE)), "25P02");
    exec_ok(a.get(), "ROLLBACK");
    BOOST_CHECK_EQUAL(scalar(a.get(), kPort), standby);

    // Named statements run where the unit using them runs, prepared there on demand: s1
    // is prepared on the standby (and repeated on the primary), s2 on the primary only.
    prepare(a.get(), "s1", kPort);
    BOOST_CHECK_EQUAL(port_prepared(a.get(), "s1"), standby);
    exec_ok(a.get(), "BEGIN");
    BOOST_CHECK_EQUAL(port_prepared(a.get(), "s1"), primary);
    prepare(a.get(), "s2", kPort);
    exec_ok(a.get(), "COMMIT");
    BOOST_CHECK_EQUAL(port_prepared(a.get(), "s2"), standby);
    BOOST_CHECK_EQUAL(port_prepared(a.get(), "s1"), standby);
    prepare(a.get(), "w1", "INSERT INTO routed VALUES ($1) RETURNING inet_server_port()");
    {
        const char* v[] = {"7"};
        Result r(PQexecPrepared(a.get(), "w1", 1, v, nullptr, nullptr, 0));
        BOOST_REQUIRE_MESSAGE(PQresultStatus(r.get()) == PGRES_TUPLES_OK, PQerrorMessage(a.get()));
        BOOST_CHECK_EQUAL(PQgetvalue(r.get(), 0, 0), primary);
    }
    // Errors come from the host that ran the statement, as they would directly.
    Result missing(PQexecPrepared(a.get(), "nosuch", 0, nullptr, nullptr, nullptr, 0));
    BOOST_CHECK_EQUAL(std::string(PQresultErrorField(missing.get(), PG_DIAG_SQLSTATE)), "26000");
    BOOST_CHECK_EQUAL(scalar(a.get(), kPort), standby);

    // Sequences pin the session to the primary for good (currval must find nextval's value).
    BOOST_CHECK_EQUAL(scalar(a.get(), "SELECT nextval('routed_seq')"), "1");
    BOOST_CHECK_EQUAL(scalar(a.get(), "SELECT currval('routed_seq')"), "1");
    BOOST_CHECK_EQUAL(scalar(a.get(), kPort), primary);
    BOOST_CHECK_EQUAL(port_prepared(a.get(), "s1"), primary);
    BOOST_CHECK_EQUAL(port_prepared(a.get(), "s2"), primary);
    a.reset();
    check_clean_stop(p);
}

// A pooled entry routes reads too. Its pooled connection (the primary's, opened for
// min_pool_size on the route its clients use) keeps the standby connection that its
// sessions read from: the next client gets both, reset (a statement the first prepared
// is gone on either host) and named for it upstream; a reload keeps them. A standby that
// goes away while the connection is warm is dropped, and the next read opens another.
BOOST_AUTO_TEST_CASE(a_pooled_entry_keeps_its_standby_connection_for_the_next_client)
{
    Routed cluster("pooled", "CREATE TABLE pooled_routed(i int)");
    Proxy& p = cluster.p;
    const std::string& standby = cluster.standby;
    const char* kWritePid = "INSERT INTO pooled_routed VALUES (1) RETURNING pg_backend_pid()";
    const char* kReadPid = "SELECT pg_backend_pid() FROM pg_is_in_recovery() r WHERE r";
    // The backend of SHOW SERVERS' row of `pool` ("" when there is none).
    auto pooled_backend = [&](const std::string& pool = "pooledapp/postgres/postgres") {
        for (auto& row : server_rows(p))
            if (row["pool"] == pool)
                return row["backend_pid"];
        return std::string();
    };
    std::string prefilled;
    BOOST_REQUIRE_MESSAGE(wait_for([&] { return !(prefilled = pooled_backend()).empty(); }),
                          "min_pool_size opened nothing\n" << p.log_tail());
    std::string primary_pid, standby_pid;
    {
        Conn a = connect_ok(p.conninfo("pooledapp", "postgres", "application_name=first"));
        BOOST_CHECK_EQUAL(scalar(a.get(), kPort), standby);
        standby_pid = scalar(a.get(), kReadPid);
        prepare(a.get(), "s1", kPort);
        BOOST_CHECK_EQUAL(port_prepared(a.get(), "s1"), standby);
        primary_pid = scalar(a.get(), kWritePid);
        BOOST_CHECK_EQUAL(port_prepared(a.get(), "s1"), standby);
    }
    BOOST_REQUIRE(!standby_pid.empty() && !primary_pid.empty());
    BOOST_CHECK_EQUAL(primary_pid, prefilled);
    BOOST_CHECK_MESSAGE(wait_for([&] { return pooled_backend("pooledapp/postgres/postgres (standby)") == standby_pid; }),
                        "SHOW SERVERS does not list the standby connection");
    {
        Conn b = connect_ok(p.conninfo("pooledapp", "postgres", "application_name=second"));
        BOOST_CHECK_EQUAL(scalar(b.get(), kReadPid), standby_pid);
        // Both connections name this client (application_name_prefix and all).
        const std::string app = cluster.c.scalar(1, "SELECT application_name FROM pg_stat_activity WHERE pid = " + standby_pid);
        BOOST_CHECK(contains(app, "second"));
        BOOST_CHECK_EQUAL(app, cluster.c.scalar(0, "SELECT application_name FROM pg_stat_activity WHERE pid = " + primary_pid));
        prepare(b.get(), "s1", kPort);  // fails when the first client's s1 is still there
        BOOST_CHECK_EQUAL(port_prepared(b.get(), "s1"), standby);
        BOOST_CHECK_EQUAL(scalar(b.get(), kWritePid), primary_pid);
    }
    // A reload that changes nothing of the route keeps both connections.
    const size_t mark = read_file(p.log_path()).size();
    ::kill(p.pid(), SIGHUP);
    BOOST_CHECK_MESSAGE(wait_for([&] {
                            return read_file(p.log_path()).find("took the reloaded configuration", mark) !=
                                   std::string::npos;
                        }),
                        p.log_tail());
    {
        Conn c = connect_ok(p.conninfo("pooledapp", "postgres", "application_name=after-reload"));
        BOOST_CHECK_EQUAL(scalar(c.get(), kReadPid), standby_pid);
        BOOST_CHECK_EQUAL(scalar(c.get(), kWritePid), primary_pid);
    }
    // The standby stops under the warm connection, and comes back.
    cluster.c.stop(1);
    BOOST_CHECK_MESSAGE(wait_for([&] { return contains(read_file(p.log_path()), "was closed or spoken on by the server; closing it"); }),
                        p.log_tail());
    cluster.c.start(1);
    wait_roles(p, cluster.c);
    {
        Conn d = connect_ok(p.conninfo("pooledapp", "postgres", "application_name=third"));
        BOOST_CHECK_EQUAL(scalar(d.get(), kWritePid), primary_pid);
        BOOST_CHECK_MESSAGE(wait_for([&] { return scalar(d.get(), kPort) == standby; }), p.log_tail());
        const std::string again = scalar(d.get(), kReadPid);
        BOOST_CHECK(!again.empty() && again != standby_pid);
    }
    check_clean_stop(p);
}

// libpq's pipeline mode: units sent before any answer is read. Each goes where it
// should, a switch of host waits for the other host's answers, and the answers come back
// in order; a unit that mixes a write into its reads runs on the primary whole.
BOOST_AUTO_TEST_CASE(pipelined_units_switch_hosts_in_order)
{
    Routed cluster("pipeline", "CREATE TABLE routed(i int)");
    ReplicaCluster& c = cluster.c;
    Proxy& p = cluster.p;
    const std::string &primary = cluster.primary, &standby = cluster.standby;

    Conn a = connect_ok(p.conninfo("app"));
    BOOST_REQUIRE(PQenterPipelineMode(a.get()));
    const char* kWrite = "INSERT INTO routed VALUES (1) RETURNING inet_server_port()";
    // Six units, alternating hosts, then one unit with both.
    const std::vector<std::pair<std::vector<const char*>, std::string>> units = {
        {{kPort}, standby},        {{kWrite}, primary}, {{kPort, kPort}, standby},
        {{kWrite, kWrite}, primary}, {{kPort}, standby}, {{kPort}, standby},
        {{kPort, kWrite, kPort}, primary},
    };
    for (const auto& [statements, where] : units) {
        for (const char* sql : statements)
            BOOST_REQUIRE(PQsendQueryParams(a.get(), sql, 0, nullptr, nullptr, nullptr, nullptr, 0));
        BOOST_REQUIRE(PQpipelineSync(a.get()));
    }
    int n = 0;
    for (const auto& [statements, where] : units) {
        for (size_t i = 0; i < statements.size(); ++i) {
            Result r(PQgetResult(a.get()));
            BOOST_REQUIRE_MESSAGE(PQresultStatus(r.get()) == PGRES_TUPLES_OK, "unit " << n << ": " << PQerrorMessage(a.get()));
            BOOST_CHECK_MESSAGE(PQgetvalue(r.get(), 0, 0) == where,
                                "unit " << n << " statement " << i << " ran on " << PQgetvalue(r.get(), 0, 0));
            Result end(PQgetResult(a.get()));  // the null after each statement's result
            BOOST_CHECK(!end);
        }
        Result sync(PQgetResult(a.get()));
        BOOST_CHECK_EQUAL(PQresultStatus(sync.get()), PGRES_PIPELINE_SYNC);
        ++n;
    }
    BOOST_REQUIRE(PQexitPipelineMode(a.get()));
    BOOST_CHECK_EQUAL(c.scalar(0, "SELECT count(*) FROM routed"), "4");
    BOOST_CHECK_EQUAL(scalar(a.get(), kPort), standby);
    check_clean_stop(p);
}

BOOST_AUTO_TEST_CASE(session_state_pins_and_reads_follow_own_writes)
{
    Routed cluster("pins", "CREATE TABLE routed(i int)");
    Proxy& p = cluster.p;
    const std::string &primary = cluster.primary, &standby = cluster.standby;

    // Each of these leaves state that only the primary would hold.
    const char* pinning[] = {
        "SET work_mem = '8MB'",
        "SELECT set_config('work_mem', '8MB', false)",
        "PREPARE q AS SELECT 1",
        "LISTEN routed_channel",
        "CREATE TEMP TABLE tmp_routed(i int)",
        "SELECT pg_advisory_lock(42)",
        "DECLARE cur CURSOR WITH HOLD FOR SELECT 1",
        "DISCARD ALL",
    };
    for (const char* sql : pinning) {
        Conn a = connect_ok(p.conninfo("app"));
        BOOST_CHECK_EQUAL(scalar(a.get(), kPort), standby);
        exec_ok(a.get(), sql);
        BOOST_CHECK_MESSAGE(scalar(a.get(), kPort) == primary, sql << " did not pin the session");
        BOOST_CHECK_EQUAL(port_extended(a.get()), primary);
    }
    // A temporary table is then readable where it lives.
    {
        Conn a = connect_ok(p.conninfo("app"));
        exec_ok(a.get(), "CREATE TEMP TABLE tmp_routed AS SELECT 5 AS i");
        BOOST_CHECK_EQUAL(scalar(a.get(), "SELECT i FROM tmp_routed"), "5");
    }
    // Read-your-writes: after its own write, the session reads from the primary.
    {
        Conn a = connect_ok(p.conninfo("sticky"));
        BOOST_CHECK_EQUAL(scalar(a.get(), kPort), standby);
        exec_ok(a.get(), "INSERT INTO routed VALUES (41)");
        BOOST_CHECK_EQUAL(scalar(a.get(), "SELECT inet_server_port() FROM routed WHERE i = 41"), primary);
        BOOST_CHECK_EQUAL(port_extended(a.get()), primary);
    }
    // The same after a write through the extended protocol (its verdict is its Parse's).
    {
        Conn a = connect_ok(p.conninfo("sticky"));
        BOOST_CHECK_EQUAL(port_extended(a.get()), standby);
        Result w(PQexecParams(a.get(), "INSERT INTO routed VALUES (43)", 0, nullptr, nullptr, nullptr, nullptr, 0));
        BOOST_REQUIRE_EQUAL(PQresultStatus(w.get()), PGRES_COMMAND_OK);
        BOOST_CHECK_EQUAL(port_extended(a.get()), primary);
        BOOST_CHECK_EQUAL(scalar(a.get(), kPort), primary);
    }
    // Without a delay the next read may go to the standby at once (here it does).
    {
        Conn a = connect_ok(p.conninfo("app"));
        exec_ok(a.get(), "INSERT INTO routed VALUES (42)");
        BOOST_CHECK_EQUAL(scalar(a.get(), kPort), standby);
    }
    check_clean_stop(p);
}

BOOST_AUTO_TEST_CASE(cancel_reaches_the_standby_and_a_lost_standby_sends_reads_to_the_primary)
{
    Routed cluster("cancel");
    ReplicaCluster& c = cluster.c;
    Proxy& p = cluster.p;
    const std::string &primary = cluster.primary, &standby = cluster.standby;

    Conn a = connect_ok(p.conninfo("app"));
    BOOST_CHECK_EQUAL(scalar(a.get(), kPort), standby);
    // A long read on the standby, cancelled with the session's own key.
    BOOST_REQUIRE(PQsendQuery(a.get(), "SELECT count(*) FROM generate_series(1, 2000000000)"));
    sleep_ms(300);
    {
        std::unique_ptr<PGcancel, void (*)(PGcancel*)> cancel(PQgetCancel(a.get()), PQfreeCancel);
        char err[256];
        BOOST_REQUIRE(PQcancel(cancel.get(), err, sizeof err));
    }
    std::string sqlstate;
    while (PGresult* r = PQgetResult(a.get())) {
        if (const char* s = PQresultErrorField(r, PG_DIAG_SQLSTATE))
            sqlstate = s;
        PQclear(r);
    }
    BOOST_CHECK_EQUAL(sqlstate, "57014");
    BOOST_CHECK_EQUAL(scalar(a.get(), kPort), standby);

    // The standby goes away between statements: reads go to the primary, nothing fails.
    c.stop(1);
    BOOST_CHECK_EQUAL(scalar(a.get(), kPort), primary);
    BOOST_CHECK_EQUAL(port_extended(a.get()), primary);
    Conn b = connect_ok(p.conninfo("app"));
    BOOST_CHECK_EQUAL(scalar(b.get(), kPort), primary);
    // Back: the next reads use it again (the checker sees it up within a period).
    c.start(1);
    BOOST_CHECK_MESSAGE(wait_for([&] { return scalar(a.get(), kPort) == standby; }, 30000), p.log_tail());
    check_clean_stop(p);
}

BOOST_AUTO_TEST_CASE(pgbench_reads_run_on_the_standby_in_every_query_mode)
{
    ReplicaCluster c("rr-pgbench", 1);
    const std::string primary_port = port_str(c, 0);
    RunOptions o;
    o.env = client_env({{"PGSSLMODE", "disable"}});
    o.timeout_s = 180;
    RunResult init = run({env().bin("pgbench"), "-i", "-s", "1", "-q", "-h", "127.0.0.1", "-p", primary_port, "-U",
                          "postgres", "postgres"},
                         o);
    BOOST_REQUIRE_MESSAGE(init.ok(), init.out);
    c.wait_replayed(1);
    ProxyOptions po = routing_options(c);
    const int metrics_port = free_port();
    po.extra_settings += "stats_users = postgres\nmetrics_listen = 127.0.0.1:" + std::to_string(metrics_port) + "\n";
    Proxy p("routing-pgbench", po);
    wait_roles(p, c);
    auto standby_commits = [&] {
        return std::stoll(c.scalar(1, "SELECT xact_commit FROM pg_stat_database WHERE datname = 'postgres'"));
    };
    auto bench = [&](std::vector<std::string> args) {
        std::vector<std::string> argv = {env().bin("pgbench"), "-h", "127.0.0.1", "-p", std::to_string(p.port()),
                                         "-U", "postgres", "-n", "-c", "2", "-j", "1"};
        argv.insert(argv.end(), args.begin(), args.end());
        argv.push_back("app");
        RunResult r = run(argv, o);
        BOOST_CHECK_MESSAGE(r.ok() && r.out.find("number of failed transactions: 0") != std::string::npos,
                            "pgbench " << args.front() << " " << args.back() << ": " << r.out << p.log_tail());
    };
    for (const char* mode : {"simple", "extended", "prepared"}) {
        const long long before = standby_commits();
        bench({"-S", "-t", "100", "-M", mode});
        // 2 clients x 100 reads ran on the standby (its statistics are flushed within a second).
        BOOST_CHECK_MESSAGE(wait_for([&] { return standby_commits() >= before + 200; }),
                            mode << ": the standby committed " << standby_commits() - before);
    }
    // The read-write script (BEGIN ... END) runs whole on the primary, in every mode.
    for (const char* mode : {"simple", "prepared"})
        bench({"-t", "50", "-M", mode});
    BOOST_CHECK_EQUAL(c.scalar(0, "SELECT count(*) FROM pgbench_history"), "200");
    // The metrics count the units by the role that ran them: at least the 600 reads on the
    // standby, and the read-write transactions' units on the primary.
    const std::string body = http_get("http://127.0.0.1:" + std::to_string(metrics_port) + "/metrics").out;
    BOOST_CHECK_GE(metric(body, "pgwicket_routed_units_total{role=\"standby\"}"), 600);
    BOOST_CHECK_GE(metric(body, "pgwicket_routed_units_total{role=\"primary\"}"), 200 * 7);
    check_clean_stop(p);
}

// Every statement of the corpus, in a fresh session, through the simple protocol and
// (where it can) the extended one: its audit records name the host it ran on, and a
// statement after it shows whether it pinned the session.
BOOST_AUTO_TEST_CASE(the_corpus_runs_where_it_should_in_both_protocols)
{
    const std::string audit = env().tmpdir + "/routing-corpus-audit.jsonl";
    std::remove(audit.c_str());
    Routed cluster("corpus",
             "CREATE TABLE t(id int, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, '12'); "
             "CREATE TABLE u(id int); INSERT INTO u VALUES (1), (2); CREATE TABLE t2(i int); "
             "CREATE VIEW v_t AS SELECT * FROM t; CREATE MATERIALIZED VIEW mv_t AS SELECT id FROM t; "
             "CREATE SEQUENCE s; "
             "CREATE FUNCTION f_vol() RETURNS int VOLATILE LANGUAGE sql AS 'SELECT 1'; "
             "CREATE FUNCTION f_ro(int) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT $1'; "
             "CREATE PROCEDURE p_noop() LANGUAGE plpgsql AS $$BEGIN END$$",
             "audit_file = " + audit + "\naudit_statement_text = full\n");
    Proxy& p = cluster.p;
    const std::string &primary = cluster.primary, &standby = cluster.standby;

    // Statements that leave no state share a session per protocol (each followed by a
    // probe); each pinning one gets a session of its own.
    const auto corpus = pgw::test::routing_corpus();
    std::map<std::string, std::vector<const pgw::test::RoutingCase*>> sessions;  // by application_name
    for (const auto& rc : corpus)
        for (bool extended : {false, true}) {
            if (extended && !rc.extended)
                continue;
            const std::string suffix = extended ? "-e" : "-s";
            sessions[rc.where == "pin" ? "corpus-" + std::to_string(rc.line) + suffix : "corpus-shared" + suffix]
                .push_back(&rc);
        }
    for (const auto& [tag, cases] : sessions) {
        const bool extended = tag.back() == 'e';
        Conn a = connect_ok(p.conninfo("app", "postgres", "application_name=" + tag));
        for (const auto* rc : cases) {
            PGresult* r = extended ? PQexecParams(a.get(), rc->sql.c_str(), 0, nullptr, nullptr, nullptr, nullptr, 0)
                                   : PQexec(a.get(), rc->sql.c_str());
            while (r) {
                if (PQresultStatus(r) == PGRES_COPY_OUT) {
                    char* row = nullptr;
                    while (PQgetCopyData(a.get(), &row, 0) > 0)
                        PQfreemem(row);
                }
                PQclear(r);
                r = PQgetResult(a.get());
            }
            Result follow(PQexec(a.get(), "SELECT 1 AS followup"));
            BOOST_CHECK_MESSAGE(PQresultStatus(follow.get()) == PGRES_TUPLES_OK,
                                tag << " (" << rc->sql << "): the next statement failed: " << PQerrorMessage(a.get()));
        }
    }
    p.stop();
    std::map<std::string, std::vector<nlohmann::json>> records;
    for (const auto& r : read_audit(audit).records)
        if (text(r, "event") == "statement")
            records[text(r, "application_name")].push_back(r);
    for (const auto& [tag, cases] : sessions) {
        // Each statement's records, then its probe's.
        const auto& recs = records[tag];
        size_t at = 0;
        for (const auto* rc : cases) {
            const std::string what = tag + " line " + std::to_string(rc->line) + " (" + rc->sql + ")";
            size_t mains = 0;
            for (; at < recs.size(); ++at) {
                const auto& r = recs[at];
                const std::string port = text(r, "upstream_port");
                if (text(r, "statement") == "SELECT 1 AS followup") {
                    const std::string want = rc->where == "pin" ? primary : standby;
                    BOOST_CHECK_MESSAGE(port == want, what << ": the statement after it ran on " << port << ", not "
                                                           << want << (rc->where == "pin" ? " (not pinned)" : " (pinned)"));
                    ++at;
                    break;
                }
                ++mains;
                const std::string want = rc->where == "standby" ? standby : primary;
                BOOST_CHECK_MESSAGE(port == want,
                                    what << ": ran on " << port << ", not on the " << rc->where << " " << want);
                if (rc->where == "standby")
                    BOOST_CHECK_MESSAGE(text(r, "sqlstate") == "<null>" || text(r, "sqlstate").empty(),
                                        what << ": failed on the standby: " << text(r, "sqlstate"));
            }
            BOOST_CHECK_MESSAGE(mains > 0, what << ": no audit record");
        }
    }
}

BOOST_AUTO_TEST_SUITE_END()
