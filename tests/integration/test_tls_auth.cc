// Client TLS and client authentication, end to end: sslmode per setting, verify-full against
// the test CA, client certificates, protocols, a CancelRequest inside TLS, certificate reload
// on SIGHUP; rules (auth_hba_file) and their --check-config errors; SCRAM and MD5 from an
// auth_file, --hash-password; JWT as the password, one refusal per check, and the identity.
#include "harness.hh"
#include "tls_client.hh"
#include "tls_fixtures.hh"

#include "../common/jwt_mint.hh"

#include "auth/scram.hh"

#include <boost/test/unit_test.hpp>

#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <ctime>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

using namespace pgw::it;
namespace mint = pgw::testing;
using nlohmann::json;

namespace {

using Clock = std::chrono::steady_clock;

std::string tmp_path(const std::string& name) { return env().tmpdir + "/" + name; }

void hup(const Proxy& p) { kill(p.pid(), SIGHUP); }

bool log_has(const Proxy& p, const std::string& text, size_t from = 0)
{
    std::string log = read_file(p.log_path());
    return log.size() > from && log.find(text, from) != std::string::npos;
}

long ms_since(Clock::time_point t)
{
    return static_cast<long>(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count());
}

bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

// ---- pgwicket configurations ---------------------------------------------------------------------
// (tls_settings, tls_conninfo, attempt, check_refused, first_reply and TlsClient: tls_client.hh)

// Plaintext over TCP (Proxy::conninfo already says sslmode=disable).
std::string plain_conninfo(const Proxy& p, const std::string& db = "postgres", const std::string& user = "postgres",
                           const std::string& extra = "")
{
    return p.conninfo(db, user, extra);
}

std::string unix_conninfo(const Proxy& p, const std::string& db = "postgres", const std::string& user = "postgres")
{
    return "host=" + p.unix_dir() + " port=" + std::to_string(p.port()) + " dbname=" + db + " user=" + user +
           " connect_timeout=10";
}

// ---- TLS ---------------------------------------------------------------------------------------------

// The subject of the server certificate a libpq connection saw, "/O=.../CN=...".
std::string peer_subject(PGconn* c)
{
    auto* ssl = static_cast<SSL*>(PQsslStruct(c, "OpenSSL"));
    if (!ssl)
        return "<no TLS>";
    X509* cert = SSL_get1_peer_certificate(ssl);
    if (!cert)
        return "<no peer certificate>";
    char buf[512];
    X509_NAME_oneline(X509_get_subject_name(cert), buf, sizeof buf);
    X509_free(cert);
    return buf;
}

constexpr uint32_t kCancelCode = 80877102;

std::string cancel_packet(uint32_t pid, uint32_t secret)
{
    return be32(16) + be32(kCancelCode) + be32(pid) + be32(secret);
}

// Backends whose application_name contains `tag` and that are in a pg_sleep now.
class Monitor {
public:
    Monitor() : c_(connect_ok(env().direct("postgres", "postgres", "application_name=pgw_it_tls_monitor"))) {}
    bool wait_sleeping(const std::string& tag, int timeout_ms = 15000)
    {
        return wait_for(
            [&] {
                return scalar(c_.get(), "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND "
                                        "application_name LIKE '%" +
                                            tag + "%' AND query LIKE '%pg_sleep%'") != "0";
            },
            timeout_ms);
    }

private:
    Conn c_;
};

// ---- JWT -----------------------------------------------------------------------------------------

constexpr const char* kIssuer = "https://login.example.test/tenant-id/v2.0";
constexpr const char* kAudience = "api://pgwicket-it";
constexpr const char* kSecondAudience = "api://pgwicket-it-second";

std::int64_t unix_now() { return static_cast<std::int64_t>(std::time(nullptr)); }

json claims_for(const std::string& identity)
{
    const std::int64_t now = unix_now();
    return {{"iss", kIssuer},  {"aud", kAudience},    {"exp", now + 600},
            {"iat", now - 5},  {"nbf", now - 5},      {"sub", "00u-it-" + identity},
            {"email", identity}, {"groups", json::array({"dba", "oncall"})}};
}

std::string token_for(const std::string& identity) { return mint::mint(claims_for(identity)); }

const std::string& jwks_path()
{
    static std::string path;
    if (path.empty()) {
        path = tmp_path("jwks.json");
        mint::write_jwks_file(path);
    }
    return path;
}

// [pgwicket] lines for JWT: TLS offered (prefer, so plaintext can be tried), the test JWKS.
std::string jwt_settings(const std::string& auth_type = "jwt")
{
    return tls_settings("prefer") + "auth_type = " + auth_type + "\n" + "jwt_jwks_file = " + jwks_path() + "\n" +
           "jwt_issuer = " + kIssuer + "\n" + "jwt_audience = " + kAudience + ", " + kSecondAudience + "\n";
}

// Goes after [databases].
const char* kIdentityMap = "[identity_map]\n"
                           "alice@example.com = alice, readonly\n"
                           "oncall@example.com = boss\n";

// Where `text` shows `token` or a piece of it (its signature, any 16 characters of its first
// 4 KiB); empty when it shows none.
std::string token_leak(const std::string& text, const std::string& token)
{
    if (token.empty())
        return "";
    if (contains(text, token))
        return "the whole token";
    size_t dot = token.rfind('.');
    if (dot != std::string::npos && token.size() - dot > 8 && contains(text, token.substr(dot + 1)))
        return "the token's signature";
    const size_t span = std::min<size_t>(token.size(), 4096);
    for (size_t i = 0; i + 16 <= span; i += 5)
        if (contains(text, token.substr(i, 16)))
            return "token characters " + std::to_string(i) + ".." + std::to_string(i + 16);
    return "";
}

std::string with_token(const std::string& token) { return "password=" + quoted(token); }

// psql -tA: bare values, one a line.
PsqlOptions tuples_only(EnvOverrides e = {})
{
    PsqlOptions o;
    o.args = {"-tA"};
    o.env = std::move(e);
    return o;
}

RunOptions with_input(const std::string& input)
{
    RunOptions o;
    o.input = input;
    return o;
}

} // namespace

