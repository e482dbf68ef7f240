// Multi-host entries against a real streaming-replication cluster (a primary and two
// standbys from pg_basebackup): sessions go to hosts of their role, stopped and
// lagging standbys are passed over, and a failover moves writes and ends the sessions
// bound to a host that changed role.
#include "cluster.hh"
#include "harness.hh"
#include "tls_fixtures.hh"

#include <boost/test/unit_test.hpp>

#include <signal.h>

#include <map>
#include <set>
#include <string>

using namespace pgw::it;

namespace {

// Entries over every node of the cluster, one per target_session_attrs of interest.
ProxyOptions replica_options(const ReplicaCluster& c, const std::string& extra_keys = "")
{
    const std::string hosts = "host=" + c.hosts() + " port=" + c.ports() + " dbname=postgres user=postgres ";
    ProxyOptions o;
    o.extra_databases = "rw = " + hosts + "target_session_attrs=primary " + extra_keys + "\n" +
                        "ro = " + hosts + "target_session_attrs=standby " + extra_keys + "\n" +
                        "pref = " + hosts + "target_session_attrs=prefer-standby " + extra_keys + "\n" +
                        "pooledro = " + hosts + "target_session_attrs=standby pool_mode=session pool_size=2 " +
                        extra_keys + "\n" + "least = " + hosts +
                        "target_session_attrs=standby load_balance=least-connections " + extra_keys + "\n";
    o.extra_settings = "server_check_period = 1\nban_time = 2\nadmin_users = postgres\n";
    return o;
}

// The port of the server a new session through `p` to `db` lands on ("" and the error
// when it is refused).
std::string port_of(Proxy& p, const std::string& db, std::string* error = nullptr)
{
    Conn c = connect(p.conninfo(db));
    if (PQstatus(c.get()) != CONNECTION_OK) {
        if (error)
            *error = PQerrorMessage(c.get());
        return "";
    }
    return scalar(c.get(), "SELECT inet_server_port()");
}

// The ports that `n` new sessions to `db` land on.
std::set<std::string> ports_of(Proxy& p, const std::string& db, int n)
{
    std::set<std::string> seen;
    for (int i = 0; i < n; ++i)
        seen.insert(port_of(p, db));
    return seen;
}

// SHOW HOSTS as port -> column -> value.
std::map<std::string, std::map<std::string, std::string>> hosts(Proxy& p)
{
    std::map<std::string, std::map<std::string, std::string>> out;
    Conn console = connect_ok(p.conninfo("pgwicket", "postgres"));
    Result r(PQexec(console.get(), "SHOW HOSTS"));
    for (int i = 0; i < PQntuples(r.get()); ++i)
        for (int f = 0; f < PQnfields(r.get()); ++f)
            out[PQgetvalue(r.get(), i, 1)][PQfname(r.get(), f)] = PQgetvalue(r.get(), i, f);
    return out;
}

std::string port_str(const ReplicaCluster& c, int node) { return std::to_string(c.port(node)); }

} // namespace

BOOST_AUTO_TEST_SUITE(replicas)

