// A hostile upstream in pass-through mode: a fake server (a thread of this test; a real
// PostgreSQL cannot be made to send these) answers pgwicket's startup packet with
// oversized SCRAM messages, an iteration count of 2^31, malformed errors, a 1 GiB length,
// a ParameterStatus flood and an unexpected message at every stage of the login. Each
// login ends with a clear FATAL of the right SQLSTATE within server_connect_timeout,
// nothing reaches the client that the server should not have sent, and the supervisor and
// a bystander session are unharmed.
#include "harness.hh"

#include <boost/test/unit_test.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

using namespace pgw::it;

namespace {

using Clock = std::chrono::steady_clock;

constexpr int kConnectTimeout = 5;  // the harness's server_connect_timeout

std::string z(const std::string& s) { return s + std::string(1, '\0'); }
std::string msg(char type, const std::string& body) { return std::string(1, type) + be32(uint32_t(body.size() + 4)) + body; }
std::string auth(uint32_t code, const std::string& data = "") { return msg('R', be32(code) + data); }
std::string sasl_list() { return auth(10, z("SCRAM-SHA-256") + std::string(1, '\0')); }
std::string sasl_continue(const std::string& nonce, const std::string& salt, const std::string& iterations)
{
    return auth(11, "r=" + nonce + ",s=" + salt + ",i=" + iterations);
}
std::string param(const std::string& k, const std::string& v) { return msg('S', z(k) + z(v)); }
std::string key(uint32_t pid, uint32_t secret) { return msg('K', be32(pid) + be32(secret)); }
std::string error(const std::string& fields) { return msg('E', fields + std::string(1, '\0')); }

constexpr uint32_t kServerSecret = 0x5ec12e7a;  // the fake's cancel secret: never for the client
const std::string kClientNonce = "rOprNGfwEbeRWgbNEkqOabcd";

// One step of the fake server's script.
struct Act {
    enum What { Send, Read, Flood, Stall, ContinueEcho } what;
    std::string bytes;  // Send, Flood: what to write; ContinueEcho: the iteration count
};
Act send(const std::string& b) { return {Act::Send, b}; }
Act read() { return {Act::Read, ""}; }
Act flood(const std::string& b) { return {Act::Flood, b}; }
Act stall() { return {Act::Stall, ""}; }
// A SCRAM server-first-message that extends the nonce of the client-first-message read
// last, as a real server does (libpq checks it), with this iteration count.
Act continue_echo(const std::string& iterations) { return {Act::ContinueEcho, iterations}; }

// Reads exactly n bytes, or fewer when the peer closes or 60 s pass.
std::string recv_exact(int fd, size_t n)
{
    std::string out;
    auto end = Clock::now() + std::chrono::seconds(60);
    while (out.size() < n && Clock::now() < end) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 500) <= 0)
            continue;
        char buf[65536];
        ssize_t got = ::recv(fd, buf, std::min(sizeof buf, n - out.size()), 0);
        if (got <= 0)
            break;
        out.append(buf, size_t(got));
    }
    return out;
}

// Until the peer closes (60 s at most).
void wait_for_close(int fd)
{
    auto end = Clock::now() + std::chrono::seconds(60);
    char buf[65536];
    while (Clock::now() < end) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 500) <= 0)
            continue;
        if (::recv(fd, buf, sizeof buf, 0) <= 0)
            return;
    }
}