// =================================================================================================

BOOST_AUTO_TEST_SUITE(tls_auth)

// ---- server TLS ------------------------------------------------------------------------------------

// The fixtures themselves: a broken CA would make every TLS test fail for the wrong reason.
BOOST_AUTO_TEST_CASE(tls_fixtures_verify)
{
    const TlsFiles& t = tls_files();
    for (const auto& [cert, ca, good] :
         std::vector<std::tuple<std::string, std::string, bool>>{{t.server_cert, t.ca_cert, true},
                                                                 {t.rotated_cert, t.ca_cert, true},
                                                                 {t.client_cert, t.ca_cert, true},
                                                                 {t.other_client_cert, t.other_ca_cert, true},
                                                                 {t.server_cert, t.other_ca_cert, false},
                                                                 {t.other_client_cert, t.ca_cert, false}}) {
        RunResult r = run({"openssl", "verify", "-CAfile", ca, cert});
        BOOST_TEST(r.ok() == good, cert << " against " << ca << ": " << r.out);
    }
    RunResult san = run({"openssl", "x509", "-in", t.server_cert, "-noout", "-ext", "subjectAltName"});
    BOOST_TEST(contains(san.out, "DNS:localhost"), san.out);
    BOOST_TEST(contains(san.out, "IP Address:127.0.0.1"), san.out);
    RunResult subj = run({"openssl", "x509", "-in", t.rotated_cert, "-noout", "-subject"});
    BOOST_TEST(contains(subj.out, "O = rotated"), subj.out);
}

// SSLRequest is answered 'N' under disable (the default) and 'S' otherwise; under require a
// plaintext StartupMessage gets FATAL 28000 "requires TLS".
BOOST_AUTO_TEST_CASE(sslrequest_answer_and_plaintext_per_mode)
{
    for (const std::string mode : {"default", "disable", "allow", "prefer", "require"}) {
        BOOST_TEST_CONTEXT("client_tls_sslmode = " << mode)
        {
            std::unique_ptr<Proxy> own;
            if (mode != "default") {
                ProxyOptions o;
                o.extra_settings = tls_settings(mode);
                own = std::make_unique<Proxy>("pgwicket-tls-" + mode, o);
            }
            Proxy& p = own ? *own : *env().proxy;
            {
                RawSocket s(p.port());
                s.send(ssl_request());
                std::string answer = s.read_exact(1, 10000);
                BOOST_TEST(answer == (mode == "default" || mode == "disable" ? "N" : "S"));
            }
            if (mode != "default" && mode != "disable") {
                TlsClient t(p.port(), tls_files().ca_cert);
                t.send(startup_packet({{"user", "postgres"}, {"database", "postgres"}}));
                auto msgs = t.read_until_ready(15000);
                BOOST_TEST((!msgs.empty() && msgs.back().type == 'Z'),
                           "login over TLS: " << (msgs.empty() ? "nothing" : describe(msgs.back())));
            }
            auto reply = first_reply(p, "postgres");
            if (mode == "require") {
                BOOST_TEST_REQUIRE((reply && reply->type == 'E'), describe(reply));
                auto f = error_fields(reply->payload);
                BOOST_TEST(f['S'] == "FATAL", fields_text(f));
                BOOST_TEST(f['C'] == "28000", fields_text(f));
                BOOST_TEST(contains(f['M'], "requires TLS"), fields_text(f));
                check_refused(attempt(plain_conninfo(p)), "28000", "requires TLS");
            } else {
                BOOST_TEST((reply && reply->type == 'R'), describe(reply));
                check_connected(attempt(plain_conninfo(p)));
            }
            if (own)
                check_clean_stop(*own);
        }
    }
}

// psql "sslmode=verify-full sslrootcert=ca.pem host=localhost" works; against an unrelated CA
// it does not.
BOOST_AUTO_TEST_CASE(verify_full_with_the_test_ca)
{
    ProxyOptions o;
    o.extra_settings = tls_settings("require");
    Proxy p("pgwicket-tls-verify", o);

    Conn c = connect_ok(tls_conninfo(p));
    BOOST_TEST(PQsslInUse(c.get()) == 1);
    BOOST_TEST(scalar(c.get(), "SELECT 1") == "1");
    const char* proto = PQsslAttribute(c.get(), "protocol");
    const std::string protocol = proto ? proto : "";
    BOOST_TEST((protocol == "TLSv1.2" || protocol == "TLSv1.3"), protocol);
    BOOST_TEST(contains(peer_subject(c.get()), "CN=localhost"), peer_subject(c.get()));

    RunResult r = psql(tls_conninfo(p), "SELECT 'over tls';", tuples_only());
    BOOST_TEST(r.ok(), r.status() << ": " << r.out);
    BOOST_TEST(contains(r.out, "over tls"), r.out);

    const std::string other = "host=localhost hostaddr=127.0.0.1 port=" + std::to_string(p.port()) +
                              " dbname=postgres user=postgres sslmode=verify-full sslrootcert=" +
                              tls_files().other_ca_cert + " connect_timeout=10";
    Attempt bad = attempt(other);
    BOOST_TEST(!bad.ok, "verify-full against an unrelated CA connected");
    BOOST_TEST(contains(bad.full, "certificate verify failed"), bad.full);
    RunResult rp = psql(other, "SELECT 1;");
    BOOST_TEST(!rp.ok(), rp.out);

    c.reset();
    check_clean_stop(p);
}

