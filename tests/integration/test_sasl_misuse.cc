// pgwicket's own SCRAM server (auth_type = scram-sha-256) against a client that breaks
// the SASL exchange: messages out of order, repeated, an unknown mechanism, empty and
// oversized messages, lengths near UINT32_MAX inside and outside the SCRAM packet (a
// length that wraps an integer was PgBouncer's CVE-2026-6664). Every case ends in a FATAL
// with its SQLSTATE and a closed connection, and nothing crashes.
#include "harness.hh"
#include "tls_client.hh"

#include <boost/test/unit_test.hpp>

#include <string>
#include <vector>

using namespace pgw::it;

namespace {

std::string z(const std::string& s) { return s + std::string(1, '\0'); }
std::string msg(char type, const std::string& body) { return std::string(1, type) + be32(uint32_t(body.size() + 4)) + body; }
// SASLInitialResponse with an explicit inner length.
std::string initial(const std::string& mechanism, const std::string& data, uint32_t len)
{
    return msg('p', z(mechanism) + be32(len) + data);
}
std::string initial(const std::string& mechanism, const std::string& data)
{
    return initial(mechanism, data, uint32_t(data.size()));
}

const std::string kFirst = "n,,n=,r=rOprNGfwEbeRWgbNEkqOabcd";
const std::string kFinal = "c=biws,r=rOprNGfwEbeRWgbNEkqOabcd,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";

// One client step: bytes to send, or (empty) read the server's SASL continue first.
struct Step {
    std::string bytes;
    bool await_continue = false;
};
Step out(const std::string& b) { return {b, false}; }
Step after_continue(const std::string& b) { return {b, true}; }

struct Outcome {
    std::map<char, std::string> fatal;
    bool closed = false;
    std::string trace;  // what came, for messages
};

Outcome run_client(int port, const std::vector<Step>& steps)
{
    Outcome o;
    RawSocket s(port);
    s.send(startup_packet({{"user", "alice"}, {"database", "postgres"}}));
    auto sasl = s.read_message(15000);
    if (!sasl || sasl->type != 'R' || sasl->payload.size() < 4 || get32(sasl->payload, 0) != 10) {
        o.trace = "no AuthenticationSASL";
        return o;
    }
    for (const Step& st : steps) {
        if (st.await_continue) {
            auto m = s.read_message(15000);
            if (!m) {
                o.trace += "closed before the continue; ";
                break;
            }
            if (m->type == 'E') {
                o.fatal = error_fields(m->payload);
                o.trace += "E before the continue; ";
                o.closed = s.wait_closed(15000);
                return o;
            }
            o.trace += std::string(1, m->type) + (m->type == 'R' ? std::to_string(get32(m->payload, 0)) : "") + " ";
        }
        if (!s.send(st.bytes))
            break;
    }
    s.shutdown_write();
    while (auto m = s.read_message(15000)) {
        o.trace += std::string(1, m->type) + " ";
        if (m->type == 'E') {
            o.fatal = error_fields(m->payload);
            break;
        }
    }
    o.closed = s.wait_closed(15000);
    return o;
}

} // namespace

BOOST_AUTO_TEST_SUITE(sasl_misuse)