// A fake PostgreSQL on 127.0.0.1: for each connection it reads the startup packet, picks
// the script named by its user, and plays it; what pgwicket sent is kept per user.
class FakeServer {
public:
    explicit FakeServer(std::map<std::string, std::vector<Act>> scripts) : scripts_(std::move(scripts))
    {
        listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int one = 1;
        ::setsockopt(listener_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (::bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(listener_, 16) != 0)
            throw std::runtime_error("fake server: bind/listen failed");
        socklen_t len = sizeof addr;
        ::getsockname(listener_, reinterpret_cast<sockaddr*>(&addr), &len);
        port_ = ntohs(addr.sin_port);
        thread_ = std::thread([this] { serve(); });
    }
    ~FakeServer()
    {
        stop_ = true;
        thread_.join();
        ::close(listener_);
    }
    int port() const { return port_; }
    int connections() const { return connections_; }

private:
    void serve()
    {
        while (!stop_) {
            pollfd p{listener_, POLLIN, 0};
            if (::poll(&p, 1, 200) <= 0)
                continue;
            int c = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
            if (c < 0)
                continue;
            ++connections_;
            play(c);
            ::close(c);
        }
    }

    void play(int c)
    {
        std::string head = recv_exact(c, 4);
        if (head.size() < 4)
            return;
        std::string startup = recv_exact(c, get32(head, 0) - 4);
        std::string user;
        for (size_t at = 4; at < startup.size();) {
            std::string k = startup.c_str() + at;
            at += k.size() + 1;
            if (at >= startup.size())
                break;
            std::string v = startup.c_str() + at;
            at += v.size() + 1;
            if (k == "user")
                user = v;
        }
        auto it = scripts_.find(user);
        if (it == scripts_.end())
            return;
        std::string last;  // the body of the message read last
        for (const Act& a : it->second) {
            switch (a.what) {
            case Act::ContinueEcho: {
                const size_t r = last.find("r=");
                const std::string nonce = r == std::string::npos ? "" : last.substr(r + 2);
                const std::string m = sasl_continue(nonce.substr(0, nonce.find(',')) + "x", "QSXCR+Q6sek8bf92", a.bytes);
                if (::send(c, m.data(), m.size(), MSG_NOSIGNAL) != ssize_t(m.size()))
                    return;
                break;
            }
            case Act::Send:
                if (::send(c, a.bytes.data(), a.bytes.size(), MSG_NOSIGNAL) != ssize_t(a.bytes.size()))
                    return;
                break;
            case Act::Read: {
                std::string h = recv_exact(c, 5);
                if (h.size() < 5)
                    return;
                last = recv_exact(c, get32(h, 1) - 4);
                break;
            }
            case Act::Flood:
                // Until pgwicket closes: at most 200,000 copies (a few MB), ended by a close.
                for (int i = 0; i < 200000 && !stop_; ++i)
                    if (::send(c, a.bytes.data(), a.bytes.size(), MSG_NOSIGNAL) <= 0)
                        return;
                break;
            case Act::Stall:
                break;
            }
        }
        wait_for_close(c);
    }

    std::map<std::string, std::vector<Act>> scripts_;
    int listener_ = -1;
    int port_ = 0;
    std::thread thread_;
    std::atomic<bool> stop_{false};
    std::atomic<int> connections_{0};
};

// What the client saw of one login: the FATAL's fields (empty when none), whether it got
// to ReadyForQuery, every byte it received, and how long it took.
struct Login {
    std::map<char, std::string> fatal;
    bool ready = false;
    std::string received;
    std::string key;  // the BackendKeyData it got
    long ms = 0;
};

// A client that answers as a driver would (a SASL first message, a final message, a
// password), except that with `answer_continue` false it never answers a SASL continue,
// as a client busy with 2^31 PBKDF2 iterations would not.
Login login(int port, const std::string& scenario, bool answer_continue = true)
{
    Login out;
    auto start = Clock::now();
    RawSocket s(port);
    s.send(startup_packet({{"user", scenario}, {"database", "hostile"}}));
    for (;;) {
        auto m = s.read_message(60000);
        if (!m)
            break;
        out.received += std::string(1, m->type) + m->payload;
        if (m->type == 'E') {
            out.fatal = error_fields(m->payload);
            break;
        }
        if (m->type == 'K')
            out.key = m->payload;
        if (m->type == 'Z') {
            out.ready = true;
            break;
        }
        if (m->type != 'R' || m->payload.size() < 4)
            continue;
        uint32_t code = get32(m->payload, 0);
        std::string first = "n,,n=,r=" + kClientNonce;
        if (code == 10)
            s.send(msg('p', z("SCRAM-SHA-256") + be32(uint32_t(first.size())) + first));
        else if (code == 11 && answer_continue)
            s.send(msg('p', "c=biws,r=" + kClientNonce + "xyz,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="));
        else if (code == 3 || code == 5)
            s.send(msg('p', z("md5a3556571e93b0d20722ba62be61e8c2d")));
    }
    out.ms = long(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count());
    return out;
}

} // namespace

BOOST_AUTO_TEST_SUITE(hostile_upstream)

