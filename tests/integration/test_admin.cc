// The admin console (virtual database "pgwicket") through psql and libpq, with its
// privilege checks, and the Prometheus endpoint through curl, on real sessions.
#include "harness.hh"

#include "admin/commands.hh"

#include <boost/test/unit_test.hpp>


#include <signal.h>

#include <string>

using namespace pgw::it;

namespace {

std::string sqlstate_of(const PGresult* r)
{
    const char* s = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    return s ? s : "";
}

ProxyOptions admin_options()
{
    ProxyOptions o;
    o.extra_settings = "admin_users = boss, root\nstats_users = watcher\n";
    return o;
}

// The console connection for `user`; the upstream is never asked about these users.
std::string console(const Proxy& p, const std::string& user) { return p.conninfo("pgwicket", user); }

// What libpq hands to a connection's notice receiver, which includes an ErrorResponse
// that comes while the connection is idle: the FATAL of a server-side end. Attached right
// after connecting, since that FATAL may arrive behind the last query's ReadyForQuery.
struct Farewell {
    std::string said;
    explicit Farewell(PGconn* c)
    {
        PQsetNoticeReceiver(
            c, [](void* self, const PGresult* r) { static_cast<Farewell*>(self)->said += PQresultErrorMessage(r); },
            this);
    }
};

// The server-side end of an idle connection, read as it arrives and without writing: a
// query written to a closed socket can make the kernel drop the unread FATAL (libpq then
// says only "server closed the connection unexpectedly").
std::string goodbye(PGconn* c, const Farewell& f)
{
    wait_for([&] {
        PQconsumeInput(c);
        PQisBusy(c);  // parses what came
        return !f.said.empty() || PQstatus(c) == CONNECTION_BAD;
    });
    return f.said + PQerrorMessage(c);
}

} // namespace

BOOST_AUTO_TEST_SUITE(admin_console)

BOOST_AUTO_TEST_CASE(psql_renders_every_show_command)
{
    Proxy p("pgwicket-admin-show", admin_options());
    Conn app = connect_ok(p.conninfo("postgres", "postgres", "application_name=the_app"));
    BOOST_TEST(scalar(app.get(), "SELECT 1") == "1");

    RunResult r = psql(console(p, "watcher"),
                       "SHOW SESSIONS;\nshow stats;\nSHOW DATABASES;\nSHOW CONFIG;\nSHOW VERSION;\nSHOW HELP;\n");
    BOOST_TEST(r.ok(), r.status() << r.out);
    // SHOW SESSIONS: the application's session and our own.
    BOOST_TEST(contains(r.out, "the_app"), excerpt(r.out));
    BOOST_TEST(contains(r.out, "| pgwicket"), excerpt(r.out));
    BOOST_TEST(contains(r.out, "pgwicket_connections_accepted_total"), excerpt(r.out));
    // SHOW DATABASES hides the password of the unreachable entry.
    BOOST_TEST(contains(r.out, "unreachable"), excerpt(r.out));
    BOOST_TEST(!contains(r.out, kUnreachablePassword), excerpt(r.out));
    BOOST_TEST(contains(r.out, "password=********"), excerpt(r.out));
    BOOST_TEST(contains(r.out, "admin_users"), excerpt(r.out));
    BOOST_TEST(contains(r.out, "shutdown_timeout"), excerpt(r.out));
    BOOST_TEST(contains(r.out, "pgwicket 0.1.0"), excerpt(r.out));
    BOOST_TEST(contains(r.out, "KILL <session>"), excerpt(r.out));

    // Several commands in one query string, and rows through libpq.
    Conn c = connect_ok(console(p, "boss"));
    Result res(PQexec(c.get(), "show version; show sessions"));
    BOOST_TEST_REQUIRE(PQresultStatus(res.get()) == PGRES_TUPLES_OK, PQresultErrorMessage(res.get()));
    BOOST_TEST(PQntuples(res.get()) == 2);  // the last result: the app and this console
    BOOST_TEST(std::string(PQfname(res.get(), 0)) == "session");

    // Unknown commands and the extended protocol are refused with clear errors.
    Result bad(PQexec(c.get(), "SELECT * FROM pg_class"));
    BOOST_TEST(sqlstate_of(bad.get()) == "42601");
    BOOST_TEST(contains(PQresultErrorMessage(bad.get()), "SHOW HELP"), PQresultErrorMessage(bad.get()));
    Result ext(PQexecParams(c.get(), "SHOW VERSION", 0, nullptr, nullptr, nullptr, nullptr, 0));
    BOOST_TEST(sqlstate_of(ext.get()) == "0A000", PQresultErrorMessage(ext.get()));
    // The connection is still usable after both.
    BOOST_TEST(scalar(c.get(), "SHOW VERSION") == "pgwicket 0.1.0");
    check_clean_stop(p);
}

