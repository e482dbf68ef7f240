// Session pooling through the real binary and a real server: a second client on a
// pooled route reuses the first one's backend (same pid) and finds nothing it left;
// connections of doubtful state are never reused; limits, waits and 53300; a warm
// connection the server ended; cancel keys that follow the session, not the backend;
// SHOW SERVERS and the pool gauges.
#include "harness.hh"
#include "audit_file.hh"
#include "tls_client.hh"
#include "tls_fixtures.hh"

#include <boost/test/unit_test.hpp>

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <set>
#include <chrono>
#include <map>
#include <string>
#include <thread>
#include <vector>

using namespace pgw::it;

namespace {

// A proxy whose "pooled" entry shares one upstream connection (pool_size=1), so the
// second client of a test must get the first one's backend when it is reusable.
ProxyOptions pooled_options(const std::string& entry_extra = "pool_size=1", const std::string& settings = "")
{
    ProxyOptions o;
    o.extra_databases = "pooled = host=127.0.0.1 port=" + std::to_string(env().pg_port) +
                        " dbname=postgres user=postgres pool_mode=session " + entry_extra + "\n" +
                        "pooledtls = host=127.0.0.1 port=" + std::to_string(env().pg_port) +
                        " dbname=postgres user=postgres sslmode=require pool_mode=session pool_size=1\n";
    // The metrics endpoint is served by short-lived workers, never by a warm one, so it
    // shows the pools without disturbing them (a console session may land on the warm
    // worker it is asking about).
    o.extra_settings = "server_check_delay = 0\nstats_users = postgres\nmetrics_listen = 127.0.0.1:" +
                       std::to_string(free_port()) + "\n" + settings;
    return o;
}

std::string pid_of(PGconn* c) { return scalar(c, "SELECT pg_backend_pid()"); }

// Whether a backend with this pid is still connected to the server.
// Connects client after client until one lands on `pid` (the previous client's worker
// may not be warm yet when the next one asks: with pool_size=1 it then waits for it).
Conn connect_app(Proxy& p, const std::string& db, const std::string& app)
{
    return connect_ok(p.conninfo(db, "postgres", "application_name=" + app));
}

} // namespace

BOOST_AUTO_TEST_SUITE(pool)

BOOST_AUTO_TEST_CASE(second_client_reuses_the_backend_and_finds_nothing_left)
{
    Proxy p("pool-isolation", pooled_options());
    std::string first_pid;
    {
        Conn a = connect_app(p, "pooled", "first-client");
        first_pid = pid_of(a.get());
        for (const char* sql :
             {"SET search_path = pg_catalog", "SET DateStyle = 'German'", "SELECT set_config('myapp.tag', 'x', false)",
              "CREATE TEMP TABLE left_behind(i int)", "PREPARE left_stmt AS SELECT 1",
              "BEGIN", "DECLARE left_cursor CURSOR WITH HOLD FOR SELECT 1", "COMMIT", "LISTEN left_channel",
              "SELECT pg_advisory_lock(4242)", "SET ROLE alice"}) {
            Result r(PQexec(a.get(), sql));
            BOOST_REQUIRE_MESSAGE(PQresultStatus(r.get()) == PGRES_COMMAND_OK || PQresultStatus(r.get()) == PGRES_TUPLES_OK,
                                  sql << ": " << PQerrorMessage(a.get()));
        }
        Result prep(PQprepare(a.get(), "left_protocol_stmt", "SELECT 2", 0, nullptr));
        BOOST_REQUIRE_EQUAL(PQresultStatus(prep.get()), PGRES_COMMAND_OK);
        BOOST_CHECK_EQUAL(scalar(a.get(), "SELECT current_user"), "alice");
    }
    Conn b = connect_app(p, "pooled", "second-client");
    BOOST_REQUIRE_MESSAGE(pid_of(b.get()) == first_pid,
                          "the second client did not reuse the pooled backend\n" << p.log_tail());
    BOOST_CHECK_EQUAL(scalar(b.get(), "SELECT current_user"), "postgres");
    BOOST_CHECK_EQUAL(scalar(b.get(), "SHOW search_path"), "\"$user\", public");
    BOOST_CHECK_EQUAL(scalar(b.get(), "SHOW DateStyle"), "ISO, MDY");
    BOOST_CHECK_EQUAL(std::string(PQparameterStatus(b.get(), "DateStyle")), "ISO, MDY");
    BOOST_CHECK_EQUAL(scalar(b.get(), "SELECT coalesce(current_setting('myapp.tag', true), '')"), "");
    BOOST_CHECK_EQUAL(scalar(b.get(), "SELECT to_regclass('pg_temp.left_behind') IS NULL"), "t");
    BOOST_CHECK_EQUAL(scalar(b.get(), "SELECT count(*) FROM pg_prepared_statements"), "0");
    BOOST_CHECK_EQUAL(scalar(b.get(), "SELECT count(*) FROM pg_cursors"), "0");
    BOOST_CHECK_EQUAL(scalar(b.get(), "SELECT count(*) FROM pg_listening_channels()"), "0");
    BOOST_CHECK_EQUAL(scalar(b.get(), "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"),
                      "0");
    // The upstream application_name names the client using the connection now.
    const std::string app = scalar(b.get(), "SHOW application_name");
    BOOST_CHECK_MESSAGE(app.find("second-client") != std::string::npos && app.find("first-client") == std::string::npos,
                        app);
    BOOST_CHECK_EQUAL(direct_scalar("SELECT application_name FROM pg_stat_activity WHERE pid = " + first_pid), app);
    b.reset();
    check_clean_stop(p);
}

