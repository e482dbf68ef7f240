// Hostile, broken and unlucky sessions: each must get a clear error (right SQLSTATE) and must
// not disturb another session or the supervisor; also --check-config and clean shutdown.
#include "harness.hh"

#include <boost/test/unit_test.hpp>

#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <sstream>

using namespace pgw::it;
using namespace std::string_literals;

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

// What a peer answers to the bytes of a first packet: each message's type (with the
// SQLSTATE and text of an ErrorResponse, the body of a NegotiateProtocolVersion), then how
// the connection ended. Nothing at all is "no answer", however the socket closed.
struct StartupAnswer {
    std::string text;
    bool reset = false;  // the connection ended with a reset, not a FIN
};

// The messages of `raw` as text, up to the first one that is neither an ErrorResponse nor a
// NegotiateProtocolVersion (a login that went on: what follows is the session); sets
// `login_went_on` when it found one.
std::string describe_answer(const std::string& raw, bool* login_went_on = nullptr)
{
    std::string text;
    for (size_t at = 0; raw.size() - at >= 5;) {
        const char type = raw[at];
        const size_t len = get32(raw, at + 1);
        if (len < 4 || raw.size() - at - 1 < len)
            break;
        const std::string body = raw.substr(at + 5, len - 4);
        if (type == 'E') {
            auto f = error_fields(body);
            text += "E " + f['S'] + " " + f['C'] + " " + f['M'] + "; ";
        } else if (type == 'v') {
            text += "v " + std::to_string(get32(body, 0)) + "; ";
        } else {
            text += std::string(1, type) + "; ";
            if (login_went_on)
                *login_went_on = true;
            break;
        }
        at += 1 + len;
    }
    return text;
}

StartupAnswer answer_to(int port, const std::string& bytes, bool half_close)
{
    RawSocket s(port);
    s.send(bytes);
    if (half_close)
        s.shutdown_write();
    StartupAnswer a;
    std::string raw;
    bool went_on = false;
    while (!went_on) {
        pollfd p{s.fd(), POLLIN, 0};
        if (::poll(&p, 1, 5000) <= 0) {
            a.text = describe_answer(raw) + "<still open after 5 s>";
            return a;
        }
        char buf[4096];
        ssize_t n = ::recv(s.fd(), buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            a.reset = n < 0;
            break;
        }
        raw.append(buf, size_t(n));
        describe_answer(raw, &went_on);
    }
    a.text = raw.empty() ? "no answer" : describe_answer(raw);
    return a;
}

std::string with_length(const std::string& body) { return be32(uint32_t(body.size() + 4)) + body; }

}  // namespace

BOOST_FIXTURE_TEST_SUITE(bad_input, Bystander)

// Every broken first packet gets what PostgreSQL 15 sends for the same bytes: a FATAL with
// its SQLSTATE and text, or, where the server stays silent (an impossible length, a malformed
// CancelRequest), nothing at all. Drivers depend on that silence: node-postgres sends
// Terminate before its startup packet when connect() and end() come in one tick.
BOOST_AUTO_TEST_CASE(startup_errors_match_postgresql)
{
    const std::string v3 = be32(196608);
    const std::string user = "user"s + '\0' + "postgres" + '\0';
    const std::string cancel = be32(80877102);
    struct Case {
        const char* name;
        std::string bytes;
        bool half_close = false;  // the client sends its end of stream after the bytes
    };
    const Case cases[] = {
        {"Terminate before the startup packet", terminate_message()},
        {"an HTTP request", "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"},
        {"length of 1 GiB", be32(1u << 30) + v3 + "user"},
        {"length 10005 (one past the cap)", be32(10005) + v3 + std::string(9997, 'a')},
        {"length 7", be32(7) + "abc"},
        {"length 4", be32(4)},
        {"length 0", be32(0)},
        {"a length word cut short", "\0\0"s, true},
        {"a packet cut short", be32(100) + v3 + user, true},
        {"the version alone", with_length(v3)},
        {"no terminator", with_length(v3 + user)},
        {"a name without a value", with_length(v3 + user + "database"s + '\0')},
        {"bytes after the terminator", with_length(v3 + user + '\0' + "x")},
        {"no user", with_length(v3 + "database"s + '\0' + "postgres" + '\0' + '\0')},
        {"an empty user", with_length(v3 + "user"s + '\0' + '\0' + '\0')},
        {"10000 bytes of garbage behind a valid version", with_length(v3 + std::string(9996, 'a'))},
        {"protocol 4.0", startup_packet(params("postgres"), 0x00040000)},
        {"protocol 1234.5678", startup_packet(params("postgres"), (1234u << 16) | 5678u)},
        {"protocol 3.1", startup_packet(params("postgres"), 0x00030001)},
        {"a _pq_ option", startup_packet({{"user", "postgres"}, {"_pq_.extension", "1"}})},
        {"a CancelRequest without its secret", with_length(cancel + be32(1234))},
        {"a CancelRequest four bytes too long", with_length(cancel + be32(1234) + be32(5) + be32(6))},
        {"a CancelRequest for no session", with_length(cancel + be32(1234) + be32(5))},
    };
    for (const Case& c : cases) {
        BOOST_TEST_CONTEXT(c.name)
        {
            StartupAnswer direct = answer_to(env().pg_port, c.bytes, c.half_close);
            StartupAnswer ours = answer_to(env().proxy->port(), c.bytes, c.half_close);
            BOOST_TEST(ours.text == direct.text);
            // Where we say nothing, we also close cleanly: a reset is an error to a driver.
            if (ours.text == "no answer")
                BOOST_TEST(!ours.reset, "the silent close was a reset");
        }
    }
}