BOOST_AUTO_TEST_CASE(pass_through_login_against_a_hostile_server)
{
    const std::string salt = "QSXCR+Q6sek8bf92";
    const std::string huge(2 * 1024 * 1024, 'A');  // twice the cap on a login message
    struct Case {
        const char* name;  // also the user name, which picks the fake's script
        std::vector<Act> script;
        std::string sqlstate;  // of the client's FATAL; "" = the login succeeds
        std::string says;      // part of its message
        bool answer_continue = true;
    };
    const std::string ok_tail = param("server_version", "15.0") + key(4711, kServerSecret) + msg('Z', "I");
    const std::vector<Case> cases = {
        // The control: the fake does work, and the client gets its pid with pgwicket's secret.
        {"honest", {send(auth(0) + ok_tail)}, "", ""},
        // SCRAM values out of bounds.
        {"nonce_2mib", {send(sasl_list()), read(), send(sasl_continue(kClientNonce + huge, salt, "4096"))},
         "08P01", "a message length of 2097"},
        {"salt_2mib", {send(sasl_list()), read(), send(sasl_continue(kClientNonce + "x", huge, "4096"))},
         "08P01", "a message length of 2097"},
        // The client (busy with 2^31 iterations) cannot answer; the login still ends in time.
        {"iterations_2pow31",
         {send(sasl_list()), read(), send(sasl_continue(kClientNonce + "x", salt, "2147483648")), stall()},
         "08006", "did not finish within server_connect_timeout", false},
        {"iterations_2pow31_minus_1",
         {send(sasl_list()), read(), send(sasl_continue(kClientNonce + "x", salt, "2147483647")), stall()},
         "08006", "did not finish within server_connect_timeout", false},
        {"silent_server", {stall()}, "08006", "did not finish within server_connect_timeout"},
        // Errors the client could not make sense of.
        {"error_without_sqlstate", {send(error(z("SFATAL") + z("VFATAL") + z("Mgo away")))}, "08P01",
         "malformed ErrorResponse (no SQLSTATE)"},
        {"error_without_message", {send(error(z("SFATAL") + z("C28P01")))}, "08P01", "malformed ErrorResponse (no message)"},
        {"error_without_fields", {send(error(""))}, "08P01", "malformed ErrorResponse"},
        {"error_unterminated", {send(msg('E', z("SFATAL") + z("C28000") + z("Mx")))}, "08P01", "malformed ErrorResponse"},
        // Lengths and floods.
        {"length_1gib", {send("R" + be32(1u << 30) + be32(0))}, "08P01", "a message length of 1073741824"},
        {"length_uint32_max", {send("R" + be32(0xffffffffu) + be32(0))}, "08P01", "a message length of 4294967295"},
        {"length_3", {send("R" + be32(3))}, "08P01", "a message length of 3"},
        {"parameter_flood", {send(auth(0)), flood(param("flood", "x"))}, "08P01", "more than 10000 messages"},
        // An unexpected message at every stage of the login.
        {"datarow_first", {send(msg('D', std::string(2, '\0')))}, "08P01", "unexpected message 'D' before authentication"},
        {"status_inside_scram", {send(sasl_list()), read(), send(param("a", "b"))}, "08P01",
         "unexpected message 'S' before authentication"},
        {"key_before_auth", {send(key(1, kServerSecret))}, "08P01", "unexpected message 'K' before authentication"},
        {"ready_before_auth", {send(msg('Z', "I"))}, "08P01", "unexpected message 'Z' before authentication"},
        {"sasl_final_without_exchange", {send(auth(12, "v=x"))}, "08P01", "a SASL final message outside"},
        {"sasl_continue_without_exchange", {send(auth(11, "r=x"))}, "08P01", "a SASL continuation outside"},
        {"second_sasl_start", {send(sasl_list()), read(), send(sasl_list())}, "08P01", "a second start of a SASL exchange"},
        {"password_after_md5", {send(auth(5, "salt")), read(), send(auth(3))}, "08P01", "an unexpected password request"},
        {"continue_after_final",
         {send(sasl_list()), read(), send(auth(12, "v=x") + auth(11, "r=x"))}, "08P01", "a SASL continuation outside"},
        {"ok_twice", {send(auth(0) + auth(0))}, "08P01", "an unexpected AuthenticationOk"},
        {"password_after_ok", {send(auth(0) + auth(3))}, "08P01", "an unexpected password request"},
        {"copy_after_ok", {send(auth(0) + msg('G', std::string(3, '\0')))}, "08P01", "unexpected message 'G' after"},
        {"long_key", {send(auth(0) + msg('K', be32(4711) + be32(kServerSecret) + be32(kServerSecret)))}, "08P01",
         "a BackendKeyData of 12 bytes"},
        {"second_key", {send(auth(0) + key(4711, kServerSecret) + key(4712, kServerSecret))}, "08P01",
         "a second BackendKeyData"},
        {"bad_ready", {send(auth(0) + key(4711, kServerSecret) + msg('Z', "Q"))}, "08P01", "a malformed ReadyForQuery"},
        {"malformed_status", {send(auth(0) + msg('S', "no terminator"))}, "08P01", "a malformed ParameterStatus"},
        {"gssapi", {send(auth(7))}, "0A000", "GSSAPI and SSPI are not supported"},
    };
    std::map<std::string, std::vector<Act>> scripts;
    for (const Case& c : cases)
        scripts[c.name] = c.script;
    FakeServer fake(std::move(scripts));

    ProxyOptions o;
    o.extra_settings = "auth_type = pass-through\n";
    o.extra_databases = "hostile = host=127.0.0.1 port=" + std::to_string(fake.port()) + " sslmode=disable\n";
    Proxy p("pgwicket-hostile", o);
    // A bystander on the real cluster (which trusts postgres), open through it all.
    Conn bystander = connect_ok(p.conninfo());
    BOOST_TEST(scalar(bystander.get(), "SELECT 1") == "1");

    for (const Case& c : cases) {
        BOOST_TEST_CONTEXT(c.name)
        {
            Login l = login(p.port(), c.name, c.answer_continue);
            if (c.sqlstate.empty()) {
                BOOST_TEST(l.ready, "no ReadyForQuery; FATAL " << fields_text(l.fatal));
                BOOST_TEST_REQUIRE(l.key.size() == 8u, "BackendKeyData of " << l.key.size() << " bytes");
                BOOST_TEST(get32(l.key, 0) == 4711u, "the server's pid");
                BOOST_TEST(get32(l.key, 4) != kServerSecret, "the server's own secret reached the client");
            } else {
                BOOST_TEST(!l.ready);
                BOOST_TEST(l.fatal['S'] == "FATAL", fields_text(l.fatal));
                BOOST_TEST(l.fatal['C'] == c.sqlstate, fields_text(l.fatal));
                BOOST_TEST(contains(l.fatal['M'], c.says), fields_text(l.fatal));
            }
            // The server's secret never reaches the client, in any message.
            BOOST_TEST(!contains(l.received, be32(kServerSecret)), "the server's secret reached the client");
            // Within the deadline, with room for a busy machine: never the client's 60 s.
            BOOST_TEST(l.ms < (kConnectTimeout + 20) * 1000, l.ms << " ms");
            BOOST_TEST(p.running(), "the supervisor is gone");
        }
    }
    BOOST_TEST(scalar(bystander.get(), "SELECT 2") == "2", "the bystander session broke");
    BOOST_TEST(fake.connections() == int(cases.size()));
    check_clean_stop(p);
}

