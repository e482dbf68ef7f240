// Unit tests for the pass-through login's rules (upstream::LoginRelay): the logins real
// servers run, and a hostile server's message at every stage, refused before the client
// sees it.
#include "upstream/login_relay.hh"

#include <boost/test/unit_test.hpp>

#include <string>
#include <vector>

using namespace pgw::upstream;
using Kind = LoginStep::Kind;

namespace {

std::string be32(std::uint32_t v)
{
    return {char(v >> 24), char(v >> 16), char(v >> 8), char(v)};
}

std::string z(const std::string& s) { return s + std::string(1, '\0'); }

std::string auth(std::uint32_t code, const std::string& data = "") { return be32(code) + data; }
std::string error_body(const std::string& fields) { return fields + std::string(1, '\0'); }
const std::string kFatal = error_body(z("SFATAL") + z("C28P01") + z("Mpassword authentication failed"));
const std::string kSaslList = auth(10, z("SCRAM-SHA-256-PLUS") + z("SCRAM-SHA-256") + std::string(1, '\0'));

// One server message, or the client's answer ('<' before the type).
struct Msg {
    char type;
    std::string body;
    bool from_client = false;
};
Msg client(const std::string& body) { return {'p', body, true}; }

// Runs a login; returns the kinds of the steps, one letter each (F forward, A ask, W wait,
// R ready, E server error, X refuse), and the last step.
std::string run(const std::vector<Msg>& msgs, LoginRelay& r, LoginStep* last = nullptr)
{
    std::string kinds;
    for (const Msg& m : msgs) {
        LoginStep s = m.from_client ? r.on_client(m.type, m.body) : r.on_server(m.type, m.body);
        kinds += "FAWREX"[int(s.kind)];
        if (last)
            *last = s;
        if (s.kind == Kind::Refuse) {
            BOOST_TEST(s.sqlstate.size() == 5u);
            BOOST_TEST(!s.message.empty());
        }
    }
    return kinds;
}

const std::vector<Msg> kAfterOk = {{'S', z("server_version") + z("15.0")}, {'K', be32(4242) + be32(0xdeadbeef)},
                                   {'Z', "I"}};

} // namespace

BOOST_AUTO_TEST_SUITE(login_relay)

BOOST_AUTO_TEST_CASE(the_logins_servers_run)
{
    {
        LoginRelay r;  // SCRAM
        std::vector<Msg> m = {{'R', kSaslList}, client("SCRAM-SHA-256..."), {'R', auth(11, "r=x,s=y,i=4096")},
                              client("c=biws..."), {'R', auth(12, "v=abc")}, {'R', auth(0)}};
        m.insert(m.end(), kAfterOk.begin(), kAfterOk.end());
        LoginStep first;
        LoginRelay probe;
        first = probe.on_server('R', kSaslList);
        BOOST_TEST(first.body == auth(10, z("SCRAM-SHA-256") + std::string(1, '\0')), "-PLUS is removed");
        BOOST_TEST(run(m, r) == "AFAFFFFWR");
        BOOST_TEST(r.backend_pid() == 4242u);
        BOOST_TEST(r.backend_secret() == 0xdeadbeefu);
        BOOST_TEST(r.status() == 'I');
    }
    {
        LoginRelay r;  // MD5, with a notice and a NegotiateProtocolVersion first
        std::vector<Msg> m = {{'v', be32(0) + be32(0)}, {'N', error_body(z("SNOTICE") + z("C00000") + z("Mhi"))},
                              {'R', auth(5, "salt")}, client(z("md5abc")), {'R', auth(0)}};
        m.insert(m.end(), kAfterOk.begin(), kAfterOk.end());
        BOOST_TEST(run(m, r) == "FFAFFFWR");
    }
    {
        LoginRelay r;  // trust, then the server's own refusal
        BOOST_TEST(run({{'R', auth(3)}, client(z("pw")), {'E', kFatal}}, r) == "AFE");
    }
    {
        LoginRelay r;  // OAUTHBEARER's success comes without a SASL final message
        BOOST_TEST(run({{'R', auth(10, z("OAUTHBEARER") + std::string(1, '\0'))}, client("n,,..."), {'R', auth(0)}}, r) ==
                   "AFF");
    }
}