// With client_tls_ca_file, a client certificate is asked for and, when presented, verified;
// a client without one still gets in.
BOOST_AUTO_TEST_CASE(client_certificates_are_verified_when_presented)
{
    const TlsFiles& t = tls_files();
    ProxyOptions o;
    o.extra_settings = tls_settings("require") + "client_tls_ca_file = " + t.ca_cert + "\n";
    Proxy p("pgwicket-tls-clientcert", o);

    // An explicit missing sslcert, so no ~/.postgresql/postgresql.crt is picked up.
    check_connected(attempt(tls_conninfo(p, "postgres", "postgres", "sslcert=" + tmp_path("no-such.crt"))));
    Attempt good =
        attempt(tls_conninfo(p, "postgres", "postgres", "sslcert=" + t.client_cert + " sslkey=" + t.client_key));
    check_connected(good);
    if (good.ok)
        BOOST_TEST(scalar(good.conn.get(), "SELECT 2") == "2");
    Attempt foreign = attempt(
        tls_conninfo(p, "postgres", "postgres", "sslcert=" + t.other_client_cert + " sslkey=" + t.other_client_key));
    BOOST_TEST(!foreign.ok, "a client certificate from an unrelated CA was accepted");
    good.conn.reset();
    check_clean_stop(p);
}

// client_tls_protocols and client_tls_ciphers limit what the handshake may pick.
BOOST_AUTO_TEST_CASE(protocols_and_ciphers)
{
    {
        ProxyOptions o;
        o.extra_settings = tls_settings("require") + "client_tls_protocols = tlsv1.3\n";
        Proxy p("pgwicket-tls13", o);
        Attempt a = attempt(tls_conninfo(p));
        check_connected(a);
        if (a.ok)
            BOOST_TEST(std::string(PQsslAttribute(a.conn.get(), "protocol")) == "TLSv1.3");
        Attempt old = attempt(tls_conninfo(p, "postgres", "postgres", "ssl_max_protocol_version=TLSv1.2"));
        BOOST_TEST(!old.ok, "a TLS 1.2 client got in although only tlsv1.3 is allowed");
        a.conn.reset();
        check_clean_stop(p);
    }
    {
        const std::string cipher = "ECDHE-RSA-AES128-GCM-SHA256";
        ProxyOptions o;
        o.extra_settings = tls_settings("require") + "client_tls_protocols = tlsv1.2\nclient_tls_ciphers = " + cipher +
                           "\n";
        Proxy p("pgwicket-tls12", o);
        Attempt a = attempt(tls_conninfo(p));
        check_connected(a);
        if (a.ok) {
            BOOST_TEST(std::string(PQsslAttribute(a.conn.get(), "protocol")) == "TLSv1.2");
            BOOST_TEST(std::string(PQsslAttribute(a.conn.get(), "cipher")) == cipher);
        }
        Attempt newer = attempt(tls_conninfo(p, "postgres", "postgres", "ssl_min_protocol_version=TLSv1.3"));
        BOOST_TEST(!newer.ok, "a TLS 1.3-only client got in although only tlsv1.2 is allowed");
        a.conn.reset();
        check_clean_stop(p);
    }
}

// libpq 17 sends its CancelRequest inside TLS. The whole session runs over a hand-made TLS
// client, since libpq does not hand out the cancel secret.
BOOST_AUTO_TEST_CASE(cancel_request_inside_tls)
{
    ProxyOptions o;
    o.extra_settings = tls_settings("require");
    Proxy p("pgwicket-tls-cancel", o);
    const std::string ca = tls_files().ca_cert;

    TlsClient session(p.port(), ca);
    session.send(startup_packet({{"user", "postgres"}, {"database", "postgres"}, {"application_name", "tls_cancel"}}));
    std::optional<std::pair<uint32_t, uint32_t>> key;
    bool ready = false;
    for (const auto& m : session.read_until_ready(15000)) {
        if (m.type == 'K' && m.payload.size() == 8)
            key = std::make_pair(get32(m.payload, 0), get32(m.payload, 4));
        if (m.type == 'E')
            BOOST_FAIL("login over TLS failed: " << fields_text(error_fields(m.payload)));
        ready = ready || m.type == 'Z';
    }
    BOOST_TEST_REQUIRE(ready);
    BOOST_TEST_REQUIRE(key.has_value(), "no BackendKeyData");

    Monitor mon;
    BOOST_TEST_REQUIRE(session.send(query_message("SELECT pg_sleep(30)")));
    BOOST_TEST_REQUIRE(mon.wait_sleeping("tls_cancel"), p.log_tail());

    const auto t0 = Clock::now();
    {
        TlsClient canceller(p.port(), ca);
        BOOST_TEST(canceller.send(cancel_packet(key->first, key->second)));
        BOOST_TEST(canceller.wait_closed(10000), "pgwicket kept the cancel connection open");
    }
    std::map<char, std::string> error;
    char status = 0;
    while (auto m = session.read_message(25000)) {
        if (m->type == 'E' && error.empty())
            error = error_fields(m->payload);
        if (m->type == 'Z') {
            status = m->payload.empty() ? '?' : m->payload[0];
            break;
        }
    }
    BOOST_TEST(error['C'] == "57014", fields_text(error) << "; log:\n" << p.log_tail());
    BOOST_TEST(status == 'I');
    BOOST_TEST(ms_since(t0) < 20000, "the cancel took " << ms_since(t0) << " ms");
    session.send(terminate_message());
    check_clean_stop(p);
}

