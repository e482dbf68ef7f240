// Hostile, broken and unlucky sessions: each must get a clear error (right SQLSTATE) and must
// not disturb another session or the supervisor; also --check-config and clean shutdown.
#include "harness.hh"

#include <boost/test/unit_test.hpp>

#include <sstream>

using namespace pgw::it;

namespace {

// The first ErrorResponse the server sends on s, or empty fields when it sends none.
std::map<char, std::string> first_error(RawSocket& s)
{
    while (auto m = s.read_message(10000)) {
        if (m->type == 'E')
            return error_fields(m->payload);
        if (m->type == 'Z')
            break;
    }
    return {};
}

std::vector<std::pair<std::string, std::string>> params(const std::string& db,
                                                        const std::string& app = kAppName)
{
    return {{"user", "postgres"}, {"database", db}, {"application_name", app}};
}

// Count of upstream backends whose application_name carries `tag` (the proxy puts the
// client's application_name into the upstream one).
int upstream_sessions(const std::string& tag)
{
    return std::stoi(direct_scalar("SELECT count(*) FROM pg_stat_activity WHERE "
                                   "application_name LIKE '%" +
                                   tag + "%'"));
}

// Every case runs with another session open through the same proxy; afterwards that session
// must still answer and the supervisor must still hand out new sessions.
struct Bystander {
    size_t log_from = env().proxy->log_size();
    Conn held;
    Bystander()
        : held(connect_ok(
              env().proxied("postgres", "postgres", "application_name=pgw_it_bystander")))
    {
        BOOST_TEST_REQUIRE(scalar(held.get(), "SELECT 1") == "1");
    }
    void teardown()
    {
        // The supervisor logs how each worker ended; a crash is invisible to the client.
        std::string crashes = env().proxy->crash_findings(log_from);
        BOOST_TEST(crashes.empty(), "a worker crashed:\n" << crashes);
        BOOST_TEST(env().proxy->running(), "the supervisor is gone; log:\n"
                                               << env().proxy->log_tail());
        Result r(PQexec(held.get(), "SELECT 41 + 1"));
        BOOST_TEST((PQresultStatus(r.get()) == PGRES_TUPLES_OK &&
                    std::string(PQgetvalue(r.get(), 0, 0)) == "42"),
                   "the bystander session was disturbed: " << PQerrorMessage(held.get()));
        Conn fresh = connect(env().proxied());
        BOOST_TEST(PQstatus(fresh.get()) == CONNECTION_OK,
                   "no new session after the case: " << PQerrorMessage(fresh.get()));
    }
};

}  // namespace

BOOST_FIXTURE_TEST_SUITE(bad_input, Bystander)