BOOST_AUTO_TEST_CASE(a_connection_left_in_doubt_is_never_reused)
{
    Proxy p("pool-doubt", pooled_options());
    // Inside an open transaction, and inside a failed one.
    for (const char* leftover : {"BEGIN", "BEGIN; SELECT 1/0"}) {
        Conn a = connect_app(p, "pooled", "leaves-a-transaction");
        const std::string pid = pid_of(a.get());
        Result r(PQexec(a.get(), leftover));
        a.reset();  // Terminate inside the transaction
        Conn b = connect_app(p, "pooled", "next");
        BOOST_CHECK_MESSAGE(pid_of(b.get()) != pid, leftover << ": the backend was reused");
        BOOST_CHECK_EQUAL(scalar(b.get(), "SELECT now() = statement_timestamp()"), "t");  // not in a transaction
        BOOST_CHECK_MESSAGE(wait_for([&] { return !backend_alive(pid); }), leftover << ": the old backend lives on");
    }
    // Killed in the middle of a result, with the query still running upstream.
    {
        std::string pid;
        {
            Conn a = connect_app(p, "pooled", "mid-result");
            pid = pid_of(a.get());
        }
        RawSocket s(p.port());
        s.send(startup_packet({{"user", "postgres"}, {"database", "pooled"}}));
        auto greeting = s.read_until_ready();
        BOOST_REQUIRE(!greeting.empty() && greeting.back().type == 'Z');
        s.send(query_message("SELECT pg_backend_pid(), repeat('x', 100) FROM generate_series(1, 2000000)"));
        auto first = s.read_message();
        BOOST_REQUIRE(first && first->type == 'T');
        s.close();
        Conn b = connect_app(p, "pooled", "after-mid-result");
        BOOST_CHECK_MESSAGE(pid_of(b.get()) != pid, "a backend left mid-result was reused");
        BOOST_CHECK_MESSAGE(wait_for([&] { return !backend_alive(pid); }), "the backend left mid-result lives on");
    }
    // Gone with a query still running: never reused.
    {
        std::string pid;
        {
            Conn a = connect_app(p, "pooled", "running");
            pid = pid_of(a.get());
            BOOST_REQUIRE(PQsendQuery(a.get(), "SELECT pg_sleep(3)"));
            BOOST_REQUIRE(wait_for([&] {
                return direct_scalar("SELECT state FROM pg_stat_activity WHERE pid = " + pid) == "active";
            }));
        }
        Conn b = connect_app(p, "pooled", "after-running");
        BOOST_CHECK_MESSAGE(pid_of(b.get()) != pid, "a backend left with a query running was reused");
        BOOST_CHECK_EQUAL(scalar(b.get(), "SELECT 1"), "1");
    }
    // Gone right after cancelling its query, without waiting for the answer: whether the
    // connection is reused depends on what arrived first, but the next client's queries
    // are never hit by that cancel.
    for (int round = 0; round < 3; ++round) {
        {
            Conn a = connect_app(p, "pooled", "cancels-and-goes");
            const std::string pid = pid_of(a.get());
            BOOST_REQUIRE(PQsendQuery(a.get(), "SELECT pg_sleep(3)"));
            BOOST_REQUIRE(wait_for([&] {
                return direct_scalar("SELECT state FROM pg_stat_activity WHERE pid = " + pid) == "active";
            }));
            PGcancel* key = PQgetCancel(a.get());
            char err[256];
            PQcancel(key, err, sizeof err);
            PQfreeCancel(key);
        }
        Conn b = connect_app(p, "pooled", "after-cancel");
        for (int i = 0; i < 5; ++i)
            BOOST_CHECK_EQUAL(scalar(b.get(), "SELECT count(*) FROM pg_sleep(0.05)"), "1");
    }
    check_clean_stop(p);
}

// The metrics endpoint of a proxy made with pooled_options.
std::string metrics_url(Proxy& p)
{
    const std::string conf = read_file(p.config_path());
    const std::string key = "metrics_listen = ";
    const size_t at = conf.find(key);
    return "http://" + conf.substr(at + key.size(), conf.find('\n', at) - at - key.size()) + "/metrics";
}

// The "pooled" entry's gauges as "warm active waiting pool_size".
std::string pool_gauges(Proxy& p)
{
    const std::string body = http_get(metrics_url(p)).out;
    const std::string pool = "pool=\"pooled/postgres/postgres\"";
    auto v = [&](const std::string& series) { return std::to_string(long(metric(body, series))); };
    return v("pgwicket_pool_connections{" + pool + ",state=\"warm\"}") + " " +
           v("pgwicket_pool_connections{" + pool + ",state=\"active\"}") + " " +
           v("pgwicket_pool_waiting_clients{" + pool + "}") + " " + v("pgwicket_pool_size{" + pool + "}");
}

// Adds libpq keys to the "pooled" entry's connection string in the config file (its route
// changes), for a reload to take.
void add_to_pooled_entry(const Proxy& p, const std::string& keys)
{
    std::string ini = read_file(p.config_path());
    const size_t entry = ini.find("pooled = host=");
    const size_t at = ini.find("pool_mode=session", entry);
    BOOST_REQUIRE(entry != std::string::npos && at != std::string::npos);
    ini.insert(at, keys + " ");
    write_file(p.config_path(), ini);
}

// One client of `db` comes and goes; returns its backend's pid once the connection is warm
// (the "pooled" entry's gauges read `gauges`).
std::string warm_backend(Proxy& p, const std::string& db, const std::string& app, const std::string& gauges)
{
    std::string pid;
    {
        Conn a = connect_app(p, db, app);
        pid = pid_of(a.get());
    }
    BOOST_REQUIRE_MESSAGE(wait_for([&] { return pool_gauges(p) == gauges; }), "metrics: " << pool_gauges(p));
    return pid;
}

// SHOW POOLS' row for the "pooled" entry as "warm active waiting pool_size", or "".
std::string pool_row(Proxy& p)
{
    Conn console = connect_ok(p.conninfo("pgwicket", "postgres"));
    Result r(PQexec(console.get(), "SHOW POOLS"));
    for (int i = 0; i < PQntuples(r.get()); ++i)
        if (std::string(PQgetvalue(r.get(), i, 0)) == "pooled/postgres/postgres")
            return std::string(PQgetvalue(r.get(), i, 1)) + " " + PQgetvalue(r.get(), i, 2) + " " +
                   PQgetvalue(r.get(), i, 3) + " " + PQgetvalue(r.get(), i, 5);
    return "";
}

BOOST_AUTO_TEST_CASE(full_pool_waits_in_order_then_53300)
{
    Proxy p("pool-full", pooled_options("pool_size=1", "query_wait_timeout = 3\n"));
    Conn holder = connect_app(p, "pooled", "holder");
    const std::string pid = pid_of(holder.get());
    BOOST_CHECK_EQUAL(pool_row(p), "0 1 0 1");
    // A second client waits for the only connection (SHOW POOLS counts it), and gets it
    // when the first leaves.
    Conn waiter;
    std::thread wait([&] { waiter = connect_app(p, "pooled", "waiter"); });
    BOOST_CHECK_MESSAGE(wait_for([&] { return pool_row(p) == "0 1 1 1"; }), "SHOW POOLS: " << pool_row(p));
    BOOST_CHECK_EQUAL(pool_gauges(p), "0 1 1 1");
    holder.reset();
    wait.join();
    BOOST_CHECK_EQUAL(pid_of(waiter.get()), pid);
    // Nobody leaves: the next one is refused after query_wait_timeout, naming the pool.
    Conn refused = connect(p.conninfo("pooled", "postgres", "application_name=refused"));
    BOOST_REQUIRE(PQstatus(refused.get()) == CONNECTION_BAD);
    const std::string err = PQerrorMessage(refused.get());
    BOOST_CHECK_MESSAGE(contains(err, "pooled/postgres/postgres") && contains(err, "query_wait_timeout"), err);
    BOOST_CHECK_EQUAL(scalar(waiter.get(), "SELECT 1"), "1");
    waiter.reset();
    BOOST_CHECK_MESSAGE(wait_for([&] { return pool_gauges(p) == "1 0 0 1"; }), "metrics: " << pool_gauges(p));
    // The wait histogram: three clients; the second waited until the holder left, the
    // refused one query_wait_timeout (3 s).
    const std::string body = http_get(metrics_url(p)).out;
    const std::string pool = "pool=\"pooled/postgres/postgres\"";
    BOOST_CHECK_EQUAL(metric(body, "pgwicket_pool_wait_seconds_count{" + pool + "}"), 3);
    BOOST_CHECK_EQUAL(metric(body, "pgwicket_pool_wait_seconds_bucket{" + pool + ",le=\"+Inf\"}"), 3);
    BOOST_CHECK_GE(metric(body, "pgwicket_pool_wait_seconds_bucket{" + pool + ",le=\"0.001\"}"), 1);  // the holder
    BOOST_CHECK_GE(metric(body, "pgwicket_pool_wait_seconds_sum{" + pool + "}"), 3.0);
    check_clean_stop(p);
}