BOOST_AUTO_TEST_CASE(sessions_go_to_hosts_of_their_role_and_skip_stopped_ones)
{
    ReplicaCluster c("routing", 2);
    Proxy p("replicas-routing", replica_options(c));
    const std::string primary = port_str(c, 0), s1 = port_str(c, 1), s2 = port_str(c, 2);
    BOOST_REQUIRE_MESSAGE(wait_for([&] {
                              auto h = hosts(p);
                              return h[primary]["role"] == "primary" && h[s1]["role"] == "standby" &&
                                     h[s2]["role"] == "standby";
                          }),
                          p.log_tail());
    // Writes to the primary; reads spread over both standbys (round-robin).
    BOOST_CHECK(ports_of(p, "rw", 4) == std::set<std::string>{primary});
    BOOST_CHECK((ports_of(p, "ro", 6) == std::set<std::string>{s1, s2}));
    BOOST_CHECK(ports_of(p, "pref", 4).count(primary) == 0);
    {
        Conn w = connect_ok(p.conninfo("rw"));
        BOOST_CHECK_EQUAL(scalar(w.get(), "SELECT pg_is_in_recovery()"), "f");
        BOOST_CHECK_EQUAL(scalar(w.get(), "CREATE TABLE IF NOT EXISTS routed(i int); INSERT INTO routed VALUES (1); "
                                          "SELECT count(*) > 0 FROM routed"),
                          "t");
    }
    // A pooled entry of several hosts: a pool per host (pool_size=2 each), and backends are
    // reused: eight sessions, one at a time, use at most the two pools' four.
    std::set<std::string> backends;
    for (int i = 0; i < 8; ++i) {
        Conn a = connect_ok(p.conninfo("pooledro"));
        BOOST_CHECK_EQUAL(scalar(a.get(), "SELECT pg_is_in_recovery()"), "t");
        backends.insert(scalar(a.get(), "SELECT inet_server_port() || '/' || pg_backend_pid()"));
    }
    BOOST_CHECK_MESSAGE(backends.size() <= 4u, "8 pooled sessions used " << backends.size() << " backends");

    // least-connections: a new session goes to the standby with fewer sessions now
    // (held ones: a session that has just ended may not be counted out yet).
    BOOST_REQUIRE_MESSAGE(wait_for([&] {
                              auto h = hosts(p);
                              return h[s1]["sessions"] == "0" && h[s2]["sessions"] == "0";
                          }),
                          "sessions of earlier connections are still counted");
    {
        std::vector<Conn> held;
        std::vector<std::string> on;
        for (int i = 0; i < 4; ++i) {
            held.push_back(connect_ok(p.conninfo("least")));
            on.push_back(scalar(held.back().get(), "SELECT inet_server_port()"));
        }
        BOOST_CHECK_NE(on[0], on[1]);
        BOOST_CHECK_NE(on[2], on[3]);
        auto h = hosts(p);
        BOOST_CHECK_EQUAL(h[s1]["sessions"], "2");
        BOOST_CHECK_EQUAL(h[s2]["sessions"], "2");
    }

    // A standby stops: within a check period, no session goes to it.
    c.stop(1);
    BOOST_CHECK_MESSAGE(wait_for([&] { return hosts(p)[s1]["state"] == "down"; }), p.log_tail());
    BOOST_CHECK(ports_of(p, "ro", 4) == std::set<std::string>{s2});
    // Both stop: standby sessions are refused, saying why; prefer-standby ones get the primary.
    c.stop(2);
    BOOST_CHECK_MESSAGE(wait_for([&] { return hosts(p)[s2]["state"] == "down"; }), p.log_tail());
    std::string error;
    BOOST_CHECK_EQUAL(port_of(p, "ro", &error), "");
    BOOST_CHECK_MESSAGE(error.find("no standby of its 3 hosts is usable") != std::string::npos &&
                            error.find("2 down") != std::string::npos,
                        error);
    BOOST_CHECK_EQUAL(port_of(p, "pref"), primary);
    // SHOW HOSTS says why, without libpq's "connection to server at ..." preamble.
    BOOST_CHECK_MESSAGE(wait_for([&] { return hosts(p)[s2]["last_error"].rfind("Connection refused", 0) == 0; }),
                        hosts(p)[s2]["last_error"]);
    // Back: used again.
    c.start(1);
    c.start(2);
    BOOST_CHECK_MESSAGE(wait_for([&] { return ports_of(p, "ro", 6) == std::set<std::string>{s1, s2}; }, 30000),
                        p.log_tail());
    check_clean_stop(p);
}