// The encryption requests, step by step (the shared cluster has TLS on, so it answers 'S'
// where pgwicket without client TLS answers 'N'; the answers after that were read from a
// PostgreSQL 15 with ssl = off for the same bytes).
BOOST_AUTO_TEST_CASE(encryption_requests_match_postgresql)
{
    struct Case {
        const char* name;
        std::vector<std::string> steps;  // each sent after the answer to the one before
        std::string answer;              // after the last step
    };
    const std::string ssl = ssl_request(), gss = gssenc_request();
    const Case cases[] = {
        // PostgreSQL takes the second request's code for a protocol version.
        {"a second SSLRequest", {ssl, ssl}, "E FATAL 0A000 unsupported frontend protocol 1234.5679: server supports 3.0 to 3.0; "},
        {"a second GSSENCRequest", {gss, gss}, "E FATAL 0A000 unsupported frontend protocol 1234.5680: server supports 3.0 to 3.0; "},
        {"an impossible length after SSLRequest", {ssl, be32(7) + "abc"}, "no answer"},
        {"a malformed CancelRequest after SSLRequest", {ssl, with_length(be32(80877102) + be32(1))}, "no answer"},
        // Bytes sent behind the request, before its answer, never count (CVE-2021-23214).
        {"a startup packet sent with the SSLRequest", {ssl + startup_packet(params("postgres"))},
         "N" "E FATAL 08P01 received unencrypted data after SSL request; "},
        {"a startup packet sent with the GSSENCRequest", {gss + startup_packet(params("postgres"))},
         "N" "E FATAL 08P01 received unencrypted data after GSSAPI encryption request; "},
    };
    for (const Case& c : cases) {
        BOOST_TEST_CONTEXT(c.name)
        {
            RawSocket s(env().proxy->port());
            for (size_t i = 0; i + 1 < c.steps.size(); ++i) {
                s.send(c.steps[i]);
                BOOST_TEST_REQUIRE(s.read_exact(1, 5000) == "N");
            }
            s.send(c.steps.back());
            std::string raw;
            while (raw.size() < 65536) {
                std::string more = s.read_exact(1, 5000);
                if (more.empty())
                    break;
                raw += more;
            }
            BOOST_TEST(s.eof(), "the connection is still open");
            std::string text = raw.empty() ? "no answer" : "";
            if (!raw.empty() && raw[0] == 'N') {
                text = "N";
                raw.erase(0, 1);
            }
            text += describe_answer(raw);
            BOOST_TEST(text == c.answer);
        }
    }
}

// Every driver ends a session with Terminate and a close; the backend exits on it and its
// socket closes at once. Whichever the relay sees first, the client must get nothing back
// (it once got "FATAL 08006 server closed the connection unexpectedly" now and then).
BOOST_AUTO_TEST_CASE(terminate_then_close_gets_no_answer)
{
    for (const char* db : {"postgres", "tlsdb"}) {
        int answered = 0;
        std::string example;
        constexpr int kSessions = 200;
        for (int i = 0; i < kSessions; ++i) {
            RawSocket s(env().proxy->port());
            s.send(startup_packet(params(db)));
            auto greeting = s.read_until_ready(15000);
            BOOST_TEST_REQUIRE((!greeting.empty() && greeting.back().type == 'Z'),
                               db << ": login " << i << " failed");
            s.send(terminate_message());
            s.shutdown_write();
            std::string after = s.read_exact(1 << 16, 10000);
            BOOST_TEST_REQUIRE(s.eof(), db << ": session " << i << " still open 10 s after Terminate");
            if (!after.empty()) {
                ++answered;
                example = after;
            }
        }
        BOOST_TEST(answered == 0, db << ": " << answered << " of " << kSessions
                                     << " sessions got bytes after their Terminate, e.g. "
                                     << fields_text(error_fields(example.size() > 5 ? example.substr(5) : "")));
    }
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
    // The key's pid is the upstream backend's own (its secret is the proxy's).
    BOOST_TEST(std::to_string(get32(*key, 0)) == upstream_pid);

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