// libpq up to 16 sends its CancelRequest in plaintext even when the session is TLS; under
// require that must still work, as it does with PostgreSQL (a cancel is not a login).
BOOST_AUTO_TEST_CASE(plaintext_cancel_request_under_require)
{
    ProxyOptions o;
    o.extra_settings = tls_settings("require");
    Proxy p("pgwicket-tls-plaincancel", o);
    Conn c = connect_ok(tls_conninfo(p, "postgres", "postgres", "application_name=tls_plain_cancel"));
    Monitor mon;
    BOOST_TEST_REQUIRE(PQsendQuery(c.get(), "SELECT pg_sleep(30)") == 1);
    BOOST_TEST_REQUIRE(mon.wait_sleeping("tls_plain_cancel"), p.log_tail());
    std::unique_ptr<PGcancel, void (*)(PGcancel*)> cancel(PQgetCancel(c.get()), PQfreeCancel);
    char err[256] = "";
    BOOST_TEST(PQcancel(cancel.get(), err, sizeof err) == 1, err);
    Result r(PQgetResult(c.get()));
    const char* state = PQresultErrorField(r.get(), PG_DIAG_SQLSTATE);
    BOOST_TEST(std::string(state ? state : "") == "57014", PQresultErrorMessage(r.get()));
    while (PGresult* rest = PQgetResult(c.get()))
        PQclear(rest);
    c.reset();
    check_clean_stop(p);
}

// Certificates reload on SIGHUP: new sessions see the new certificate, a session from before
// keeps working.
BOOST_AUTO_TEST_CASE(certificate_reload_on_sighup)
{
    const TlsFiles& t = tls_files();
    const std::string cert = tmp_path("reload-server.crt"), key = tmp_path("reload-server.key");
    copy_tls_file(t.server_cert, cert);
    copy_tls_file(t.server_key, key);
    ProxyOptions o;
    o.extra_settings = tls_settings("require", cert, key);
    Proxy p("pgwicket-tls-reload", o);

    Conn before = connect_ok(tls_conninfo(p, "postgres", "postgres", "application_name=before_reload"));
    const std::string first = peer_subject(before.get());
    BOOST_TEST(contains(first, "CN=localhost"), first);
    BOOST_TEST(!contains(first, "O=rotated"), first);

    copy_tls_file(t.rotated_key, key);
    copy_tls_file(t.rotated_cert, cert);
    const size_t mark = p.log_size();
    hup(p);
    BOOST_TEST_REQUIRE(wait_for([&] { return log_has(p, "configuration reloaded", mark); }), p.log_tail());

    Conn after = connect_ok(tls_conninfo(p));
    const std::string second = peer_subject(after.get());
    BOOST_TEST(contains(second, "O=rotated"), second);
    BOOST_TEST(scalar(after.get(), "SELECT 'after'") == "after");
    BOOST_TEST(scalar(before.get(), "SELECT 'before still works'") == "before still works");
    BOOST_TEST(PQstatus(before.get()) == CONNECTION_OK);

    before.reset();
    after.reset();
    check_clean_stop(p);
}

// ---- rules ---------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(auth_type_reject)
{
    ProxyOptions o;
    o.extra_settings = "auth_type = reject\n";
    Proxy p("pgwicket-auth-reject", o);
    check_refused(attempt(plain_conninfo(p)), "28000", "rejects connection");
    check_refused(attempt(plain_conninfo(p, "postgres", "alice")), "28000", "rejects connection");
    check_clean_stop(p);
}

// The first matching rule decides; rules for another connection type or address are skipped.
BOOST_AUTO_TEST_CASE(hba_rules_first_match_wins)
{
    const std::string hba = tmp_path("order.hba");
    write_file(hba, "# pgwicket rules for the ordering test: the first match wins\n"
                    "local     all                 postgres                   reject\n"
                    "local     all                 all                        trust\n"
                    "\n"
                    "# bob is refused before the catch-all trust further down\n"
                    "host      all                 bob        0.0.0.0/0       reject\n"
                    "# 127.0.0.1 is not in 10/8: skipped\n"
                    "host      all                 all        10.0.0.0/8      reject\n"
                    "hostssl   all                 alice      127.0.0.1/32    trust\n"
                    "host      all                 alice      all             reject\n"
                    "hostnossl template1           all        127.0.0.1/32    reject\n"
                    "host      postgres,template1  all        127.0.0.1/32    trust\n");
    ProxyOptions o;
    o.extra_settings = tls_settings("prefer") + "auth_type = hba\nauth_hba_file = " + hba + "\n";
    Proxy p("pgwicket-hba-order", o);
    ensure_role("bob");

    BOOST_TEST_CONTEXT("bob, plaintext and TLS: rejected before the trust rule")
    {
        check_refused(attempt(plain_conninfo(p, "postgres", "bob")), "28000", "rejects connection");
        check_refused(attempt(tls_conninfo(p, "postgres", "bob")), "28000", "rejects connection");
    }
    BOOST_TEST_CONTEXT("postgres over TCP: the 10/8 reject is skipped, the trust rule matches")
    {
        Attempt a = attempt(plain_conninfo(p));
        check_connected(a);
        BOOST_TEST(current_user(a) == "postgres");
    }
    BOOST_TEST_CONTEXT("alice over TLS: hostssl trust")
    {
        Attempt a = attempt(tls_conninfo(p, "postgres", "alice"));
        check_connected(a);
        BOOST_TEST(current_user(a) == "alice");
    }
    BOOST_TEST_CONTEXT("alice in plaintext: hostssl skipped, the reject after it matches")
    {
        check_refused(attempt(plain_conninfo(p, "postgres", "alice")), "28000", "rejects connection");
    }
    BOOST_TEST_CONTEXT("template1: hostnossl rejects plaintext only")
    {
        check_refused(attempt(plain_conninfo(p, "template1")), "28000", "rejects connection");
        check_connected(attempt(tls_conninfo(p, "template1")));
    }
    BOOST_TEST_CONTEXT("unix socket: local rules")
    {
        check_refused(attempt(unix_conninfo(p)), "28000", "rejects connection");
        check_connected(attempt(unix_conninfo(p, "postgres", "alice")));
    }
    BOOST_TEST_CONTEXT("no rule for database asalice")
    {
        Attempt a = attempt(plain_conninfo(p, "asalice"));
        check_refused(a, "28000", "no pgwicket rule for host \"");
        BOOST_TEST(starts_with(a.message, "no pgwicket rule for host \""), a.full);
        BOOST_TEST(contains(a.message, "127.0.0.1"), a.full);
    }
    check_clean_stop(p);
}