// Hosts reached through TLS (sslmode=verify-full) are checked through TLS too, and read
// routing's standby connection is TLS like the session's own; an entry whose CA does not
// verify the hosts' certificates gets a client error saying so (last: its failure bans the
// host for ban_time).
BOOST_AUTO_TEST_CASE(tls_hosts_are_checked_and_routed_through_tls)
{
    const TlsFiles& tls = tls_files();
    ReplicaCluster c("tls-hosts", 1,
                     "ssl = on\nssl_cert_file = '" + tls.server_cert + "'\nssl_key_file = '" + tls.server_key + "'\n");
    const std::string all = "host=" + c.hosts() + " port=" + c.ports() + " dbname=postgres user=postgres ";
    ProxyOptions o;
    // Long lines go on indented continuation lines.
    const std::string verify = "\n    sslmode=verify-full sslrootcert=";
    o.extra_databases = "tlsro = " + all + verify + tls.ca_cert + " target_session_attrs=standby\n" +
                        "tlsrouted = " + all + verify + tls.ca_cert + " read_routing=auto\n" + "wrongca = " + all +
                        verify + tls.other_ca_cert + " target_session_attrs=standby\n";
    o.extra_settings = "server_check_period = 1\nadmin_users = postgres\n";
    Proxy p("replicas-tls", o);
    const std::string primary = port_str(c, 0), standby = port_str(c, 1);
    BOOST_REQUIRE_MESSAGE(wait_for([&] {
                              auto h = hosts(p);
                              return h[primary]["role"] == "primary" && h[standby]["role"] == "standby";
                          }),
                          p.log_tail());
    // The checker's own connections to both hosts use TLS.
    for (int node : {0, 1})
        BOOST_CHECK_EQUAL(c.scalar(node, "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a "
                                         "USING (pid) WHERE a.application_name LIKE '%health check'"),
                          "t");
    const char* own_tls = "SELECT inet_server_port() || ' ' || ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    {
        Conn a = connect_ok(p.conninfo("tlsro"));
        BOOST_CHECK_EQUAL(scalar(a.get(), own_tls), standby + " true");
    }
    {
        Conn a = connect_ok(p.conninfo("tlsrouted"));
        BOOST_CHECK_EQUAL(scalar(a.get(), own_tls), standby + " true");
        // txid_current() is not read-only: the primary, over TLS as well.
        BOOST_CHECK_EQUAL(scalar(a.get(), std::string(own_tls) + " AND txid_current() > 0"), primary + " true");
    }
    // A certificate that does not verify: the client is told why.
    Conn bad = connect(p.conninfo("wrongca"));
    BOOST_CHECK_NE(PQstatus(bad.get()), CONNECTION_OK);
    BOOST_CHECK_MESSAGE(std::string(PQerrorMessage(bad.get())).find("certificate verify failed") != std::string::npos,
                        PQerrorMessage(bad.get()));
    // That was the entry's trust, not the standby's health: other entries still reach it.
    BOOST_CHECK_EQUAL(hosts(p)[standby]["banned_s"], "0");
    {
        Conn a = connect_ok(p.conninfo("tlsro"));
        BOOST_CHECK_EQUAL(scalar(a.get(), own_tls), standby + " true");
    }
    check_clean_stop(p);
}

BOOST_AUTO_TEST_CASE(a_standby_lagging_past_max_replica_lag_is_passed_over)
{
    ReplicaCluster c("lag", 2);
    Proxy p("replicas-lag", replica_options(c, "max_replica_lag=1MB"));
    const std::string s1 = port_str(c, 1), s2 = port_str(c, 2);
    BOOST_REQUIRE_MESSAGE(wait_for([&] {
                              auto h = hosts(p);
                              return h[s1]["role"] == "standby" && h[s2]["role"] == "standby";
                          }),
                          p.log_tail());
    BOOST_CHECK((ports_of(p, "ro", 4) == std::set<std::string>{s1, s2}));
    c.pause_replay(1);
    c.write_wal(8);
    // The other standby lags for a moment too while it replays those 8 MB (a lag is the
    // primary's position minus the standby's, from checks up to a period apart): wait
    // until the checker sees only the paused one behind.
    BOOST_CHECK_MESSAGE(wait_for([&] {
                            auto h = hosts(p);
                            return std::stol(h[s1]["lag_bytes"]) > 1024 * 1024 &&
                                   std::stol(h[s2]["lag_bytes"]) <= 1024 * 1024;
                        },
                                 30000),
                        "lag of the paused standby: " << hosts(p)[s1]["lag_bytes"]
                                                      << ", of the other: " << hosts(p)[s2]["lag_bytes"]);
    BOOST_CHECK(ports_of(p, "ro", 4) == std::set<std::string>{s2});
    c.resume_replay(1);
    c.wait_replayed(1);
    BOOST_CHECK_MESSAGE(wait_for([&] { return ports_of(p, "ro", 4) == std::set<std::string>{s1, s2}; }, 30000),
                        "lag: " << hosts(p)[s1]["lag_bytes"]);
    check_clean_stop(p);
}