// Every stage, and a message that does not belong there: refused (X), never relayed.
BOOST_AUTO_TEST_CASE(a_hostile_server_at_every_stage)
{
    struct Case {
        const char* name;
        std::vector<Msg> msgs;
        std::string kinds;
        std::string sqlstate = "08P01";
    };
    const std::vector<Msg> sasl_started = {{'R', kSaslList}, client("SCRAM-SHA-256...")};
    auto after = [](std::vector<Msg> a, const std::vector<Msg>& b) {
        a.insert(a.end(), b.begin(), b.end());
        return a;
    };
    const Case cases[] = {
        {"a DataRow first", {{'D', be32(0)}}, "X"},
        {"a ParameterStatus before authentication", {{'S', z("a") + z("b")}}, "X"},
        {"a BackendKeyData before authentication", {{'K', be32(1) + be32(2)}}, "X"},
        {"a ReadyForQuery before authentication", {{'Z', "I"}}, "X"},
        {"a SASL continue with no exchange", {{'R', auth(11, "r=x")}}, "X"},
        {"a SASL final with no exchange", {{'R', auth(12, "v=x")}}, "X"},
        {"a short authentication request", {{'R', "ab"}}, "X"},
        {"AuthenticationOk with data", {{'R', auth(0, "x")}}, "X"},
        {"an MD5 request without its salt", {{'R', auth(5)}}, "X"},
        {"a SASL list without its end", {{'R', auth(10, "SCRAM-SHA-256")}}, "X"},
        {"a SASL list with bytes after its end", {{'R', auth(10, z("SCRAM-SHA-256") + std::string(1, '\0') + "x")}}, "X"},
        {"only SCRAM-SHA-256-PLUS", {{'R', auth(10, z("SCRAM-SHA-256-PLUS") + std::string(1, '\0'))}}, "X", "28000"},
        {"GSSAPI", {{'R', auth(7)}}, "X", "0A000"},
        {"a message while the client is to answer", {{'R', kSaslList}, {'R', auth(11, "r=x")}}, "AX"},
        {"a second SASL start", after(sasl_started, {{'R', kSaslList}}), "AFX"},
        {"a password request inside SASL", after(sasl_started, {{'R', auth(3)}}), "AFX"},
        {"a SASL continue after the final", after(sasl_started, {{'R', auth(12, "v=x")}, {'R', auth(11, "r=x")}}), "AFFX"},
        {"a second password request", {{'R', auth(3)}, client(z("pw")), {'R', auth(3)}}, "AFX"},
        {"a second AuthenticationOk", {{'R', auth(0)}, {'R', auth(0)}}, "FX"},
        {"a password request after Ok", {{'R', auth(0)}, {'R', auth(3)}}, "FX"},
        {"a NegotiateProtocolVersion after Ok", {{'R', auth(0)}, {'v', be32(0) + be32(0)}}, "FX"},
        {"a CopyInResponse after Ok", {{'R', auth(0)}, {'G', std::string(3, '\0')}}, "FX"},
        {"a malformed ParameterStatus", {{'R', auth(0)}, {'S', "abc"}}, "FX"},
        {"a ParameterStatus with bytes after it", {{'R', auth(0)}, {'S', z("a") + z("b") + "c"}}, "FX"},
        {"a long BackendKeyData (its secret must not reach the client)", {{'R', auth(0)}, {'K', be32(1) + be32(2) + be32(3)}}, "FX"},
        {"a second BackendKeyData", {{'R', auth(0)}, {'K', be32(1) + be32(2)}, {'K', be32(1) + be32(2)}}, "FWX"},
        {"a ReadyForQuery with a bad status", {{'R', auth(0)}, {'Z', "Q"}}, "FX"},
        {"a ReadyForQuery of two bytes", {{'R', auth(0)}, {'Z', "II"}}, "FX"},
        {"an ErrorResponse without SQLSTATE", {{'E', error_body(z("SFATAL") + z("Mno"))}}, "X"},
        {"an ErrorResponse without a message", {{'E', error_body(z("SFATAL") + z("C28000"))}}, "X"},
        {"an empty ErrorResponse", {{'E', ""}}, "X"},
        {"an ErrorResponse without its end", {{'E', z("SFATAL") + z("C28000") + z("Mx")}}, "X"},
        {"a malformed notice", {{'N', "x"}}, "X"},
        {"anything after the end", {{'R', auth(0)}, {'Z', "I"}, {'S', z("a") + z("b")}}, "FRX"},
        {"a client message when none was asked for", {client("x")}, "X"},
    };
    for (const Case& c : cases) {
        BOOST_TEST_CONTEXT(c.name)
        {
            LoginRelay r;
            LoginStep last;
            BOOST_TEST(run(c.msgs, r, &last) == c.kinds);
            BOOST_TEST(last.sqlstate == c.sqlstate, last.message);
            BOOST_TEST(last.body.empty(), "a refused message carries bytes for someone");
        }
    }
}