// Terminated mode: libpq itself logs in to a server that asks for 2^31 - 1 SCRAM
// iterations, which keeps it inside one PQconnectPoll for minutes. The worker's watchdog
// ends the login at server_connect_timeout (+ 2 s): the client gets FATAL 08006 in time,
// and the supervisor and other sessions go on.
BOOST_AUTO_TEST_CASE(libpq_login_kept_busy_by_a_hostile_server_ends_in_time)
{
    FakeServer fake({{"slowscram", {send(sasl_list()), read(), continue_echo("2147483647"), stall()}}});
    ProxyOptions o;
    o.extra_databases = "slowscram = host=127.0.0.1 port=" + std::to_string(fake.port()) +
                        " user=slowscram password=secret sslmode=disable\n";
    Proxy p("pgwicket-slowscram", o);
    Conn bystander = connect_ok(p.conninfo());
    const auto start = Clock::now();
    Conn c = connect(p.conninfo("slowscram"));
    const long ms = long(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count());
    BOOST_TEST(PQstatus(c.get()) == CONNECTION_BAD);
    const std::string error = PQerrorMessage(c.get());
    BOOST_TEST(contains(error, "could not connect to upstream server"), error);
    BOOST_TEST(contains(error, "server_connect_timeout"), error);
    // Within the deadline, with room for a busy machine: never libpq's minutes.
    BOOST_TEST(ms < (kConnectTimeout + 20) * 1000, ms << " ms");
    BOOST_TEST(fake.connections() == 1);
    BOOST_TEST(scalar(bystander.get(), "SELECT 1") == "1", "the bystander session broke");
    check_clean_stop(p);
}

// A server that closes right after AuthenticationOk, and a bystander that goes on.
BOOST_AUTO_TEST_CASE(pass_through_server_gone_during_login)
{
    int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    BOOST_TEST_REQUIRE(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    BOOST_TEST_REQUIRE(::listen(listener, 4) == 0);
    socklen_t len = sizeof addr;
    ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len);
    ProxyOptions o;
    o.extra_settings = "auth_type = pass-through\n";
    o.extra_databases = "hostile = host=127.0.0.1 port=" + std::to_string(ntohs(addr.sin_port)) + " sslmode=disable\n";
    Proxy p("pgwicket-hostile-gone", o);
    std::thread fake([&] {
        int c = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
        if (c < 0)
            return;
        std::string head = recv_exact(c, 4);
        if (head.size() == 4)
            recv_exact(c, get32(head, 0) - 4);
        std::string ok = auth(0);
        (void)!::send(c, ok.data(), ok.size(), MSG_NOSIGNAL);
        ::close(c);
    });
    Login l = login(p.port(), "anyone");
    fake.join();
    ::close(listener);
    BOOST_TEST(l.fatal['C'] == "08006", fields_text(l.fatal));
    BOOST_TEST(contains(l.fatal['M'], "closed the connection during login"), fields_text(l.fatal));
    Conn after = connect_ok(p.conninfo());
    BOOST_TEST(scalar(after.get(), "SELECT 1") == "1");
    check_clean_stop(p);
}

BOOST_AUTO_TEST_SUITE_END()