// A pooled entry of several hosts whose first host does not take connections (stopped
// after the health checker saw it up, so only a session's own attempt finds out): each
// session gives that host's pool its place back and gets a connection of the next
// host's pool, both when it connects itself and when a warm worker takes its client.
// SHOW POOLS proves the places came back: with every client gone, no route has a
// connection counted active (each failed attempt was counted while it ran).
BOOST_AUTO_TEST_CASE(a_pooled_session_takes_the_next_host_when_its_host_refuses)
{
    ReplicaCluster c("pool-next-host", 1);
    const std::string primary = port_str(c, 0), standby = port_str(c, 1);
    ProxyOptions o;
    // In order, standby first; never banned, so every new worker's session tries it first.
    o.extra_databases = "pooled = host=127.0.0.1,127.0.0.1 port=" + standby + "," + primary +
                        " dbname=postgres user=postgres load_balance=in-order ban_time=0 pool_mode=session "
                        "pool_size=2\n";
    o.extra_settings = "server_check_period = 3600\nquery_wait_timeout = 3\nadmin_users = postgres\n";
    Proxy p("replicas-pool-next-host", o);
    BOOST_REQUIRE_MESSAGE(wait_for([&] {
                              auto h = hosts(p);
                              return h[primary]["state"] == "up" && h[standby]["state"] == "up";
                          }),
                          p.log_tail());
    c.stop(1);
    for (int round = 0; round < 2; ++round) {
        // Two at once: each new one starts in a spare, which tries the standby first.
        std::vector<Conn> held;
        for (int i = 0; i < 2; ++i) {
            Conn a = connect(p.conninfo("pooled"));
            BOOST_REQUIRE_MESSAGE(PQstatus(a.get()) == CONNECTION_OK,
                                  "session " << i << ": " << PQerrorMessage(a.get()) << p.log_tail());
            BOOST_CHECK_EQUAL(scalar(a.get(), "SELECT inet_server_port()"), primary);
            held.push_back(std::move(a));
        }
    }
    for (int i = 0; i < 3; ++i)
        BOOST_CHECK_EQUAL(port_of(p, "pooled"), primary);
    const std::string log = read_file(p.log_path());
    BOOST_CHECK_MESSAGE(log.find("port=" + standby + " ") != std::string::npos &&
                            log.find("trying the next host") != std::string::npos,
                        p.log_tail());
    // SHOW POOLS, summed over its rows: connections warm, and every one counted (warm,
    // in a session, being opened). A console session from a host whose last pooled
    // client used this pool is guessed to be for it and runs in one of its warm
    // workers: it is counted active meanwhile, so the total is what is checked.
    const std::string local = "host=" + p.unix_dir() + " port=" + std::to_string(p.port()) + " user=postgres ";
    auto pools = [&](long* warm) {
        Conn console = connect_ok(local + "dbname=pgwicket");
        Result r(PQexec(console.get(), "SHOW POOLS"));
        long total = 0;
        *warm = 0;
        for (int i = 0; i < PQntuples(r.get()); ++i) {
            *warm += std::stol(PQgetvalue(r.get(), i, PQfnumber(r.get(), "warm")));
            total += std::stol(PQgetvalue(r.get(), i, PQfnumber(r.get(), "warm"))) +
                     std::stol(PQgetvalue(r.get(), i, PQfnumber(r.get(), "active")));
        }
        return total;
    };
    long warm = 0;
    // A client from where the pool has no guess yet (the Unix socket) starts in a spare,
    // which fails on the standby, then is moved to a warm worker of the primary's pool.
    BOOST_REQUIRE_MESSAGE(wait_for([&] { return pools(&warm) == 2 && warm == 2; }), "warm " << warm);
    {
        Conn a = connect_ok(local + "dbname=pooled");
        BOOST_CHECK_EQUAL(scalar(a.get(), "SELECT inet_server_port()"), primary);
    }
    // Every place the failed attempts took is back: the primary's two connections are
    // all the pools count.
    long total = 0;
    BOOST_CHECK_MESSAGE(wait_for([&] { return (total = pools(&warm)) == 2; }), "counted " << total);
    // A reload keeps them (the route of a host of a multi-host entry is still that host's).
    const size_t from = p.log_size();
    BOOST_REQUIRE(::kill(p.pid(), SIGHUP) == 0);
    auto count_from = [&](const std::string& text) {
        const std::string now = read_file(p.log_path());
        int n = 0;
        for (size_t at = now.find(text, from); at != std::string::npos; at = now.find(text, at + 1))
            ++n;
        return n;
    };
    BOOST_CHECK_MESSAGE(wait_for([&] { return count_from("took the reloaded configuration") == 2; }), p.log_tail());
    BOOST_CHECK_EQUAL(count_from("not kept after the reload"), 0);
    check_clean_stop(p);
}