BOOST_AUTO_TEST_CASE(only_listed_users_get_in_and_only_admins_change_things)
{
    Proxy p("pgwicket-admin-privs", admin_options());
    Conn stranger = connect(console(p, "postgres"));
    std::string msg = PQerrorMessage(stranger.get());
    BOOST_TEST(PQstatus(stranger.get()) == CONNECTION_BAD);
    BOOST_TEST(contains(msg, "may not use the pgwicket admin console"), msg);
    BOOST_TEST(contains(msg, "admin_users or stats_users"), msg);

    Conn victim = connect_ok(p.conninfo());
    BOOST_TEST(scalar(victim.get(), "SELECT 1") == "1");
    Conn watcher = connect_ok(console(p, "watcher"));
    // Also behind an allowed command in the same query string, and in other spellings.
    for (const char* cmd : {"KILL 1", "RELOAD", "SHUTDOWN", "show version; shutdown", "SHOW HELP;RELOAD;", "  reload  ",
                            "Kill 1", "shutdown;", "SHOW STATS; KILL 1; SHOW VERSION"}) {
        Result r(PQexec(watcher.get(), cmd));
        BOOST_TEST(sqlstate_of(r.get()) == "42501", cmd << ": " << PQresultErrorMessage(r.get()));
    }
    // Nothing happened: the victim still works, pgwicket still runs, nothing reloaded.
    BOOST_TEST(scalar(victim.get(), "SELECT 2") == "2");
    BOOST_TEST(p.running());
    BOOST_TEST(!contains(read_file(p.log_path()), "reloading configuration"));
    check_clean_stop(p);
}