BOOST_AUTO_TEST_CASE(scram_exchange_out_of_order_and_malformed)
{
    const std::string users = env().tmpdir + "/sasl-misuse.users";
    write_file(users, userlist_line("alice", scram_verifier("alice-pw")));
    ProxyOptions o;
    o.extra_settings = "auth_type = scram-sha-256\nauth_file = " + users + "\n";
    Proxy p("pgwicket-sasl-misuse", o);

    struct Case {
        const char* name;
        std::vector<Step> steps;
        std::string sqlstate;
        std::string says;
    };
    const std::string big(200 * 1024, 'x');
    const std::vector<Case> cases = {
        {"a SASLResponse before the SASLInitialResponse", {out(msg('p', kFinal))}, "08P01", "malformed SASLInitialResponse"},
        {"a repeated SASLInitialResponse", {out(initial("SCRAM-SHA-256", kFirst)), after_continue(initial("SCRAM-SHA-256", kFirst))},
         "08P01", ""},
        {"two SASLInitialResponses at once", {out(initial("SCRAM-SHA-256", kFirst) + initial("SCRAM-SHA-256", kFirst))}, "08P01", ""},
        {"an unknown mechanism", {out(initial("SCRAM-SHA-1", kFirst))}, "08P01", "invalid SASL authentication mechanism"},
        {"an empty mechanism", {out(initial("", kFirst))}, "08P01", "invalid SASL authentication mechanism"},
        {"SCRAM-SHA-256-PLUS", {out(initial("SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,n=,r=abc"))}, "08P01",
         "channel binding"},
        {"an empty message", {out(msg('p', ""))}, "08P01", "malformed SASLInitialResponse"},
        {"an empty client-first-message", {out(initial("SCRAM-SHA-256", ""))}, "08P01", ""},
        {"an empty SASLResponse", {out(initial("SCRAM-SHA-256", kFirst)), after_continue(msg('p', ""))}, "08P01", ""},
        {"an oversized message", {out(msg('p', big))}, "08P01", "invalid password packet size"},
        {"an oversized client-first-message", {out(initial("SCRAM-SHA-256", big.substr(0, 100 * 1024)))}, "08P01", ""},
        {"a message length of UINT32_MAX", {out("p" + be32(0xffffffffu) + "SCRAM-SHA-256")}, "08P01", "invalid password packet size"},
        {"a message length of 2^31", {out("p" + be32(0x80000000u) + "SCRAM-SHA-256")}, "08P01", "invalid password packet size"},
        {"a message length of 3", {out("p" + be32(3))}, "08P01", "invalid password packet size"},
        {"an inner length of UINT32_MAX (-1)", {out(initial("SCRAM-SHA-256", kFirst, 0xffffffffu))}, "08P01",
         "malformed SASLInitialResponse"},
        {"an inner length of UINT32_MAX - 3 (wraps to the data's length minus 4)",
         {out(initial("SCRAM-SHA-256", kFirst, 0xfffffffcu))}, "08P01", "malformed SASLInitialResponse"},
        {"an inner length of 2^31 - 1", {out(initial("SCRAM-SHA-256", kFirst, 0x7fffffffu))}, "08P01",
         "malformed SASLInitialResponse"},
        {"an inner length one too long", {out(initial("SCRAM-SHA-256", kFirst, uint32_t(kFirst.size() + 1)))}, "08P01",
         "malformed SASLInitialResponse"},
        {"an inner length one too short", {out(initial("SCRAM-SHA-256", kFirst, uint32_t(kFirst.size() - 1)))}, "08P01",
         "malformed SASLInitialResponse"},
        {"an inner length cut short", {out(msg('p', z("SCRAM-SHA-256") + "\xff\xff"))}, "08P01", "malformed SASLInitialResponse"},
        {"a Query instead of the SASLInitialResponse", {out(query_message("SELECT 1"))}, "08P01", "expected a password response"},
        {"a Query instead of the SASLResponse", {out(initial("SCRAM-SHA-256", kFirst)), after_continue(query_message("SELECT 1"))},
         "08P01", "expected a password response"},
        {"a final message for another nonce", {out(initial("SCRAM-SHA-256", kFirst)), after_continue(msg('p', kFinal))}, "08P01", ""},
        {"an authorization identity", {out(initial("SCRAM-SHA-256", "n,a=bob,n=,r=abc"))}, "0A000", ""},
    };
    for (const Case& c : cases) {
        BOOST_TEST_CONTEXT(c.name)
        {
            Outcome r = run_client(p.port(), c.steps);
            BOOST_TEST(r.fatal['S'] == "FATAL", r.trace << fields_text(r.fatal));
            BOOST_TEST(r.fatal['C'] == c.sqlstate, r.trace << fields_text(r.fatal));
            BOOST_TEST(contains(r.fatal['M'], c.says), fields_text(r.fatal));
            BOOST_TEST(r.closed, "the connection is still open");
        }
    }
    BOOST_TEST(p.running());
    // The same proxy still lets the right password in.
    Conn ok = connect_ok(p.conninfo("postgres", "alice", "password=alice-pw sslmode=disable"));
    BOOST_TEST(scalar(ok.get(), "SELECT current_user") == "alice");
    ok.reset();
    check_clean_stop(p);
}

BOOST_AUTO_TEST_SUITE_END()