BOOST_AUTO_TEST_CASE(lengths_and_floods)
{
    for (std::uint32_t len : {0u, 3u, kMaxLoginMessage + 1, 1u << 30, 0x7fffffffu, 0xffffffffu}) {
        auto s = LoginRelay::check_server_header(len);
        BOOST_TEST_REQUIRE(s.has_value(), len);
        BOOST_TEST(s->sqlstate == "08P01");
        BOOST_TEST(s->message.find(std::to_string(len)) != std::string::npos, s->message);
    }
    for (std::uint32_t len : {4u, 5u, kMaxLoginMessage})
        BOOST_TEST(!LoginRelay::check_server_header(len).has_value(), len);
    BOOST_TEST(LoginRelay::check_client_header('p', 0xffffffffu).has_value());
    BOOST_TEST(LoginRelay::check_client_header('p', kMaxClientAuthMessage + 1).has_value());
    BOOST_TEST(LoginRelay::check_client_header('Q', 10).has_value());
    BOOST_TEST(!LoginRelay::check_client_header('p', 10).has_value());

    LoginRelay r;
    BOOST_TEST(run({{'R', auth(0)}}, r) == "F");
    int forwarded = 0;
    LoginStep s;
    for (int i = 0; i < 2 * kMaxLoginMessages; ++i) {
        s = r.on_server('S', z("p" + std::to_string(i)) + z("v"));
        if (s.kind != Kind::Forward)
            break;
        ++forwarded;
    }
    BOOST_TEST(forwarded == kMaxLoginMessages - 1);  // the AuthenticationOk counted too
    BOOST_TEST(int(s.kind) == int(Kind::Refuse));
    BOOST_TEST(s.sqlstate == "08P01");
}

// The client's answers: only 'p', within its cap; the channel-binding flag refused with
// its hint when the server offered -PLUS.
BOOST_AUTO_TEST_CASE(client_answers)
{
    {
        LoginRelay r;
        r.on_server('R', kSaslList);
        LoginStep s = r.on_client('p', z("SCRAM-SHA-256") + be32(10) + "y,,n=,r=ab");
        BOOST_TEST(int(s.kind) == int(Kind::Refuse));
        BOOST_TEST(s.sqlstate == "28000");
        BOOST_TEST(!s.hint.empty());
    }
    {
        LoginRelay r;
        r.on_server('R', auth(3));
        LoginStep s = r.on_client('Q', "SELECT 1");
        BOOST_TEST(int(s.kind) == int(Kind::Refuse));
        BOOST_TEST(s.sqlstate == "08P01");
        BOOST_TEST(int(r.on_server('R', auth(0)).kind) == int(Kind::Refuse), "the login goes on after a refusal");
    }
}

BOOST_AUTO_TEST_SUITE_END()