// Every console command under each kind of user, from a table of its own: a command added
// to src/admin/commands.cc without a row here fails this test (PgBouncer once let its
// stats-only users run a command that changes things, CVE-2026-6667).
BOOST_AUTO_TEST_CASE(every_command_has_a_privilege_row)
{
    struct Row {
        const char* command;  // as in the commands table
        const char* typed;    // what the test sends
        bool stats_user_may;  // stats_users may run it (admin_users may run everything)
    };
    const Row rows[] = {
        {"SHOW SESSIONS", "SHOW SESSIONS", true}, {"SHOW STATS", "SHOW STATS", true},
        {"SHOW DATABASES", "SHOW DATABASES", true}, {"SHOW POOLS", "SHOW POOLS", true},
        {"SHOW SERVERS", "SHOW SERVERS", true},   {"SHOW HOSTS", "SHOW HOSTS", true},
        {"SHOW CONFIG", "SHOW CONFIG", true},
        {"SHOW VERSION", "SHOW VERSION", true},   {"SHOW HELP", "SHOW HELP", true},
        {"RELOAD", "RELOAD", false},              {"KILL", "KILL 999999", false},
        {"SHUTDOWN", "SHUTDOWN", false},
    };
    for (const auto& c : pgw::admin::commands()) {
        bool found = false;
        for (const Row& r : rows)
            found = found || c.name == r.command;
        BOOST_TEST(found, "console command \"" << c.name << "\" has no row in this test");
    }
    BOOST_TEST(std::size(rows) == pgw::admin::commands().size(), "a row names no console command");

    Proxy p("pgwicket-admin-every-command", admin_options());
    Conn stranger = connect(console(p, "postgres"));
    BOOST_TEST(PQstatus(stranger.get()) == CONNECTION_BAD, "a user in neither list got in");
    Conn watcher = connect_ok(console(p, "watcher"));
    Conn boss = connect_ok(console(p, "boss"));
    Farewell boss_end(boss.get());
    auto allowed = [](PGconn* c, const char* typed) {
        Result r(PQexec(c, typed));
        const std::string state = sqlstate_of(r.get());
        // KILL of a session that does not exist is allowed and finds nothing (42704).
        return std::make_pair(state != "42501", state + " " + PQresultErrorMessage(r.get()));
    };
    for (const Row& r : rows) {
        BOOST_TEST_CONTEXT(r.typed)
        {
            auto [may, said] = allowed(watcher.get(), r.typed);
            BOOST_TEST(may == r.stats_user_may, "stats user: " << said);
            if (std::string(r.command) == "SHUTDOWN")
                continue;  // the admin's turn comes last
            auto [admin_may, admin_said] = allowed(boss.get(), r.typed);
            BOOST_TEST(admin_may, "admin user: " << admin_said);
        }
    }
    BOOST_TEST(p.running(), "a refused command stopped pgwicket");
    auto [admin_may, admin_said] = allowed(boss.get(), "SHUTDOWN");
    BOOST_TEST(admin_may, "admin user: " << admin_said);
    BOOST_TEST(wait_for([&] { return !p.running(); }, 10000), p.log_tail());
    BOOST_TEST(contains(goodbye(boss.get(), boss_end), "terminating connection due to pgwicket shutdown"));
    BOOST_TEST(p.stop() == "had already ended: exit 0", p.log_tail());
}