// A client that gives up while waiting for a full pool leaves the queue at once, not when
// its turn or query_wait_timeout (a minute here) comes: one that closes its connection,
// and one over TLS that only says goodbye (close_notify, an encrypted record like any
// other in TLS 1.3), its socket still open.
BOOST_AUTO_TEST_CASE(a_client_that_gives_up_leaves_the_queue)
{
    const auto& t = tls_files();
    Proxy p("pool-give-up",
            pooled_options("pool_size=1", "query_wait_timeout = 60\nclient_tls_sslmode = prefer\nclient_tls_cert_file = " +
                                              t.server_cert + "\nclient_tls_key_file = " + t.server_key + "\n"));
    Conn holder = connect_app(p, "pooled", "holder");
    BOOST_CHECK_EQUAL(pool_row(p), "0 1 0 1");
    const std::string startup = startup_packet({{"user", "postgres"}, {"database", "pooled"}});
    auto queued = [&] { return wait_for([&] { return pool_row(p) == "0 1 1 1"; }); };
    auto left = [&] { return wait_for([&] { return pool_row(p) == "0 1 0 1"; }); };
    {
        RawSocket quitter(p.port());
        BOOST_REQUIRE(quitter.send(startup));
        BOOST_REQUIRE_MESSAGE(queued(), "SHOW POOLS: " << pool_row(p));
        quitter.close();
        BOOST_CHECK_MESSAGE(left(), "SHOW POOLS: " << pool_row(p));
    }
    {
        TlsClient quitter(p.port(), t.ca_cert);
        BOOST_REQUIRE(quitter.send(startup));
        BOOST_REQUIRE_MESSAGE(queued(), "SHOW POOLS: " << pool_row(p));
        quitter.say_goodbye();
        BOOST_CHECK_MESSAGE(left(), "SHOW POOLS: " << pool_row(p));
    }
    BOOST_CHECK_MESSAGE(contains(read_file(p.log_path()), "the client left while waiting for a pooled connection"),
                        p.log_tail());
    // The pool goes on as before.
    holder.reset();
    Conn next = connect_app(p, "pooled", "next");
    BOOST_CHECK_EQUAL(scalar(next.get(), "SELECT 1"), "1");
    next.reset();
    check_clean_stop(p);
}

BOOST_AUTO_TEST_CASE(clients_that_waited_leave_no_extra_spares)
{
    // A client that waited for a full pool is moved to the warm worker when it frees; the
    // worker that held it becomes a spare again, and those beyond spare_workers (2 here)
    // leave once they have had no work for 5 s. (Before, 2,000 clients that had waited
    // left 2,000 spares behind for good.)
    Proxy p("pool-spares", pooled_options("pool_size=1", "query_wait_timeout = 0\n"));
    Conn holder = connect_app(p, "pooled", "holder");
    constexpr int kWaiters = 6;
    std::atomic<int> served{0};
    std::vector<std::thread> waiters;
    for (int i = 0; i < kWaiters; ++i)
        waiters.emplace_back([&] {
            // In, and out at once: the next waiter gets the connection.
            Conn c = connect(p.conninfo("pooled", "postgres", "application_name=waiter"));
            served += PQstatus(c.get()) == CONNECTION_OK;
        });
    BOOST_CHECK_MESSAGE(wait_for([&] { return pool_row(p) == "0 1 6 1"; }), "SHOW POOLS: " << pool_row(p));
    holder.reset();
    for (auto& t : waiters)
        t.join();
    BOOST_CHECK_EQUAL(served.load(), kWaiters);
    // Two spares and the warm worker.
    BOOST_CHECK_MESSAGE(wait_for([&] { return children_of(p.pid()).size() == 3; }, 15000),
                        children_of(p.pid()).size() << " processes under the supervisor");
    check_clean_stop(p);
}

BOOST_AUTO_TEST_CASE(a_warm_connection_the_server_ended_is_replaced)
{
    Proxy p("pool-server-ended", pooled_options());
    // Once the worker is warm, end its backend from the server side.
    const std::string pid = warm_backend(p, "pooled", "first", "1 0 0 1");
    direct_scalar("SELECT pg_terminate_backend(" + pid + ")");
    BOOST_REQUIRE(wait_for([&] { return !backend_alive(pid); }));
    Conn b = connect_app(p, "pooled", "second");
    BOOST_CHECK_NE(pid_of(b.get()), pid);
    BOOST_CHECK_EQUAL(scalar(b.get(), "SELECT 40 + 2"), "42");
    b.reset();
    check_clean_stop(p);
}

BOOST_AUTO_TEST_CASE(cancel_keys_follow_the_session_not_the_backend)
{
    Proxy p("pool-cancel", pooled_options());
    std::string pid;
    PGcancel* old_key = nullptr;
    {
        Conn a = connect_app(p, "pooled", "first");
        pid = pid_of(a.get());
        old_key = PQgetCancel(a.get());
    }
    Conn b = connect_app(p, "pooled", "second");
    BOOST_REQUIRE_EQUAL(pid_of(b.get()), pid);
    BOOST_CHECK_EQUAL(std::to_string(PQbackendPID(b.get())), pid);
    // The first session's key names the same backend pid but must cancel nothing now.
    // Each cancel goes out once the query runs on the server (a cancel that arrives
    // before it would find nothing to cancel, whoever sent it).
    auto running = [&](const char* sql) {
        return wait_for([&] {
            return direct_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = " + pid +
                                 " AND state = 'active' AND query = '" + sql + "'") == "1";
        });
    };
    BOOST_REQUIRE(PQsendQuery(b.get(), "SELECT pg_sleep(2)"));
    BOOST_REQUIRE(running("SELECT pg_sleep(2)"));
    char err[256];
    PQcancel(old_key, err, sizeof err);
    PQfreeCancel(old_key);
    Result r(PQgetResult(b.get()));
    BOOST_CHECK_MESSAGE(PQresultStatus(r.get()) == PGRES_TUPLES_OK,
                        "the old session's key cancelled the new session's query: " << PQerrorMessage(b.get()));
    while (Result more{PQgetResult(b.get())})
        ;
    // The new session's own key cancels.
    BOOST_REQUIRE(PQsendQuery(b.get(), "SELECT pg_sleep(30)"));
    BOOST_REQUIRE(running("SELECT pg_sleep(30)"));
    PGcancel* key = PQgetCancel(b.get());
    BOOST_REQUIRE(PQcancel(key, err, sizeof err));
    PQfreeCancel(key);
    Result c(PQgetResult(b.get()));
    BOOST_CHECK_EQUAL(std::string(PQresultErrorField(c.get(), PG_DIAG_SQLSTATE) ? PQresultErrorField(c.get(), PG_DIAG_SQLSTATE) : ""),
                      "57014");
    while (Result more{PQgetResult(b.get())})
        ;
    b.reset();
    check_clean_stop(p);
}

BOOST_AUTO_TEST_CASE(tls_upstream_is_pooled_too)
{
    Proxy p("pool-tls-upstream", pooled_options());
    std::string pid;
    {
        Conn a = connect_app(p, "pooledtls", "first");
        pid = pid_of(a.get());
        BOOST_CHECK_EQUAL(scalar(a.get(), "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"), "t");
    }
    Conn b = connect_app(p, "pooledtls", "second");
    BOOST_CHECK_EQUAL(pid_of(b.get()), pid);
    BOOST_CHECK_EQUAL(scalar(b.get(), "SELECT 1"), "1");
    b.reset();
    check_clean_stop(p);
}