// --check-config reads the rules file too and names its path and line.
BOOST_AUTO_TEST_CASE(hba_errors_name_file_and_line)
{
    const std::string head = "# rules\n"
                             "host all postgres 127.0.0.1/32 trust\n";
    struct Case {
        std::string name, line, mention;
    };
    const std::vector<Case> cases = {
        {"method", "host all all 127.0.0.1/32 trustme\n", "trustme"},
        {"cidr", "host all all 127.0.0.1/33 trust\n", "127.0.0.1/33"},
        {"type", "hots all all 127.0.0.1/32 trust\n", "hots"},
        {"no_method", "host all all 127.0.0.1/32\n", ""},
        {"local_with_address", "local all all 127.0.0.1/32 trust\n", ""},
        {"unknown_option", "host all all all jwt color=blue\n", "color=blue"},
    };
    auto config = [](const std::string& hba_path) {
        return "[pgwicket]\nlisten_addr = 127.0.0.1\nlisten_port = 6432\nauth_type = hba\nauth_hba_file = " +
               hba_path + "\n[databases]\n* = host=127.0.0.1\n";
    };
    for (const auto& c : cases) {
        BOOST_TEST_CONTEXT("case " << c.name)
        {
            const std::string hba = tmp_path("bad-" + c.name + ".hba");
            const std::string ini = tmp_path("bad-hba-" + c.name + ".ini");
            write_file(hba, head + c.line);
            write_file(ini, config(hba));
            RunResult r = run({env().pgwicket_bin, "--check-config", "-c", ini});
            BOOST_TEST(r.exit_code != 0, r.status() << ": " << r.out);
            BOOST_TEST(r.exit_code != -1, "crashed: " << r.status());
            BOOST_TEST(contains(r.out, hba + ":3"), "expected \"" << hba << ":3\" in:\n" << r.out);
            BOOST_TEST(contains(r.out, c.mention), "expected \"" << c.mention << "\" in:\n" << r.out);
        }
    }
    // A missing file is named too.
    const std::string ini = tmp_path("missing-hba.ini");
    write_file(ini, config(tmp_path("no-such.hba")));
    RunResult missing = run({env().pgwicket_bin, "--check-config", "-c", ini});
    BOOST_TEST(missing.exit_code != 0, missing.status() << ": " << missing.out);
    BOOST_TEST(contains(missing.out, tmp_path("no-such.hba")), missing.out);
    // And a good one passes, with every type, list and option spelled as documented.
    const std::string good_hba = tmp_path("good.hba");
    write_file(good_hba, "# every shape\n"
                         "local     all               all                       trust\n"
                         "host      postgres,tlsdb    alice,bob  10.0.0.0/8     reject\n"
                         "hostssl   all               all        0.0.0.0/0      jwt allow_plaintext=0\n"
                         "hostnossl all               all        127.0.0.0/8    scram-sha-256\n"
                         "host      all               all        all            md5   # a trailing comment\n");
    const std::string good_ini = tmp_path("good-hba.ini");
    // jwt rules need their settings; md5/scram need an auth_file.
    write_file(tmp_path("good-hba.users"), userlist_line("alice", scram_verifier("x")));
    write_file(good_ini, "[pgwicket]\nlisten_addr = 127.0.0.1\nlisten_port = 6432\nauth_type = hba\n"
                         "auth_hba_file = " + good_hba + "\nauth_file = " + tmp_path("good-hba.users") + "\n" +
                             "jwt_jwks_file = " + jwks_path() + "\njwt_issuer = " + kIssuer +
                             "\njwt_audience = " + kAudience + "\n[databases]\n* = host=127.0.0.1\n");
    RunResult ok = run({env().pgwicket_bin, "--check-config", "-c", good_ini});
    BOOST_TEST(ok.exit_code == 0, ok.status() << ": " << ok.out);
}

// ---- SCRAM and MD5 from auth_file ----------------------------------------------------------------