BOOST_AUTO_TEST_CASE(kill_reload_and_shutdown)
{
    ProxyOptions o = admin_options();
    o.shutdown_timeout = 30;
    Proxy p("pgwicket-admin-act", o);
    Conn victim = connect_ok(p.conninfo("postgres", "postgres", "application_name=kill_me"));
    Farewell victim_end(victim.get());
    BOOST_TEST(scalar(victim.get(), "SELECT 1") == "1");
    Conn boss = connect_ok(console(p, "boss"));
    Farewell boss_end(boss.get());

    // Find the victim's session id in SHOW SESSIONS, then KILL it.
    Result sessions(PQexec(boss.get(), "SHOW SESSIONS"));
    BOOST_TEST_REQUIRE(PQresultStatus(sessions.get()) == PGRES_TUPLES_OK);
    std::string id, backend_pid;
    const int pid_col = PQfnumber(sessions.get(), "backend_pid");
    BOOST_TEST_REQUIRE(pid_col >= 0, "SHOW SESSIONS has no backend_pid column");
    for (int i = 0; i < PQntuples(sessions.get()); ++i)
        if (std::string(PQgetvalue(sessions.get(), i, 7)) == "kill_me") {
            id = PQgetvalue(sessions.get(), i, 0);
            backend_pid = PQgetvalue(sessions.get(), i, pid_col);
        }
    BOOST_TEST_REQUIRE(!id.empty());
    // The pid the victim's driver shows, which the server's views and logs name too.
    BOOST_TEST(backend_pid == std::to_string(PQbackendPID(victim.get())));
    BOOST_TEST(backend_pid == scalar(victim.get(), "SELECT pg_backend_pid()"));
    Result missing(PQexec(boss.get(), "KILL 999999"));
    BOOST_TEST(sqlstate_of(missing.get()) == "42704");
    Result bad_arg(PQexec(boss.get(), "KILL everyone"));
    BOOST_TEST(sqlstate_of(bad_arg.get()) == "22023");
    // Killed in the middle of a query, which the upstream stops too.
    BOOST_TEST_REQUIRE(PQsendQuery(victim.get(), "SELECT pg_sleep(60)") == 1);
    BOOST_TEST_REQUIRE(wait_for([&] {
        return direct_scalar("SELECT state FROM pg_stat_activity WHERE pid = " + backend_pid) == "active";
    }));
    Result killed(PQexec(boss.get(), ("kill " + id).c_str()));
    BOOST_TEST(PQresultStatus(killed.get()) == PGRES_COMMAND_OK, PQresultErrorMessage(killed.get()));
    const std::string vmsg = goodbye(victim.get(), victim_end);
    BOOST_TEST(contains(vmsg, "terminating connection due to administrator command"), vmsg);
    BOOST_TEST(contains(vmsg, "KILL"), vmsg);
    BOOST_TEST(wait_for([&] { return !backend_alive(backend_pid); }), "backend " << backend_pid << " lives on");

    size_t mark = p.log_size();
    Result reload(PQexec(boss.get(), "RELOAD"));
    BOOST_TEST(PQresultStatus(reload.get()) == PGRES_COMMAND_OK, PQresultErrorMessage(reload.get()));
    BOOST_TEST(wait_for([&] { return read_file(p.log_path()).find("configuration reloaded", mark) != std::string::npos; }),
               p.log_tail());

    Result bye(PQexec(boss.get(), "SHUTDOWN"));
    BOOST_TEST(PQresultStatus(bye.get()) == PGRES_COMMAND_OK, PQresultErrorMessage(bye.get()));
    // The drain starts, the console session is told and closed (it would otherwise
    // hold the drain open), and with no session left pgwicket stops.
    BOOST_TEST(wait_for([&] { return !p.running(); }, 10000), p.log_tail());
    BOOST_TEST(contains(read_file(p.log_path()), "draining"), p.log_tail());
    const std::string bmsg = goodbye(boss.get(), boss_end);
    BOOST_TEST(contains(bmsg, "terminating connection due to pgwicket shutdown"), bmsg);
    BOOST_TEST(p.stop() == "had already ended: exit 0", p.log_tail());
}