BOOST_AUTO_TEST_CASE(killing_warm_and_busy_workers_frees_their_places)
{
    // A leaked place would make one of two clients wait, and query_wait_timeout then refuse it.
    Proxy p("pool-kill", pooled_options("pool_size=2", "query_wait_timeout = 5\n"));
    std::vector<pid_t> killed;
    std::string pid;
    {
        Conn a = connect_app(p, "pooled", "first");
        pid = pid_of(a.get());
    }
    // The warm worker holds the backend's other end: the backend's client_port.
    const std::string port = direct_scalar("SELECT client_port FROM pg_stat_activity WHERE pid = " + pid);
    pid_t warm = -1;
    BOOST_REQUIRE(wait_for([&] {
        warm = child_with_socket(p.pid(), unsigned(std::stoul(port)), unsigned(env().pg_port));
        return warm > 0;
    }));
    BOOST_REQUIRE(::kill(warm, SIGKILL) == 0);
    killed.push_back(warm);
    BOOST_REQUIRE_MESSAGE(wait_for([&] { return !backend_alive(pid); }), "the killed warm worker's backend lives on");
    {
        Conn b = connect_app(p, "pooled", "b");
        Conn c = connect_app(p, "pooled", "c");
        BOOST_CHECK_EQUAL(scalar(b.get(), "SELECT 1"), "1");
        BOOST_CHECK_EQUAL(scalar(c.get(), "SELECT 1"), "1");
        // A busy worker killed mid-session frees its place too.
        pid_t busy = worker_serving(PQsocket(b.get()), p.port(), p.pid());
        BOOST_REQUIRE(busy > 0);
        BOOST_REQUIRE(::kill(busy, SIGKILL) == 0);
        killed.push_back(busy);
        Conn d = connect_app(p, "pooled", "d");
        BOOST_CHECK_EQUAL(scalar(d.get(), "SELECT 1"), "1");
        BOOST_CHECK_EQUAL(scalar(c.get(), "SELECT 2"), "2");
    }
    check_stop_allowing(p, killed);
}

// Every client/upstream TLS combination pools: with client TLS on, psql over TLS and over
// plaintext, to a plaintext and to a TLS upstream, reuses the first client's backend.
BOOST_AUTO_TEST_CASE(every_tls_combination_reuses_the_backend)
{
    const auto& t = tls_files();
    ProxyOptions o = pooled_options();
    o.extra_settings += "client_tls_sslmode = prefer\nclient_tls_cert_file = " + t.server_cert +
                        "\nclient_tls_key_file = " + t.server_key + "\n";
    Proxy p("pool-tls-combinations", o);
    for (const char* db : {"pooled", "pooledtls"})
        for (const char* sslmode : {"disable", "require"}) {
            const std::string what = std::string(db) + " with client sslmode=" + sslmode;
            std::string pid;
            {
                Conn a = connect_ok(p.conninfo(db, "postgres", std::string("application_name=first sslmode=") + sslmode));
                BOOST_CHECK_EQUAL(PQsslInUse(a.get()), std::string(sslmode) == "require" ? 1 : 0);
                pid = pid_of(a.get());
            }
            // A client that reconnects before the worker has gone warm is served by another
            // connection (a TLS client cannot move to it): wait, as a pause between
            // requests would.
            const std::string series = std::string("pgwicket_pool_connections{pool=\"") + db +
                                       "/postgres/postgres\",state=\"warm\"}";
            BOOST_CHECK(wait_for([&] {
                return metric(http_get(metrics_url(p)).out, series) == 1;
            }));
            Conn b = connect_ok(p.conninfo(db, "postgres", std::string("application_name=second sslmode=") + sslmode));
            BOOST_CHECK_MESSAGE(pid_of(b.get()) == pid, what << ": the backend was not reused\n" << p.log_tail());
            BOOST_CHECK_EQUAL(scalar(b.get(), "SELECT 1"), "1");
        }
    check_clean_stop(p);
}

// A TLS client that lands on a worker without a warm connection of its route (here: one
// warm on another route, guessed from the host's last client) cannot move, since its TLS
// state stays in that process; that worker relays its stream to a warm worker of the
// route over a socket pair, and closes its own connection. The client gets the warm
// backend, over TLS, and its cancel key works.
BOOST_AUTO_TEST_CASE(a_tls_client_elsewhere_is_relayed_to_a_warm_connection)
{
    const auto& t = tls_files();
    ProxyOptions o = pooled_options("pool_size=2");
    o.extra_settings += "client_tls_sslmode = prefer\nclient_tls_cert_file = " + t.server_cert +
                        "\nclient_tls_key_file = " + t.server_key + "\n";
    Proxy p("pool-tls-relay", o);
    auto warm = [&](const std::string& db) {
        const std::string series = "pgwicket_pool_connections{pool=\"" + db + "/postgres/postgres\",state=\"warm\"}";
        return metric(run({"curl", "-sS", "--max-time", "10", metrics_url(p)}).out, series);
    };
    auto tls_client = [&](const std::string& app) {
        Conn c = connect_ok(p.conninfo("pooled", "postgres", "application_name=" + app + " sslmode=require"));
        BOOST_REQUIRE_EQUAL(PQsslInUse(c.get()), 1);
        return c;
    };
    // Two warm connections of "pooled", opened by a TLS client and a plaintext one at once.
    std::string pid1, pid2;
    {
        Conn c1 = tls_client("one");
        Conn c2 = connect_app(p, "pooled", "two");
        pid1 = pid_of(c1.get());
        pid2 = pid_of(c2.get());
    }
    BOOST_REQUIRE_MESSAGE(wait_for([&] { return warm("pooled") == 2; }), p.log_tail());
    // A client of another route takes one of them over (its worker connects anew), and
    // becomes the host's guess.
    {
        Conn c3 = connect_app(p, "pooledtls", "three");
        BOOST_CHECK_EQUAL(scalar(c3.get(), "SELECT 1"), "1");
    }
    BOOST_REQUIRE_MESSAGE(wait_for([&] { return warm("pooledtls") == 1 && warm("pooled") == 1; }), p.log_tail());
    const std::string kept = backend_alive(pid1) ? pid1 : pid2;
    BOOST_REQUIRE(backend_alive(kept));
    const std::string other_route = direct_scalar(
        "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'pgwicket %three' AND backend_type = 'client backend'");
    // The TLS client lands on the worker warm on "pooledtls", which relays it.
    {
        Conn c4 = tls_client("four");
        BOOST_CHECK_MESSAGE(pid_of(c4.get()) == kept, "not the warm backend\n" << p.log_tail());
        BOOST_CHECK_EQUAL(scalar(c4.get(), "SELECT current_setting('application_name') LIKE '%four'"), "t");
        BOOST_REQUIRE(PQsendQuery(c4.get(), "SELECT pg_sleep(30)"));
        BOOST_REQUIRE(wait_for([&] {
            return direct_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = " + kept +
                                 " AND state = 'active' AND query = 'SELECT pg_sleep(30)'") == "1";
        }));
        char err[256];
        PGcancel* key = PQgetCancel(c4.get());
        BOOST_REQUIRE(PQcancel(key, err, sizeof err));
        PQfreeCancel(key);
        Result r(PQgetResult(c4.get()));
        const char* state = PQresultErrorField(r.get(), PG_DIAG_SQLSTATE);
        BOOST_CHECK_EQUAL(std::string(state ? state : ""), "57014");
        while (Result more{PQgetResult(c4.get())})
            ;
        BOOST_CHECK_EQUAL(scalar(c4.get(), "SELECT 2"), "2");
    }
    // (A pool with no connection left is not listed: -1.)
    BOOST_CHECK_MESSAGE(wait_for([&] { return warm("pooled") == 1 && warm("pooledtls") <= 0; }),
                        "warm: " << warm("pooled") << " " << warm("pooledtls") << "\n"
                                 << run({"curl", "-sS", "--max-time", "10", metrics_url(p)}).out);
    if (!other_route.empty())
        BOOST_CHECK_MESSAGE(wait_for([&] { return !backend_alive(other_route); }),
                            "the relaying worker kept its own connection");
    BOOST_CHECK_MESSAGE(p.log_tail().find("relaying for this TLS client") != std::string::npos, p.log_tail());
    check_clean_stop(p);
}