BOOST_AUTO_TEST_CASE(scram_from_auth_file)
{
    const std::string users = tmp_path("scram.users");
    write_file(users, "; pgwicket auth_file for the SCRAM test\n" + userlist_line("alice", scram_verifier("alice-pw")) +
                          userlist_line("postgres", pgw::auth::scram::make_md5_verifier("md5-pw", "postgres")));
    ProxyOptions o;
    o.extra_settings = "auth_type = scram-sha-256\nauth_file = " + users + "\n";
    Proxy p("pgwicket-scram", o);

    // The exchange is SASL with SCRAM-SHA-256 offered.
    auto reply = first_reply(p, "alice");
    BOOST_TEST(auth_code(reply) == 10, describe(reply));
    if (auth_code(reply) == 10)
        BOOST_TEST(contains(reply->payload, "SCRAM-SHA-256"));

    Attempt a = attempt(plain_conninfo(p, "postgres", "alice", "password=alice-pw"));
    check_connected(a);
    BOOST_TEST(current_user(a) == "alice");
    RunResult r = psql(plain_conninfo(p, "postgres", "alice"), "SELECT current_user;",
                       tuples_only({{"PGPASSWORD", "alice-pw"}}));
    BOOST_TEST(r.ok(), r.status() << ": " << r.out);
    BOOST_TEST(contains(r.out, "alice"), r.out);

    BOOST_TEST_CONTEXT("wrong password")
    {
        check_refused(attempt(plain_conninfo(p, "postgres", "alice", "password=alice-PW")), "28P01",
                      "password authentication failed for user \"alice\"");
    }
    BOOST_TEST_CONTEXT("unknown user: the same failure")
    {
        check_refused(attempt(plain_conninfo(p, "postgres", "nobody", "password=alice-pw")), "28P01",
                      "password authentication failed for user \"nobody\"");
    }
    BOOST_TEST_CONTEXT("an md5 entry is not accepted under scram-sha-256")
    {
        check_refused(attempt(plain_conninfo(p, "postgres", "postgres", "password=md5-pw")), "28P01",
                      "password authentication failed for user \"postgres\"");
    }
    const std::string log = read_file(p.log_path());
    BOOST_TEST(!contains(log, "alice-pw"), "the log shows a password");
    a.conn.reset();
    check_clean_stop(p);
}

BOOST_AUTO_TEST_CASE(md5_when_configured)
{
    const std::string users = tmp_path("md5.users");
    write_file(users, userlist_line("postgres", pgw::auth::scram::make_md5_verifier("md5-pw", "postgres")));
    ProxyOptions o;
    o.extra_settings = "auth_type = md5\nauth_file = " + users + "\n";
    Proxy p("pgwicket-md5", o);
    auto reply = first_reply(p, "postgres");
    BOOST_TEST(auth_code(reply) == 5, describe(reply));
    Attempt a = attempt(plain_conninfo(p, "postgres", "postgres", "password=md5-pw"));
    check_connected(a);
    BOOST_TEST(current_user(a) == "postgres");
    check_refused(attempt(plain_conninfo(p, "postgres", "postgres", "password=md5-PW")), "28P01",
                  "password authentication failed for user \"postgres\"");
    a.conn.reset();
    check_clean_stop(p);
}

// `SELECT rolpassword FROM pg_authid` of a real PostgreSQL, pasted into auth_file, works.
BOOST_AUTO_TEST_CASE(verifier_pasted_from_pg_authid)
{
    direct_exec("DROP ROLE IF EXISTS pgw_pasted; SET password_encryption = 'scram-sha-256'; "
                "CREATE ROLE pgw_pasted LOGIN PASSWORD 'pasted-from-pg'");
    const std::string verifier = direct_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = 'pgw_pasted'");
    BOOST_TEST_REQUIRE(starts_with(verifier, "SCRAM-SHA-256$"), verifier);
    const std::string users = tmp_path("pasted.users");
    write_file(users, userlist_line("pgw_pasted", verifier));
    ProxyOptions o;
    o.extra_settings = "auth_type = scram-sha-256\nauth_file = " + users + "\n";
    Proxy p("pgwicket-scram-pasted", o);
    Attempt a = attempt(plain_conninfo(p, "postgres", "pgw_pasted", "password=pasted-from-pg"));
    check_connected(a);
    BOOST_TEST(current_user(a) == "pgw_pasted");
    check_refused(attempt(plain_conninfo(p, "postgres", "pgw_pasted", "password=pasted-from-pgx")), "28P01",
                  "password authentication failed for user \"pgw_pasted\"");
    a.conn.reset();
    check_clean_stop(p);
}

// `pgwicket --hash-password USER` reads a password line and prints an auth_file line.
BOOST_AUTO_TEST_CASE(hash_password_output_is_an_auth_file_line)
{
    const std::string password = "hashed by pgwicket";
    RunResult h = run({env().pgwicket_bin, "--hash-password", "alice"}, with_input(password + "\n"));
    BOOST_TEST_REQUIRE(h.ok(), h.status() << ": " << h.out);
    static const std::regex line_re("^\"alice\" \"SCRAM-SHA-256\\$[0-9]+:[A-Za-z0-9+/=]+\\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+\"$");
    std::string line;
    std::istringstream in(h.out);
    for (std::string l; std::getline(in, l);)
        if (std::regex_match(l, line_re))
            line = l;
    BOOST_TEST_REQUIRE(!line.empty(), "no auth_file line in:\n" << h.out);
    BOOST_TEST(!contains(h.out, password), "the output shows the password");

    const std::string users = tmp_path("hashed.users");
    write_file(users, line + "\n");
    ProxyOptions o;
    o.extra_settings = "auth_type = scram-sha-256\nauth_file = " + users + "\n";
    Proxy p("pgwicket-scram-hashed", o);
    RunResult r = psql(plain_conninfo(p, "postgres", "alice"), "SELECT current_user;",
                       tuples_only({{"PGPASSWORD", password}}));
    BOOST_TEST(r.ok(), r.status() << ": " << r.out);
    BOOST_TEST(contains(r.out, "alice"), r.out);
    check_refused(attempt(plain_conninfo(p, "postgres", "alice", "password=" + quoted(password + "!"))), "28P01",
                  "password authentication failed");
    check_clean_stop(p);
}

// ---- JWT -------------------------------------------------------------------------------------------