// min_pool_size on an entry of several hosts: a pool per host, each kept at its minimum
// before any client (once the health checker has seen the hosts), a host that does not
// fit the entry's target_session_attrs left out.
// A reload that drops a host from every entry takes it out of SHOW HOSTS and the metrics;
// one that brings it back lists it again. (One server under two names is two hosts.)
BOOST_AUTO_TEST_CASE(hosts_dropped_by_a_reload_leave_show_hosts)
{
    const std::string port = std::to_string(env().pg_port);
    ProxyOptions o;
    o.extra_databases = "two = host=127.0.0.1,localhost port=" + port + " dbname=postgres user=postgres\n";
    const std::string metrics_at = "127.0.0.1:" + std::to_string(free_port());
    o.extra_settings = "server_check_period = 1\nadmin_users = postgres\nmetrics_listen = " + metrics_at + "\n";
    Proxy p("replicas-hosts-reload", o);
    auto names = [&] {
        std::set<std::string> out;
        Conn console = connect_ok(p.conninfo("pgwicket", "postgres"));
        Result r(PQexec(console.get(), "SHOW HOSTS"));
        for (int i = 0; i < PQntuples(r.get()); ++i)
            out.insert(std::string(PQgetvalue(r.get(), i, 0)) + ":" + PQgetvalue(r.get(), i, 1));
        return out;
    };
    const std::string a = "127.0.0.1:" + port, b = "localhost:" + port;
    BOOST_REQUIRE_MESSAGE(wait_for([&] { return names() == std::set<std::string>{a, b}; }), p.log_tail());
    const std::string ini = read_file(p.config_path());
    auto reload_with = [&](const std::string& from, const std::string& to) {
        std::string next = ini;
        const size_t at = next.find(from);
        BOOST_REQUIRE(at != std::string::npos);
        next.replace(at, from.size(), to);
        write_file(p.config_path(), next);
        const size_t log_from = p.log_size();
        BOOST_REQUIRE(::kill(p.pid(), SIGHUP) == 0);
        BOOST_REQUIRE_MESSAGE(wait_for([&] {
                                  return read_file(p.log_path()).find("configuration reloaded", log_from) !=
                                         std::string::npos;
                              }),
                              p.log_tail());
    };
    // localhost goes: one host, still checked (target_session_attrs asks for a role).
    reload_with("host=127.0.0.1,localhost", "target_session_attrs=read-write host=127.0.0.1");
    BOOST_CHECK_MESSAGE(wait_for([&] { return names() == std::set<std::string>{a}; }), p.log_tail());
    const std::string metrics = http_get("http://" + metrics_at + "/metrics").out;
    BOOST_CHECK_MESSAGE(metrics.find("host=\"127.0.0.1\"") != std::string::npos &&
                            metrics.find("host=\"localhost\"") == std::string::npos,
                        metrics);
    // No entry with hosts to check: nothing listed.
    reload_with("host=127.0.0.1,localhost", "host=127.0.0.1");
    BOOST_CHECK_MESSAGE(wait_for([&] { return names().empty(); }), p.log_tail());
    // Both back, with the numbers they had.
    reload_with("dbname=postgres user=postgres\n", "dbname=postgres user=postgres\n");
    BOOST_CHECK_MESSAGE(wait_for([&] { return names() == std::set<std::string>{a, b}; }), p.log_tail());
    check_clean_stop(p);
}