BOOST_AUTO_TEST_CASE(prometheus_metrics_with_curl)
{
    ProxyOptions o;
    const int mport = free_port();
    o.extra_settings = "metrics_listen = 127.0.0.1:" + std::to_string(mport) + "\n";
    Proxy p("pgwicket-metrics", o);
    const std::string url = "http://127.0.0.1:" + std::to_string(mport);

    RunResult before = http_get(url + "/metrics");
    BOOST_TEST_REQUIRE(before.ok(), before.status() << before.out);
    BOOST_TEST(contains(before.out, "HTTP 200"), before.out);
    for (const char* family :
         {"pgwicket_sessions", "pgwicket_connections_accepted_total", "pgwicket_connections_refused_total",
          "pgwicket_auth_failures_total", "pgwicket_statements_total", "pgwicket_bytes_total",
          "pgwicket_query_duration_seconds", "pgwicket_cancel_requests_total", "pgwicket_worker_exits_total",
          "pgwicket_upstream_connect_failures_total"})
        BOOST_TEST(contains(before.out, std::string("# TYPE ") + family + " "), family << "\n" << excerpt(before.out));

    // Traffic moves the counters: 5 reads, 1 write, 1 failure, 1 routed cancel,
    // 1 unreachable upstream, one open idle session.
    {
        Conn c = connect_ok(p.conninfo());
        for (int i = 0; i < 5; ++i)
            BOOST_TEST(scalar(c.get(), "SELECT " + std::to_string(i)) == std::to_string(i));
        Result w(PQexec(c.get(), "CREATE TEMP TABLE t(x int); INSERT INTO t VALUES (1)"));
        Result e(PQexec(c.get(), "SELECT 1/0"));
        BOOST_TEST(sqlstate_of(e.get()) == "22012");
        BOOST_TEST_REQUIRE(PQsendQuery(c.get(), "SELECT pg_sleep(30)") == 1);
        sleep_ms(200);
        PGcancel* cancel = PQgetCancel(c.get());
        char err[256];
        BOOST_TEST(PQcancel(cancel, err, sizeof err) == 1);
        PQfreeCancel(cancel);
        while (PGresult* r = PQgetResult(c.get()))
            PQclear(r);
    }
    Conn dead = connect(p.conninfo("unreachable"));
    BOOST_TEST(PQstatus(dead.get()) == CONNECTION_BAD);
    Conn idle = connect_ok(p.conninfo());
    BOOST_TEST(scalar(idle.get(), "SELECT 1") == "1");

    std::string body;
    // Finished sessions are folded into the totals when their workers are reaped.
    BOOST_TEST(wait_for([&] {
                   body = http_get(url + "/metrics").out;
                   return metric(body, "pgwicket_cancel_requests_total{outcome=\"routed\"}") >= 1 &&
                          metric(body, "pgwicket_upstream_connect_failures_total") >= 1 &&
                          metric(body, "pgwicket_worker_exits_total{code=\"4\",reason=\"upstream failure\"}") >= 1;
               }),
               excerpt(body));
    BOOST_TEST(metric(body, "pgwicket_sessions{state=\"idle\"}") == 1, excerpt(body));
    BOOST_TEST(metric(body, "pgwicket_statements_total{class=\"read\",outcome=\"ok\"}") >= 6, excerpt(body));
    BOOST_TEST(metric(body, "pgwicket_statements_total{class=\"write\",outcome=\"ok\"}") >= 1, excerpt(body));
    BOOST_TEST(metric(body, "pgwicket_statements_total{class=\"ddl\",outcome=\"ok\"}") >= 1, excerpt(body));
    BOOST_TEST(metric(body, "pgwicket_statements_total{class=\"unknown\",outcome=\"error\"}") >= 2, excerpt(body));
    BOOST_TEST(metric(body, "pgwicket_bytes_total{direction=\"from_client\"}") > 100, excerpt(body));
    BOOST_TEST(metric(body, "pgwicket_query_duration_seconds_count") >= 8, excerpt(body));
    BOOST_TEST(metric(body, "pgwicket_query_duration_seconds_bucket{le=\"+Inf\"}") ==
                   metric(body, "pgwicket_query_duration_seconds_count"),
               excerpt(body));
    BOOST_TEST(metric(body, "pgwicket_worker_exits_total{code=\"4\",reason=\"upstream failure\"}") >= 1, excerpt(body));
    BOOST_TEST(metric(body, "pgwicket_connections_accepted_total") >= 4, excerpt(body));

    RunResult nf = http_get(url + "/nothing-here");
    BOOST_TEST(contains(nf.out, "HTTP 404"), nf.out);
    RunResult post = run({"curl", "-sS", "--max-time", "10", "-X", "POST", "-w", "\nHTTP %{http_code}\n", url + "/metrics"});
    BOOST_TEST(contains(post.out, "HTTP 405"), post.out);
    // Not HTTP at all: the worker answers 400 and the endpoint keeps working.
    {
        RawSocket raw(mport);
        raw.send("\x16\x03\x01garbage\r\n\r\n");
        std::string reply = raw.read_exact(12, 5000);
        BOOST_TEST(contains(reply, "HTTP/1.1 400"), reply);
    }
    BOOST_TEST(contains(http_get(url + "/metrics").out, "HTTP 200"));
    idle.reset();
    check_clean_stop(p);
}

BOOST_AUTO_TEST_SUITE_END()