// A token as the password over TLS; identity equal to the user, or mapped in [identity_map].
BOOST_AUTO_TEST_CASE(jwt_login_over_tls_and_identity_map)
{
    ensure_role("carol@example.com");
    ensure_role("readonly");
    ProxyOptions o;
    o.extra_settings = jwt_settings();
    o.extra_sections = kIdentityMap;
    Proxy p("pgwicket-jwt", o);

    BOOST_TEST_CONTEXT("the identity is the user")
    {
        Attempt a = attempt(tls_conninfo(p, "postgres", "carol@example.com", with_token(token_for("carol@example.com"))));
        check_connected(a);
        BOOST_TEST(current_user(a) == "carol@example.com");
    }
    BOOST_TEST_CONTEXT("mapped: alice@example.com may log in as alice and readonly")
    {
        const std::string token = token_for("alice@example.com");
        Attempt a = attempt(tls_conninfo(p, "postgres", "alice", with_token(token)));
        check_connected(a);
        BOOST_TEST(current_user(a) == "alice");
        Attempt ro = attempt(tls_conninfo(p, "postgres", "readonly", with_token(token)));
        check_connected(ro);
        BOOST_TEST(current_user(ro) == "readonly");
        check_refused(attempt(tls_conninfo(p, "postgres", "postgres", with_token(token))), "28000",
                      "may not connect as");
    }
    BOOST_TEST_CONTEXT("an identity without a mapping may not use another user")
    {
        check_refused(attempt(tls_conninfo(p, "postgres", "alice", with_token(token_for("dave@example.com")))),
                      "28000", "may not connect as");
    }
    BOOST_TEST_CONTEXT("jwt_audience is a list; exp within the default 60 s leeway")
    {
        json c = claims_for("alice@example.com");
        c["aud"] = kSecondAudience;
        c["exp"] = unix_now() - 20;
        check_connected(attempt(tls_conninfo(p, "postgres", "alice", with_token(mint::mint(c)))));
    }
    BOOST_TEST_CONTEXT("psql with PGPASSWORD")
    {
        RunResult r = psql(tls_conninfo(p, "postgres", "alice"), "SELECT current_user;",
                           tuples_only({{"PGPASSWORD", token_for("alice@example.com")}}));
        BOOST_TEST(r.ok(), r.status() << ": " << r.out);
        BOOST_TEST(contains(r.out, "alice"), r.out);
    }
    check_clean_stop(p);
}

// jwt_identity_claim names the claim that carries the identity; jwt_leeway the clock skew
// allowed.
BOOST_AUTO_TEST_CASE(jwt_identity_claim_and_leeway_are_configurable)
{
    ensure_role("carol@example.com");
    ProxyOptions o;
    o.extra_settings = jwt_settings() + "jwt_identity_claim = preferred_username\njwt_leeway = 0\n";
    Proxy p("pgwicket-jwt-claims", o);
    json c = claims_for("not-carol@example.com");
    c["preferred_username"] = "carol@example.com";
    Attempt a = attempt(tls_conninfo(p, "postgres", "carol@example.com", with_token(mint::mint(c))));
    check_connected(a);
    BOOST_TEST(current_user(a) == "carol@example.com");
    BOOST_TEST_CONTEXT("the email claim is not the identity here")
    {
        check_refused(attempt(tls_conninfo(p, "postgres", "not-carol@example.com", with_token(mint::mint(c)))),
                      "28000", "may not connect as");
    }
    BOOST_TEST_CONTEXT("a token without the claim")
    {
        check_refused(attempt(tls_conninfo(p, "postgres", "carol@example.com",
                                           with_token(token_for("carol@example.com")))),
                      "28P01", "preferred_username");
    }
    BOOST_TEST_CONTEXT("no leeway: expired 20 s ago is expired")
    {
        c["exp"] = unix_now() - 20;
        check_refused(attempt(tls_conninfo(p, "postgres", "carol@example.com", with_token(mint::mint(c)))), "28P01",
                      "expired");
    }
    a.conn.reset();
    check_clean_stop(p);
}

// One refusal per check, each FATAL 28P01 with a message a person can act on and without the
// token; the log never shows the token either.
BOOST_AUTO_TEST_CASE(jwt_refusals_one_per_check)
{
    ProxyOptions o;
    o.extra_settings = jwt_settings();
    o.extra_sections = kIdentityMap;
    Proxy p("pgwicket-jwt-refusals", o);

    const std::int64_t now = unix_now();
    const json good = claims_for("alice@example.com");
    const std::string good_token = mint::mint(good);
    auto with = [&](const std::string& claim, const json& value) {
        json c = good;
        c[claim] = value;
        return mint::mint(c);
    };
    struct Case {
        std::string name, token, mention;
    };
    const std::vector<Case> cases = {
        {"bad signature", mint::with_flipped_signature(good_token), "signature"},
        {"signed by a key the JWKS does not have", mint::mint(good, "RS256", "rsa-1", mint::TestKeys::get().rsa_other.get()),
         "signature"},
        {"wrong aud", with("aud", "api://someone-else"), "audience"},
        {"wrong iss", with("iss", "https://evil.example.test/"), "issuer"},
        {"expired", with("exp", now - 600), "expired"},
        {"not yet valid", with("nbf", now + 600), "not valid until"},
        {"alg none", mint::unsigned_token({{"alg", "none"}, {"kid", "rsa-1"}, {"typ", "JWT"}}, good), "'none'"},
        {"HS256 keyed with the public key", mint::hs256_with_public_key(good), "HS256"},
        {"unknown kid", mint::mint(good, "RS256", "kid-nobody-knows"), "unknown signing key"},
        {"malformed base64", good_token.substr(0, good_token.size() - 2) + "!!", "base64"},
        {"64 KiB token", mint::oversized(good, 64 * 1024), "too large"},
    };
    // The good token gets in, so each refusal is down to its one change.
    check_connected(attempt(tls_conninfo(p, "postgres", "alice", with_token(good_token))));
    for (const auto& c : cases) {
        BOOST_TEST_CONTEXT("case " << c.name << " (" << c.token.size() << " bytes)")
        {
            Attempt a = attempt(tls_conninfo(p, "postgres", "alice", with_token(c.token)));
            check_refused(a, "28P01", c.mention);
            std::string leak = token_leak(a.full, c.token);
            BOOST_TEST(leak.empty(), "the client's message shows " << leak << ": " << a.full);
            leak = token_leak(read_file(p.log_path()), c.token);
            BOOST_TEST(leak.empty(), "the log shows " << leak);
        }
    }
    BOOST_TEST(token_leak(read_file(p.log_path()), good_token).empty(), "the log shows the good token");
    check_clean_stop(p);
}