BOOST_AUTO_TEST_CASE(min_pool_size_fills_a_pool_per_host)
{
    ReplicaCluster c("pool-min-hosts", 2);
    ProxyOptions o;
    o.extra_databases = "pooled = host=" + c.hosts() + " port=" + c.ports() +
                        " dbname=postgres user=postgres target_session_attrs=standby pool_mode=session "
                        "pool_size=3 min_pool_size=2\n";
    o.extra_settings = "server_check_period = 1\napplication_name_prefix = pgw-min-hosts\n";
    Proxy p("replicas-pool-min-hosts", o);
    // Client backends but ours and the health checker's.
    auto prefilled = [&](int node) {
        return c.scalar(node, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND "
                              "pid <> pg_backend_pid() AND application_name NOT LIKE '% health check'");
    };
    BOOST_CHECK_MESSAGE(wait_for([&] { return prefilled(1) == "2" && prefilled(2) == "2"; }, 30000),
                        "standbys: " << prefilled(1) << " " << prefilled(2) << p.log_tail());
    BOOST_CHECK_EQUAL(prefilled(0), "0");
    // A client gets one of them.
    Conn a = connect_ok(p.conninfo("pooled"));
    BOOST_CHECK_EQUAL(scalar(a.get(), "SELECT pg_is_in_recovery()"), "t");
    a.reset();
    check_clean_stop(p);
}

BOOST_AUTO_TEST_CASE(failover_moves_writes_and_ends_sessions_on_a_host_that_changed_role)
{
    ReplicaCluster c("failover", 2);
    Proxy p("replicas-failover", replica_options(c));
    const std::string primary = port_str(c, 0), s1 = port_str(c, 1);
    BOOST_REQUIRE_MESSAGE(wait_for([&] { return hosts(p)[s1]["role"] == "standby"; }), p.log_tail());
    // A standby session pinned to the standby that will be promoted.
    Conn reader;
    for (int i = 0; i < 10 && !reader; ++i) {
        Conn r = connect_ok(p.conninfo("ro"));
        if (scalar(r.get(), "SELECT inet_server_port()") == s1)
            reader = std::move(r);
    }
    BOOST_REQUIRE(reader);
    // An idle connection's FATAL reaches libpq as a notice.
    std::string said;
    PQsetNoticeReceiver(
        reader.get(), [](void* out, const PGresult* r) { *static_cast<std::string*>(out) += PQresultErrorMessage(r); },
        &said);
    // The health checker killed: restarted, and routing goes on meanwhile.
    const std::string before = p.log_tail(400);
    const auto at = before.rfind("health checker LOG: checking");
    BOOST_REQUIRE(at != std::string::npos);
    const auto open = before.rfind('[', at), close = before.find(']', open);
    const pid_t checker = pid_t(std::stol(before.substr(open + 1, close - open - 1)));
    BOOST_REQUIRE(::kill(checker, SIGKILL) == 0);
    BOOST_CHECK_EQUAL(port_of(p, "rw"), primary);
    BOOST_CHECK_MESSAGE(wait_for([&] {
                            return p.log_tail(400).find("health checker (pid " + std::to_string(checker) +
                                                        ") was killed by signal 9") != std::string::npos;
                        }),
                        p.log_tail());

    // Fail over: the primary stops, standby 1 is promoted.
    c.stop(0);
    c.promote(1);
    BOOST_CHECK_MESSAGE(wait_for([&] { return port_of(p, "rw") == s1; }, 30000), p.log_tail());
    {
        Conn w = connect_ok(p.conninfo("rw"));
        BOOST_CHECK_EQUAL(scalar(w.get(), "SELECT pg_is_in_recovery()"), "f");
    }
    // The reader bound to a standby is ended: its host is a primary now.
    BOOST_CHECK_MESSAGE(wait_for([&] {
                            PQconsumeInput(reader.get());
                            PQisBusy(reader.get());
                            return PQstatus(reader.get()) == CONNECTION_BAD;
                        }),
                        p.log_tail());
    const std::string farewell = said + PQerrorMessage(reader.get());
    BOOST_CHECK_MESSAGE(farewell.find("upstream host 127.0.0.1:" + s1 + " is a primary now") != std::string::npos,
                        farewell);
    auto h = hosts(p);
    BOOST_CHECK_EQUAL(h[s1]["role"], "primary");
    BOOST_CHECK_EQUAL(h[s1]["role_changes"], "1");
    BOOST_CHECK_EQUAL(h[primary]["state"], "down");
    check_stop_allowing(p, {checker});
}

BOOST_AUTO_TEST_SUITE_END()