// New connections go straight to a warm worker of the route last used. One that turns out
// to be for the console, an unpooled entry or another pooled route is served correctly,
// and the warm worker's connection is either kept (console) or closed, never leaked.
BOOST_AUTO_TEST_CASE(a_warm_worker_given_another_kind_of_client)
{
    // A client that waits for the pool fails this test in 20 s rather than 120.
    ProxyOptions o = pooled_options("pool_size=1", "query_wait_timeout = 20\n");
    o.extra_databases += "otherpool = host=127.0.0.1 port=" + std::to_string(env().pg_port) +
                         " dbname=postgres user=alice pool_mode=session pool_size=1\n";
    // Its own prefix: backends other tests left (a query ending on its own) do not count.
    o.extra_settings += "application_name_prefix = pgw-other\n";
    Proxy p("pool-other-clients", o);
    std::string pid;
    {
        Conn a = connect_app(p, "pooled", "first");
        pid = pid_of(a.get());
    }
    BOOST_CHECK_MESSAGE(wait_for([&] { return pool_gauges(p) == "1 0 0 1"; }), pool_gauges(p));
    // The console, which the supervisor's guess gives the warm worker of this host's pool:
    // passed on to a spare, so while it stays open the connection is still warm and the
    // pool's next client gets it.
    {
        Conn console = connect_ok(p.conninfo("pgwicket", "postgres"));
        BOOST_CHECK_EQUAL(scalar(console.get(), "SHOW POOLS").empty(), false);
        BOOST_CHECK_MESSAGE(wait_for([&] { return pool_gauges(p) == "1 0 0 1"; }),
                            "the console holds the pooled connection: " << pool_gauges(p));
        Conn b = connect_app(p, "pooled", "second");
        BOOST_CHECK_EQUAL(pid_of(b.get()), pid);
        BOOST_CHECK_EQUAL(scalar(console.get(), "SHOW POOLS").empty(), false);
    }
    // The same over the Unix socket (its own guess, "[local]"): the spare the console is
    // passed on to knows it for a local connection.
    {
        const std::string local = "host=" + p.unix_dir() + " port=" + std::to_string(p.port()) + " user=postgres ";
        connect_ok(local + "dbname=pooled application_name=local").reset();
        BOOST_CHECK_MESSAGE(wait_for([&] { return pool_gauges(p) == "1 0 0 1"; }), pool_gauges(p));
        Conn console = connect_ok(local + "dbname=pgwicket");
        BOOST_CHECK_EQUAL(scalar(console.get(), "SHOW POOLS").empty(), false);
        Result r(PQexec(console.get(), "SHOW SESSIONS"));
        BOOST_REQUIRE_EQUAL(PQresultStatus(r.get()), PGRES_TUPLES_OK);
        bool local_console = false;
        for (int i = 0; i < PQntuples(r.get()); ++i)
            local_console |= std::string(PQgetvalue(r.get(), i, PQfnumber(r.get(), "database"))) == "pgwicket" &&
                             std::string(PQgetvalue(r.get(), i, PQfnumber(r.get(), "client_addr"))) == "[local]";
        BOOST_CHECK_MESSAGE(local_console, "no console session from [local] in SHOW SESSIONS");
        BOOST_CHECK_MESSAGE(wait_for([&] { return pool_gauges(p) == "1 0 0 1"; }),
                            "the console holds the pooled connection: " << pool_gauges(p));
    }
    // An unpooled entry: its own connection, closed at its end; the pooled one stays warm.
    std::string unpooled_pid;
    {
        Conn d = connect_app(p, "postgres", "unpooled");
        unpooled_pid = pid_of(d.get());
        BOOST_CHECK_NE(unpooled_pid, pid);
    }
    BOOST_CHECK_MESSAGE(wait_for([&] { return !backend_alive(unpooled_pid); }), "the unpooled backend lives on");
    {
        Conn c = connect_app(p, "pooled", "after-unpooled");
        BOOST_CHECK_EQUAL(pid_of(c.get()), pid);
    }
    // Another pooled route: its client gets a connection of its own route.
    {
        Conn c = connect_ok(p.conninfo("otherpool", "postgres", "application_name=other"));
        BOOST_CHECK_EQUAL(scalar(c.get(), "SELECT current_user"), "alice");
        BOOST_CHECK_NE(pid_of(c.get()), pid);
    }
    // Every pooled client still works, and no backend of the pool was left behind: each
    // backend of application pgwicket is one SHOW POOLS counts.
    {
        Conn e = connect_app(p, "pooled", "third");
        BOOST_CHECK_EQUAL(scalar(e.get(), "SELECT 1"), "1");
    }
    BOOST_CHECK_MESSAGE(wait_for([&] {
                            const long backends = std::stol(direct_scalar(
                                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgw-other %'"));
                            Conn console = connect_ok(p.conninfo("pgwicket", "postgres"));
                            Result r(PQexec(console.get(), "SHOW POOLS"));
                            long open = 0;
                            for (int i = 0; i < PQntuples(r.get()); ++i)
                                open += std::stol(PQgetvalue(r.get(), i, 1)) + std::stol(PQgetvalue(r.get(), i, 2));
                            return backends == open;
                        }),
                        "pooled backends and SHOW POOLS disagree\n"
                            << direct_scalar("SELECT string_agg(pid || ' ' || application_name || ' ' || state, '; ') "
                                             "FROM pg_stat_activity WHERE application_name LIKE 'pgw-other %'")
                            << "\n"
                            << psql(p.conninfo("pgwicket", "postgres"), "SHOW POOLS;\nSHOW SERVERS;\n").out
                            << p.log_tail());
    check_clean_stop(p);
}

std::string text_of(const std::vector<std::map<std::string, std::string>>& rows)
{
    std::string out;
    for (const auto& row : rows) {
        for (const auto& [k, v] : row)
            out += k + "=" + v + " ";
        out += "\n";
    }
    return out;
}


BOOST_AUTO_TEST_CASE(show_servers_and_pool_gauges_follow_a_connection)
{
    // sslmode=disable: the "pooled" entry's connection is plaintext (libpq would prefer TLS),
    // "pooledtls" requires it, so the tls column must tell them apart.
    Proxy p("pool-servers", pooled_options("pool_size=1 sslmode=disable"));
    std::string backend, worker;
    {
        Conn a = connect_app(p, "pooled", "watched");
        backend = pid_of(a.get());
        auto rows = server_rows(p);
        BOOST_REQUIRE_MESSAGE(rows.size() == 1, text_of(rows));
        auto& r = rows[0];
        BOOST_CHECK_EQUAL(r["pool"], "pooled/postgres/postgres");
        BOOST_CHECK_EQUAL(r["state"], "active");
        BOOST_CHECK_EQUAL(r["backend_pid"], backend);
        BOOST_CHECK_EQUAL(r["idle_s"], "0");
        BOOST_CHECK_EQUAL(r["sessions"], "1");
        BOOST_CHECK_EQUAL(r["tls"], "f");
        BOOST_CHECK_EQUAL(direct_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = " + backend), "f");
        worker = r["worker_pid"];
        const auto children = children_of(p.pid());
        BOOST_CHECK_MESSAGE(std::find(children.begin(), children.end(), pid_t(std::stol(worker))) != children.end(),
                            "worker_pid " << worker << " is not a child of the proxy");
        // The worker that holds the upstream is the one serving this client.
        BOOST_CHECK_EQUAL(std::to_string(worker_serving(PQsocket(a.get()), p.port(), p.pid())), worker);
    }
    // The worker resets the connection and goes warm after its client has gone.
    std::vector<std::map<std::string, std::string>> rows;
    BOOST_CHECK_MESSAGE(wait_for([&] {
                            rows = server_rows(p);
                            return rows.size() == 1 && rows[0]["state"] == "warm";
                        }),
                        "SHOW SERVERS:\n" << text_of(rows));
    BOOST_REQUIRE_EQUAL(rows.size(), 1u);
    BOOST_CHECK_EQUAL(rows[0]["backend_pid"], backend);
    BOOST_CHECK_EQUAL(rows[0]["worker_pid"], worker);
    BOOST_CHECK_EQUAL(rows[0]["sessions"], "1");

    const std::string url = metrics_url(p);
    const std::string pool = "pool=\"pooled/postgres/postgres\"";
    std::string body;
    BOOST_CHECK_MESSAGE(wait_for([&] {
                            body = http_get(url).out;
                            return metric(body, "pgwicket_pool_connections{" + pool + ",state=\"warm\"}") == 1;
                        }),
                        excerpt(body));
    BOOST_CHECK_EQUAL(metric(body, "pgwicket_pool_connections{" + pool + ",state=\"active\"}"), 0);
    BOOST_CHECK_EQUAL(metric(body, "pgwicket_pool_waiting_clients{" + pool + "}"), 0);
    BOOST_CHECK_EQUAL(metric(body, "pgwicket_pool_longest_wait_seconds{" + pool + "}"), 0);
    BOOST_CHECK_EQUAL(metric(body, "pgwicket_pool_size{" + pool + "}"), 1);

    // The next client gets the warm connection: the same row, active, its second session.
    {
        Conn b = connect_app(p, "pooled", "second");
        BOOST_REQUIRE_EQUAL(pid_of(b.get()), backend);
        rows = server_rows(p);
        BOOST_REQUIRE_MESSAGE(rows.size() == 1, text_of(rows));
        BOOST_CHECK_EQUAL(rows[0]["state"], "active");
        BOOST_CHECK_EQUAL(rows[0]["sessions"], "2");
        BOOST_CHECK_EQUAL(rows[0]["idle_s"], "0");
        BOOST_CHECK_MESSAGE(wait_for([&] {
                                body = http_get(url).out;
                                return metric(body, "pgwicket_pool_connections{" + pool + ",state=\"active\"}") == 1 &&
                                       metric(body, "pgwicket_pool_connections{" + pool + ",state=\"warm\"}") == 0;
                            }),
                            excerpt(body));
        // A TLS upstream says so.
        Conn c = connect_app(p, "pooledtls", "tls");
        bool tls = false;
        for (auto& r : server_rows(p))
            tls = tls || (r["pool"] == "pooledtls/postgres/postgres" && r["tls"] == "t" && r["state"] == "active" &&
                          r["backend_pid"] == pid_of(c.get()));
        BOOST_CHECK_MESSAGE(tls, "SHOW SERVERS:\n" << text_of(server_rows(p)));
    }
    check_clean_stop(p);
}

// A reload that leaves a route as it was keeps its warm connection: the warm worker
// takes the new configuration (a change of log_statements shows in its next session).
// One that changes the route's entry retires it, with a Terminate; a stop closes the
// connection too.
BOOST_AUTO_TEST_CASE(reload_keeps_unchanged_routes_warm_and_stop_closes_them)
{
    Proxy p("pool-reload", pooled_options());
    const std::string pid = warm_backend(p, "pooled", "before-reload", "1 0 0 1");
    // Another [pgwicket] setting, same [databases].
    const std::string ini = read_file(p.config_path());
    const size_t databases = ini.find("[databases]");
    BOOST_REQUIRE(databases != std::string::npos);
    write_file(p.config_path(), ini.substr(0, databases) + "log_statements = 1\n" + ini.substr(databases));
    size_t from = p.log_size();
    BOOST_REQUIRE(::kill(p.pid(), SIGHUP) == 0);
    auto logged = [&](const std::string& text) { return read_file(p.log_path()).find(text, from) != std::string::npos; };
    BOOST_REQUIRE_MESSAGE(wait_for([&] { return logged("took the reloaded configuration"); }), p.log_tail());
    BOOST_REQUIRE_MESSAGE(wait_for([&] { return pool_gauges(p) == "1 0 0 1"; }), "metrics: " << pool_gauges(p));
    {
        Conn b = connect_app(p, "pooled", "after-reload");
        BOOST_CHECK_EQUAL(pid_of(b.get()), pid);
        PQclear(PQexec(b.get(), "SELECT g FROM generate_series(1, 7) g"));
    }
    BOOST_CHECK_MESSAGE(wait_for([&] { return logged("statement: SELECT 7, 7 rows"); }),
                        "the kept worker does not log statements: " << p.log_tail());
    BOOST_REQUIRE(wait_for([&] { return pool_gauges(p) == "1 0 0 1"; }));

    // The pooled entry changes: its warm connection goes.
    add_to_pooled_entry(p, "connect_timeout=7");
    from = p.log_size();
    BOOST_REQUIRE(::kill(p.pid(), SIGHUP) == 0);
    BOOST_CHECK_MESSAGE(wait_for([&] { return !backend_alive(pid); }), "a reload left the changed route's connection open");
    BOOST_CHECK_MESSAGE(logged("pooled connection not kept after the reload: its route's settings changed"),
                        p.log_tail());
    std::string after;
    {
        Conn c = connect_app(p, "pooled", "after-change");
        after = pid_of(c.get());
        BOOST_CHECK_NE(after, pid);
    }
    BOOST_REQUIRE(wait_for([&] { return pool_gauges(p) == "1 0 0 1"; }));
    check_clean_stop(p);
    BOOST_CHECK_MESSAGE(wait_for([&] { return !backend_alive(after); }), "a stop left the warm connection open");
}

// PostgreSQL restarts while a connection is warm: the next client gets a working session
// on a new backend (the warm worker sees its connection closed, or finds it so at reuse).
BOOST_AUTO_TEST_CASE(a_server_restart_under_warm_connections)
{
    Proxy p("pool-restart", pooled_options("pool_size=2"));
    const std::string pid = warm_backend(p, "pooled", "before-restart", "1 0 0 2");
    auto restart = run(as_server_user({env().bin("pg_ctl"), "-D", env().datadir, "-l", env().pg_log, "-m", "fast",
                                       "-w", "-t", "60", "restart"}));
    BOOST_REQUIRE_MESSAGE(restart.ok(), restart.status() << "\n" << excerpt(restart.out));
    Conn b = connect_app(p, "pooled", "after-restart");
    BOOST_CHECK_NE(pid_of(b.get()), pid);
    BOOST_CHECK_EQUAL(scalar(b.get(), "SELECT 6 * 7"), "42");
    b.reset();
    check_clean_stop(p);
}

// Two people on one pooled backend, one after the other: the audit trail, SHOW SESSIONS
// and the upstream application_name name whoever uses it now.
BOOST_AUTO_TEST_CASE(audit_and_sessions_name_who_uses_the_connection_now)
{
    const std::string audit = env().tmpdir + "/pool-audit.jsonl";
    Proxy p("pool-audit", pooled_options("pool_size=1", "audit_file = " + audit + "\naudit_statement_text = full\n"));
    std::string pid;
    {
        Conn a = connect_ok(p.conninfo("pooled", "alice", "application_name=alice-app"));
        pid = pid_of(a.get());
        BOOST_CHECK_EQUAL(scalar(a.get(), "SELECT 'alice-statement'"), "alice-statement");
    }
    BOOST_REQUIRE(wait_for([&] { return pool_gauges(p) == "1 0 0 1"; }));
    Conn b = connect_ok(p.conninfo("pooled", "bob", "application_name=bob-app"));
    BOOST_REQUIRE_EQUAL(pid_of(b.get()), pid);
    BOOST_CHECK_EQUAL(scalar(b.get(), "SELECT 'bob-statement'"), "bob-statement");
    const std::string app = direct_scalar("SELECT application_name FROM pg_stat_activity WHERE pid = " + pid);
    BOOST_CHECK_MESSAGE(contains(app, "bob-app") && !contains(app, "alice"), app);
    {
        Conn console = connect_ok(p.conninfo("pgwicket", "postgres"));
        Result r(PQexec(console.get(), "SHOW SESSIONS"));
        const int user_col = PQfnumber(r.get(), "user"), pid_col = PQfnumber(r.get(), "backend_pid");
        BOOST_REQUIRE(user_col >= 0 && pid_col >= 0);
        std::string on_backend;
        for (int i = 0; i < PQntuples(r.get()); ++i)
            if (PQgetvalue(r.get(), i, pid_col) == pid)
                on_backend += std::string(PQgetvalue(r.get(), i, user_col)) + " ";
        BOOST_CHECK_EQUAL(on_backend, "bob ");
    }
    b.reset();
    BOOST_REQUIRE(wait_for([&] { return pool_gauges(p) == "1 0 0 1"; }));
    check_clean_stop(p);
    std::map<std::string, std::string> session_of;  // user -> session id
    bool alice_ran = false, bob_ran = false;
    int starts = 0, end_count = 0;
    for (const auto& r : read_audit(audit).records) {
        const std::string user = text(r, "user"), event = text(r, "event"), session = text(r, "session");
        if (user != "alice" && user != "bob")
            continue;
        if (session_of.count(user))
            BOOST_CHECK_EQUAL(session_of[user], session);
        session_of[user] = session;
        starts += event == "session_start";
        end_count += event == "session_end";
        const std::string stmt = text(r, "statement");
        alice_ran = alice_ran || (user == "alice" && contains(stmt, "alice-statement"));
        bob_ran = bob_ran || (user == "bob" && contains(stmt, "bob-statement"));
        BOOST_CHECK_MESSAGE(!(user == "alice" && contains(stmt, "bob")) && !(user == "bob" && contains(stmt, "alice")),
                            r.dump());
    }
    BOOST_CHECK(alice_ran && bob_ran);
    BOOST_CHECK_EQUAL(starts, 2);
    BOOST_CHECK_EQUAL(end_count, 2);
    BOOST_CHECK(session_of["alice"] != session_of["bob"]);
}

// min_pool_size opens the entry's own route (clients that log in as its upstream user and
// send nothing that changes the upstream settings) at start, before any client; a reload
// that leaves the route as it was keeps those connections; a client gets one of them, and
// a client whose settings make another route has that route kept at its minimum too.
BOOST_AUTO_TEST_CASE(min_pool_size_keeps_connections_ready)
{
    Proxy p("pool-min", pooled_options("pool_size=3 min_pool_size=2", "application_name_prefix = pgw-min\n"));
    BOOST_REQUIRE_MESSAGE(wait_for([&] { return pool_gauges(p) == "2 0 0 3"; }), "metrics: " << pool_gauges(p));
    // No client has come yet, so the console is not guessed onto a warm worker.
    auto servers = [&] {
        std::set<std::string> pids;
        for (auto& row : server_rows(p))
            if (row["pool"] == "pooled/postgres/postgres")
                pids.insert(row["backend_pid"]);
        return pids;
    };
    const auto at_start = servers();
    BOOST_REQUIRE_EQUAL(at_start.size(), 2u);
    for (const auto& pid : at_start)
        BOOST_CHECK_MESSAGE(backend_alive(pid), "backend " << pid << " of SHOW SERVERS is not there");
    // A reload that changes nothing of the route keeps them.
    const size_t before_reload = p.log_size();
    BOOST_REQUIRE(::kill(p.pid(), SIGHUP) == 0);
    auto kept = [&] {
        const std::string log = read_file(p.log_path());
        size_t n = 0;
        for (size_t at = log.find("took the reloaded configuration", before_reload); at != std::string::npos;
             at = log.find("took the reloaded configuration", at + 1))
            ++n;
        return n;
    };
    BOOST_CHECK_MESSAGE(wait_for([&] { return kept() == 2; }), p.log_tail());
    BOOST_REQUIRE_MESSAGE(wait_for([&] { return pool_gauges(p) == "2 0 0 3"; }), "metrics: " << pool_gauges(p));
    const auto after_reload = servers();
    BOOST_CHECK(after_reload == at_start);
    // A client gets one of them.
    {
        Conn c = connect_app(p, "pooled", "after");
        const std::string pid = pid_of(c.get());
        BOOST_CHECK_MESSAGE(after_reload.count(pid), "backend " << pid << " is not one kept ready");
    }
    // A reload that changes the entry: those connections go, and the minimum is opened
    // again for the entry's new route.
    add_to_pooled_entry(p, "connect_timeout=9");
    BOOST_REQUIRE(::kill(p.pid(), SIGHUP) == 0);
    BOOST_CHECK_MESSAGE(wait_for([&] { return std::none_of(after_reload.begin(), after_reload.end(), backend_alive); }),
                        "a reload that changed the route kept its connections");
    BOOST_REQUIRE_MESSAGE(wait_for([&] { return pool_gauges(p) == "2 0 0 3"; }), "metrics: " << pool_gauges(p));
    const auto after_change = servers();
    BOOST_CHECK_EQUAL(after_change.size(), 2u);
    for (const auto& pid : after_change)
        BOOST_CHECK(!after_reload.count(pid));
    // Another route of the same entry (a startup setting the first does not have): kept at
    // its minimum once a client has used it. Its backends carry that client's
    // application_name: its own, and the one a prefill opens from its session context.
    {
        Conn c = connect_ok(p.conninfo("pooled", "postgres", "application_name=second options='-c work_mem=8MB'"));
        BOOST_CHECK_EQUAL(scalar(c.get(), "SHOW work_mem"), "8MB");
    }
    auto second_route = [] {
        return std::stol(direct_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgw-min % second'"));
    };
    BOOST_CHECK_MESSAGE(wait_for([&] { return second_route() == 2; }), "backends: " << second_route());
    check_clean_stop(p);
}

// Startup parameters must not change what pgwicket's own statements on a pooled
// connection do (PgBouncer once ran its auth query under a client's search_path): a
// schema whose functions and operator shadow pg_catalog's, put first in search_path
// by a startup parameter, by options=-c and by SET, with default_transaction_read_only
// and role in the startup packet too. Between two clients of a route pgwicket runs
// server_reset_query, server_check_query and SET application_name; the second client,
// on the same backend, finds that none of them called a shadowing function, and that the
// reset worked under a read-only default. The application_name, quotes and all, arrives
// as a value, not as SQL.
BOOST_AUTO_TEST_CASE(startup_parameters_never_reach_pgwickets_own_statements)
{
    const std::string fn = "pg_catalog.set_config('pgw.hostile', 'called', false)";
    direct_exec("DROP SCHEMA IF EXISTS pgw_hostile CASCADE; CREATE SCHEMA pgw_hostile;"
                "GRANT USAGE ON SCHEMA pgw_hostile TO PUBLIC;"
                "CREATE FUNCTION pgw_hostile.set_config(text, text, boolean) RETURNS text LANGUAGE sql AS "
                "$$ SELECT " + fn + "; SELECT pg_catalog.set_config($1, $2, $3) $$;"
                "CREATE FUNCTION pgw_hostile.current_setting(text) RETURNS text LANGUAGE sql AS "
                "$$ SELECT " + fn + "; SELECT pg_catalog.current_setting($1) $$;"
                "CREATE FUNCTION pgw_hostile.now() RETURNS timestamptz LANGUAGE sql AS "
                "$$ SELECT " + fn + "; SELECT pg_catalog.now() $$;"
                "CREATE FUNCTION pgw_hostile.version() RETURNS text LANGUAGE sql AS "
                "$$ SELECT " + fn + "; SELECT pg_catalog.version() $$;"
                "CREATE FUNCTION pgw_hostile.quote_literal(text) RETURNS text LANGUAGE sql AS "
                "$$ SELECT " + fn + "; SELECT pg_catalog.quote_literal($1) $$;"
                "CREATE FUNCTION pgw_hostile.int4eq(int, int) RETURNS boolean LANGUAGE sql AS "
                "$$ SELECT " + fn + "; SELECT $1 OPERATOR(pg_catalog.=) $2 $$;"
                "CREATE OPERATOR pgw_hostile.= (LEFTARG = int, RIGHTARG = int, FUNCTION = pgw_hostile.int4eq)");
    const std::string path = "pgw_hostile, pg_catalog, public";
    // A session by hand: the startup packet exactly as given, then simple queries.
    struct Raw {
        RawSocket s;
        std::string failed;
        Raw(int port, std::vector<std::pair<std::string, std::string>> params) : s(port)
        {
            s.send(startup_packet(params));
            auto g = s.read_until_ready(15000);
            if (g.empty() || g.back().type != 'Z')
                failed = g.empty() ? "no greeting" : "greeting ended with " + fields_text(error_fields(g.back().payload));
        }
        std::string value(const std::string& sql)
        {
            s.send(query_message(sql));
            std::string v = "<no row>";
            for (const auto& m : s.read_until_ready(15000)) {
                if (m.type == 'E')
                    return "<error " + fields_text(error_fields(m.payload)) + ">";
                if (m.type == 'D' && v == "<no row>")
                    v = get32(m.payload, 2) == 0xffffffffu ? "<null>" : m.payload.substr(6, get32(m.payload, 2));
            }
            // The ReadyForQuery's status must be idle for the connection to be pooled.
            return v;
        }
        ~Raw() { s.send(terminate_message()); }
    };
    using Params = std::vector<std::pair<std::string, std::string>>;
    const std::string app = "it's a \\'; SELECT pg_sleep(1); --";
    struct Variant {
        const char* name;
        Params params;
        const char* read_only;  // SHOW default_transaction_read_only in the session
    };
    const Variant variants[] = {
        {"search_path as a startup parameter", {{"search_path", path}}, "off"},
        {"search_path in options", {{"options", "-c search_path=pgw_hostile,pg_catalog,public"}}, "off"},
        {"read-only by default, with search_path", {{"default_transaction_read_only", "on"}, {"search_path", path}}, "on"},
        {"read-only and a role in options",
         {{"options", "-c default_transaction_read_only=on -c role=alice -c search_path=pgw_hostile,pg_catalog"}}, "on"},
    };
    Proxy p("pool-hostile-path", pooled_options("pool_size=1", "server_check_query = SELECT 1 = 1\n"));
    for (const Variant& v : variants) {
        BOOST_TEST_CONTEXT(v.name)
        {
            Params params = {{"user", "postgres"}, {"database", "pooled"}, {"application_name", "first"}};
            params.insert(params.end(), v.params.begin(), v.params.end());
            std::string pid;
            {
                Raw a(p.port(), params);
                BOOST_TEST_REQUIRE(a.failed.empty(), a.failed);
                pid = a.value("SELECT pg_catalog.pg_backend_pid()");
                // The shadowing is real: the session's own unqualified calls find it.
                a.value("SET search_path = " + path);
                BOOST_TEST(a.value("SELECT now() IS NOT NULL") == "t");
                BOOST_TEST(a.value("SELECT pg_catalog.current_setting('pgw.hostile', true)") == "called");
                BOOST_TEST(a.value("SHOW default_transaction_read_only") == v.read_only);
            }
            params[2].second = app;
            Raw b(p.port(), params);
            BOOST_TEST_REQUIRE(b.failed.empty(), b.failed);
            BOOST_TEST(b.value("SELECT pg_catalog.pg_backend_pid()") == pid,
                       "the backend was not reused (did the reset fail?)\n" << p.log_tail());
            BOOST_TEST(b.value("SELECT COALESCE(pg_catalog.current_setting('pgw.hostile', true), '')") == "",
                       "a statement of pgwicket's called a function of the client's search_path");
            BOOST_TEST(b.value("SHOW default_transaction_read_only") == v.read_only);
            BOOST_TEST(contains(b.value("SHOW application_name"), app));
        }
    }
    BOOST_TEST(p.running());
    check_clean_stop(p);
    direct_exec("DROP SCHEMA pgw_hostile CASCADE");
}

BOOST_AUTO_TEST_SUITE_END()