// A token never crosses a plaintext connection unless a rule says allow_plaintext=1: pgwicket
// refuses before asking for the password, so the client never sends it.
BOOST_AUTO_TEST_CASE(jwt_over_plaintext_only_when_a_rule_allows_it)
{
    const std::string token = token_for("alice@example.com");
    {
        ProxyOptions o;
        o.extra_settings = jwt_settings();
        o.extra_sections = kIdentityMap;
        Proxy p("pgwicket-jwt-plain", o);
        auto reply = first_reply(p, "alice");
        BOOST_TEST_REQUIRE((reply && reply->type == 'E'),
                           "expected an ErrorResponse before any password request, got " << describe(reply));
        auto f = error_fields(reply->payload);
        BOOST_TEST(f['S'] == "FATAL", fields_text(f));
        BOOST_TEST(f['C'] == "28000", fields_text(f));
        BOOST_TEST(contains(f['M'], "TLS"), fields_text(f));
        check_refused(attempt(plain_conninfo(p, "postgres", "alice", with_token(token))), "28000", "TLS");
        BOOST_TEST(token_leak(read_file(p.log_path()), token).empty());
        // The same token over TLS is fine.
        check_connected(attempt(tls_conninfo(p, "postgres", "alice", with_token(token))));
        check_clean_stop(p);
    }
    {
        const std::string hba = tmp_path("jwt-plain.hba");
        write_file(hba, "# bob's tokens only over TLS; everyone else's also in plaintext\n"
                        "host all bob 127.0.0.1/32 jwt\n"
                        "host all all 127.0.0.1/32 jwt allow_plaintext=1\n");
        ProxyOptions o;
        o.extra_settings = jwt_settings("hba") + "auth_hba_file = " + hba + "\n";
        o.extra_sections = kIdentityMap;
        Proxy p("pgwicket-jwt-plain-rule", o);
        auto bob = first_reply(p, "bob");
        BOOST_TEST((bob && bob->type == 'E'), describe(bob));
        check_refused(attempt(plain_conninfo(p, "postgres", "bob", with_token(token_for("bob")))), "28000", "TLS");
        auto alice = first_reply(p, "alice");
        BOOST_TEST(auth_code(alice) == 3, "expected a cleartext password request: " << describe(alice));
        Attempt a = attempt(plain_conninfo(p, "postgres", "alice", with_token(token)));
        check_connected(a);
        BOOST_TEST(current_user(a) == "alice");
        a.conn.reset();
        check_clean_stop(p);
    }
}

// The identity is the session's: SHOW SESSIONS has it, and so does the upstream's
// application_name.
BOOST_AUTO_TEST_CASE(jwt_identity_in_show_sessions_and_application_name)
{
    ProxyOptions o;
    o.extra_settings = jwt_settings() + "admin_users = boss\n";
    o.extra_sections = kIdentityMap;
    Proxy p("pgwicket-jwt-identity", o);
    Attempt a = attempt(
        tls_conninfo(p, "postgres", "alice", with_token(token_for("alice@example.com")) + " application_name=idtest"));
    check_connected(a);
    BOOST_TEST_REQUIRE(a.ok);
    BOOST_TEST(scalar(a.conn.get(), "SELECT 1") == "1");

    // The console as the on-call engineer, who logs in with a token too.
    Attempt console = attempt(tls_conninfo(p, "pgwicket", "boss", with_token(token_for("oncall@example.com"))));
    check_connected(console);
    if (console.ok) {
        Result r(PQexec(console.conn.get(), "SHOW SESSIONS"));
        BOOST_TEST_REQUIRE(PQresultStatus(r.get()) == PGRES_TUPLES_OK, PQresultErrorMessage(r.get()));
        const int col = PQfnumber(r.get(), "identity");
        BOOST_TEST_REQUIRE(col >= 0, "SHOW SESSIONS has no column named identity");
        std::string seen;
        bool found = false;
        for (int i = 0; i < PQntuples(r.get()); ++i) {
            seen += std::string(PQgetvalue(r.get(), i, col)) + "; ";
            found = found || std::string(PQgetvalue(r.get(), i, col)) == "alice@example.com";
        }
        BOOST_TEST(found, "identities in SHOW SESSIONS: " << seen);
    }
    const std::string apps = direct_scalar(
        "SELECT string_agg(application_name, ' | ') FROM pg_stat_activity WHERE application_name LIKE '%idtest%'");
    BOOST_TEST(contains(apps, "alice@example.com"), "upstream application_name: " << apps);
    a.conn.reset();
    console.conn.reset();
    check_clean_stop(p);
}

BOOST_AUTO_TEST_SUITE_END()