BOOST_AUTO_TEST_CASE(http_request_instead_of_startup)
{
    RawSocket s(env().proxy->port());
    s.send("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    auto f = first_error(s);
    BOOST_TEST(f['S'] == "FATAL", fields_text(f));
    BOOST_TEST(f['C'] == "08P01", fields_text(f));
    BOOST_TEST(s.wait_closed(10000), "the connection stays open after the protocol error");
}

BOOST_AUTO_TEST_CASE(truncated_startup_packet)
{
    RawSocket s(env().proxy->port());
    std::string packet = startup_packet(params("postgres"));
    packet.replace(0, 4, be32(100));
    s.send(packet.substr(0, 20));
    s.shutdown_write();
    // An ErrorResponse is optional here (PostgreSQL sends none); the session must end.
    BOOST_TEST(s.wait_closed(10000), "still open 10 s after a truncated startup packet");
}

BOOST_AUTO_TEST_CASE(startup_length_of_one_gib)
{
    RawSocket s(env().proxy->port());
    s.send(be32(1u << 30) + be32(196608) + "user");
    auto f = first_error(s);
    BOOST_TEST(f['C'] == "08P01", fields_text(f));
    BOOST_TEST(contains(f['M'], "invalid length of startup packet"), fields_text(f));
    BOOST_TEST(s.wait_closed(10000));
}

BOOST_AUTO_TEST_CASE(protocol_version_2)
{
    // PostgreSQL itself answers a 2.0 client in the 2.0 format ('E' and a bare string), which
    // shows the harness speaks to it; pgwicket answers with a v3 ErrorResponse carrying 0A000.
    {
        RawSocket d(env().pg_port);
        d.send(startup_packet(params("postgres"), 0x00020000));
        std::string reply = d.read_exact(4096, 5000);
        BOOST_TEST(reply.rfind("EFATAL:", 0) == 0u, reply);
        BOOST_TEST(contains(reply, "unsupported frontend protocol 2.0"), reply);
    }
    RawSocket s(env().proxy->port());
    s.send(startup_packet(params("postgres"), 0x00020000));
    auto f = first_error(s);
    BOOST_TEST(f['C'] == "0A000", fields_text(f));
    BOOST_TEST(f['S'] == "FATAL", fields_text(f));
    BOOST_TEST(s.wait_closed(10000));
}

BOOST_AUTO_TEST_CASE(unknown_database_without_fallback)
{
    ProxyOptions o;
    o.wildcard = false;
    Proxy strict("pgwicket-strict", o);
    Conn c = connect(strict.conninfo("no_such_db"));
    std::string msg = PQerrorMessage(c.get());
    BOOST_TEST(PQstatus(c.get()) == CONNECTION_BAD);
    BOOST_TEST(contains(msg, "FATAL:"), msg);
    BOOST_TEST(contains(msg, "no_such_db"), msg);
    {
        RawSocket s(strict.port());
        s.send(startup_packet(params("no_such_db")));
        auto f = first_error(s);
        BOOST_TEST(f['S'] == "FATAL", fields_text(f));
        BOOST_TEST(f['C'] == "3D000", fields_text(f));
        BOOST_TEST(s.wait_closed(10000));
    }
    // A listed database still works on the same proxy.
    Conn ok = connect(strict.conninfo("tlsdb"));
    BOOST_TEST(PQstatus(ok.get()) == CONNECTION_OK, PQerrorMessage(ok.get()));
    ok.reset();
    check_clean_stop(strict);
}

BOOST_AUTO_TEST_CASE(unknown_database_through_fallback)
{
    // With '*' the upstream decides, and its error must reach the client unchanged.
    Conn d = connect(env().direct("no_such_db"));
    Conn p = connect(env().proxied("no_such_db"));
    std::string dm = PQerrorMessage(d.get()), pm = PQerrorMessage(p.get());
    BOOST_TEST(PQstatus(p.get()) == CONNECTION_BAD);
    // The upstream's FATAL line reaches the client as is (the proxy may add a DETAIL).
    auto fatal_line = [](const std::string& m) {
        size_t at = m.find("FATAL:");
        return at == std::string::npos ? m : m.substr(at, m.find('\n', at) - at);
    };
    BOOST_TEST(fatal_line(pm) == fatal_line(dm), dm << " vs " << pm);
    RawSocket s(env().proxy->port());
    s.send(startup_packet(params("no_such_db")));
    auto f = first_error(s);
    BOOST_TEST(f['C'] == "3D000", fields_text(f));
}

BOOST_AUTO_TEST_CASE(unreachable_upstream)
{
    const std::string port = std::to_string(env().dead_port);
    Conn c = connect(env().proxied("unreachable"));
    std::string msg = PQerrorMessage(c.get());
    BOOST_TEST(PQstatus(c.get()) == CONNECTION_BAD);
    BOOST_TEST(contains(msg, port), "the message should name the upstream: " << msg);
    BOOST_TEST(!contains(msg, kUnreachablePassword), msg);

    RawSocket s(env().proxy->port());
    s.send(startup_packet(params("unreachable")));
    auto f = first_error(s);
    BOOST_TEST(f['S'] == "FATAL", fields_text(f));
    BOOST_TEST(f['C'] == "08006", fields_text(f));
    BOOST_TEST(contains(f['M'] + f['D'], "127.0.0.1"), fields_text(f));
    BOOST_TEST(contains(f['M'] + f['D'], port), fields_text(f));
    BOOST_TEST(!contains(fields_text(f), kUnreachablePassword), fields_text(f));
    BOOST_TEST(s.wait_closed(10000));
    BOOST_TEST(!contains(read_file(env().proxy->log_path()), kUnreachablePassword),
               "the password of the route appears in pgwicket's log");
}

BOOST_AUTO_TEST_CASE(client_disconnects_mid_result)
{
    const std::string tag = "pgw_it_midresult";
    {
        RawSocket s(env().proxy->port());
        s.send(startup_packet(params("postgres", tag)));
        auto greeting = s.read_until_ready();
        BOOST_TEST_REQUIRE((!greeting.empty() && greeting.back().type == 'Z'),
                           "no ReadyForQuery after startup");
        s.send(query_message("SELECT * FROM generate_series(1, 10000000)"));
        auto first = s.read_message(30000);
        BOOST_TEST_REQUIRE(first.has_value(), "no result bytes");
        BOOST_TEST(first->type == 'T');
        auto row = s.read_message(30000);
        BOOST_TEST_REQUIRE(row.has_value());
        BOOST_TEST(row->type == 'D');
        BOOST_TEST_REQUIRE(upstream_sessions(tag) == 1, "the upstream backend is not visible");
        // The socket closes here with most of the result unread.
    }
    bool gone = wait_for([&] { return upstream_sessions(tag) == 0; }, 10000);
    BOOST_TEST(gone, "the upstream backend still runs 10 s after its client went away");
}

BOOST_AUTO_TEST_CASE(upstream_backend_terminated)
{
    // The same thing done directly and through the proxy must end the same way for libpq.
    auto victim = [](const std::string& conninfo, const std::string& tag) {
        Conn c = connect_ok(conninfo + " application_name=" + tag);
        BOOST_TEST_REQUIRE(scalar(c.get(), "SELECT 1") == "1");
        BOOST_TEST_REQUIRE(direct_scalar("SELECT count(pg_terminate_backend(pid)) FROM "
                                         "pg_stat_activity WHERE application_name LIKE '%" +
                                         tag + "%'") == "1");
        BOOST_TEST(wait_for([&] { return upstream_sessions(tag) == 0; }, 10000));
        Result r(PQexec(c.get(), "SELECT 1"));
        std::string msg = PQerrorMessage(c.get());
        BOOST_TEST(PQresultStatus(r.get()) != PGRES_TUPLES_OK, tag << ": " << msg);
        BOOST_TEST(PQstatus(c.get()) == CONNECTION_BAD, tag << ": session still open");
        return msg;
    };
    std::string direct = victim(env().direct(), "pgw_it_victim_direct");
    std::string proxied = victim(env().proxied(), "pgw_it_victim_proxied");
    const std::string fatal = "FATAL:  terminating connection due to administrator command";
    BOOST_TEST(contains(direct, fatal), direct);
    BOOST_TEST(contains(proxied, fatal), proxied);
}

BOOST_AUTO_TEST_CASE(max_client_conn)
{
    ProxyOptions o;
    o.max_client_conn = 2;
    Proxy small("pgwicket-max2", o);
    Conn a = connect_ok(small.conninfo());
    Conn b = connect_ok(small.conninfo());
    BOOST_TEST(scalar(a.get(), "SELECT 1") == "1");
    BOOST_TEST(scalar(b.get(), "SELECT 2") == "2");

    Conn third = connect(small.conninfo());
    std::string msg = PQerrorMessage(third.get());
    BOOST_TEST(PQstatus(third.get()) == CONNECTION_BAD);
    BOOST_TEST(contains(msg, "sorry, too many clients already"), msg);
    {
        RawSocket s(small.port());
        s.send(startup_packet(params("postgres")));
        auto f = first_error(s);
        BOOST_TEST(f['C'] == "53300", fields_text(f));
        BOOST_TEST(f['S'] == "FATAL", fields_text(f));
    }
    // The two admitted sessions are untouched, and a freed place is handed out again.
    BOOST_TEST(scalar(a.get(), "SELECT 3") == "3");
    b.reset();
    bool admitted =
        wait_for([&] { return PQstatus(connect(small.conninfo()).get()) == CONNECTION_OK; }, 10000);
    BOOST_TEST(admitted, "no session admitted after one of two ended; log:\n" << small.log_tail());
    a.reset();
    check_clean_stop(small);
}

BOOST_AUTO_TEST_CASE(ssl_and_gssenc_requests_then_startup)
{
    RawSocket s(env().proxy->port());
    s.send(gssenc_request());
    BOOST_TEST(s.read_exact(1) == "N");
    s.send(ssl_request());
    BOOST_TEST(s.read_exact(1) == "N");
    s.send(startup_packet(params("postgres")));
    auto greeting = s.read_until_ready();
    BOOST_TEST_REQUIRE(!greeting.empty());
    BOOST_TEST(greeting.front().type == 'R');
    BOOST_TEST((greeting.front().payload == be32(0)), "not AuthenticationOk");
    BOOST_TEST(greeting.back().type == 'Z');
    BOOST_TEST(greeting.back().payload == "I");
    std::map<std::string, std::string> status;
    std::optional<std::string> key;
    for (const auto& m : greeting) {
        if (m.type == 'S') {
            size_t z = m.payload.find('\0');
            status[m.payload.substr(0, z)] = m.payload.substr(z + 1, m.payload.size() - z - 2);
        } else if (m.type == 'K') {
            key = m.payload;
        }
    }
    BOOST_TEST_REQUIRE(key.has_value(), "no BackendKeyData");
    BOOST_TEST_REQUIRE(key->size() == 8u);
    s.send(query_message("SELECT pg_backend_pid()"));
    auto res = s.read_until_ready();
    std::string upstream_pid;
    for (const auto& m : res)
        if (m.type == 'D')
            upstream_pid = m.payload.substr(6);
    BOOST_TEST_REQUIRE(!upstream_pid.empty());
    // The key is the proxy's own, never the upstream's (a client must not cancel by itself).
    BOOST_TEST(std::to_string(get32(*key, 0)) != upstream_pid);

    // The ParameterStatus values are the upstream's real ones.
    RawSocket d(env().pg_port);
    d.send(startup_packet(params("postgres")));
    std::map<std::string, std::string> direct_status;
    for (const auto& m : d.read_until_ready()) {
        if (m.type == 'S') {
            size_t z = m.payload.find('\0');
            direct_status[m.payload.substr(0, z)] =
                m.payload.substr(z + 1, m.payload.size() - z - 2);
        }
    }
    for (const char* name : {"server_version", "server_encoding", "client_encoding", "DateStyle",
                             "TimeZone", "integer_datetimes", "standard_conforming_strings",
                             "IntervalStyle", "is_superuser", "session_authorization"}) {
        BOOST_TEST_CONTEXT("ParameterStatus " << name)
        {
            BOOST_TEST(status.count(name) == 1u);
            BOOST_TEST(status[name] == direct_status[name]);
        }
    }
    s.send(terminate_message());
    BOOST_TEST(s.wait_closed(10000));
}

// Cancel requests (routing, bad keys, malformed packets) are covered in test_cancel.cc.

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(command_line)

BOOST_AUTO_TEST_CASE(check_config)
{
    const std::string good = env().proxy->config_path();
    auto ok = run({env().pgwicket_bin, "--check-config", "-c", good});
    BOOST_TEST(ok.exit_code == 0, ok.status() << ": " << ok.out);

    const std::string bad = env().tmpdir + "/typo.ini";
    write_file(bad, "[pgwicket]\nlisten_addr = 127.0.0.1\nlisten_prot = 6432\n"
                    "[databases]\n* = host=127.0.0.1\n");
    auto r = run({env().pgwicket_bin, "--check-config", "-c", bad});
    BOOST_TEST(r.exit_code != 0, r.status());
    BOOST_TEST(r.exit_code != -1, "crashed: " << r.status());
    BOOST_TEST(contains(r.out, bad + ":3"), "expected file:line in: " << r.out);
    BOOST_TEST(contains(r.out, "listen_prot"), r.out);

    auto v = run({env().pgwicket_bin, "--version"});
    BOOST_TEST(v.exit_code == 0, v.status());
    BOOST_TEST(contains(v.out, "pgwicket"), v.out);
}

BOOST_AUTO_TEST_CASE(sigterm_shuts_down_cleanly)
{
    Proxy p("pgwicket-lifecycle", ProxyOptions{});
    {
        Conn c = connect_ok(p.conninfo());
        BOOST_TEST(scalar(c.get(), "SELECT 1") == "1");
    }
    std::vector<pid_t> workers = children_of(p.pid());
    BOOST_TEST(!workers.empty(), "expected pre-forked spare workers");
    check_clean_stop(p);
    // No worker may outlive its supervisor (orphans would be reparented, so look them up).
    for (pid_t w : workers)
        BOOST_TEST(wait_for([&] { return !process_alive(w); }, 5000),
                   "worker " << w << " lives on");
}

BOOST_AUTO_TEST_SUITE_END()
