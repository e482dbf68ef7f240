// Secrets never leak: one pgwicket at debug log level with an audit file, the metrics
// endpoint and the admin console sees logins by SCRAM (by hand, so the test knows the
// client's proof and the server's signature), md5, a JWT over TLS, an upstream password in
// a [databases] entry, and cancel requests with the right and a wrong secret. Then every
// log line, audit record, SHOW output and metrics page is searched for each of them.
#include "harness.hh"
#include "tls_client.hh"
#include "tls_fixtures.hh"

#include "../common/jwt_mint.hh"

#include "admin/commands.hh"
#include "auth/base64.hh"
#include "auth/ossl.hh"
#include "auth/scram.hh"

#include <boost/test/unit_test.hpp>

#include <openssl/evp.h>

#include <cstdlib>
#include <ctime>
#include <optional>
#include <map>
#include <string>
#include <vector>

using namespace pgw::it;
namespace mint = pgw::testing;
namespace ossl = pgw::auth::ossl;

namespace {

const std::string kScramPw = "scram-Secret-9f3a1c";
const std::string kMd5Pw = "md5-Secret-77b2e0";
const std::string kUpstreamPw = "upstream-Secret-c4d5e6";
const char* kIssuer = "https://login.example.com/";
const char* kAudience = "pgwicket-secrets";

std::string z(const std::string& s) { return s + std::string(1, '\0'); }
std::string msg(char type, const std::string& body) { return std::string(1, type) + be32(uint32_t(body.size() + 4)) + body; }

ossl::Sha256 salted_password(const std::string& password, const pgw::auth::Octets& salt, int iterations)
{
    ossl::Sha256 out{};
    PKCS5_PBKDF2_HMAC(password.data(), int(password.size()), salt.data(), int(salt.size()), iterations, EVP_sha256(),
                      int(out.size()), out.data());
    return out;
}

std::span<const std::uint8_t> octets(const std::string& s) { return pgw::auth::octets_of(s); }

std::map<char, std::string> attrs(const std::string& m)
{
    std::map<char, std::string> a;
    size_t at = 0;
    while (at < m.size()) {
        size_t comma = m.find(',', at);
        std::string part = m.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
        if (part.size() >= 2 && part[1] == '=')
            a[part[0]] = part.substr(2);
        if (comma == std::string::npos)
            break;
        at = comma + 1;
    }
    return a;
}

// A SCRAM login by hand; returns the secrets that crossed the wire (client proof, the
// whole client-final-message, the server's signature), or an empty list when it failed.
std::vector<std::string> scram_login(int port, const std::string& user, const std::string& password)
{
    RawSocket s(port);
    s.send(startup_packet({{"user", user}, {"database", "postgres"}, {"application_name", "secrets-scram"}}));
    auto r = s.read_message();
    if (!r || r->type != 'R' || get32(r->payload, 0) != 10)
        return {};
    const std::string bare = "n=,r=secretsClientNonce0123456789";
    const std::string first = "n,," + bare;
    s.send(msg('p', z("SCRAM-SHA-256") + be32(uint32_t(first.size())) + first));
    auto cont = s.read_message();
    if (!cont || cont->type != 'R' || get32(cont->payload, 0) != 11)
        return {};
    const std::string server_first = cont->payload.substr(4);
    auto a = attrs(server_first);
    auto salt = pgw::auth::base64_decode(a['s']);
    if (!salt)
        return {};
    auto salted = salted_password(password, *salt, std::stoi(a['i']));
    auto client_key = ossl::hmac_sha256(salted, octets("Client Key"));
    auto stored_key = ossl::sha256(client_key);
    auto server_key = ossl::hmac_sha256(salted, octets("Server Key"));
    const std::string without_proof = "c=biws,r=" + a['r'];
    const std::string auth_message = bare + "," + server_first + "," + without_proof;
    auto signature = ossl::hmac_sha256(stored_key, octets(auth_message));
    ossl::Sha256 proof{};
    for (size_t i = 0; i < proof.size(); ++i)
        proof[i] = client_key[i] ^ signature[i];
    const std::string proof64 = pgw::auth::base64_encode(proof);
    const std::string final_msg = without_proof + ",p=" + proof64;
    s.send(msg('p', final_msg));
    auto fin = s.read_message();
    if (!fin || fin->type != 'R' || get32(fin->payload, 0) != 12)
        return {};
    const std::string server_sig = fin->payload.substr(4 + 2);  // after "v="
    if (server_sig != pgw::auth::base64_encode(ossl::hmac_sha256(server_key, octets(auth_message))))
        return {};
    auto rest = s.read_until_ready();
    if (rest.empty() || rest.back().type != 'Z')
        return {};
    s.send(query_message("SELECT 1"));
    s.read_until_ready();
    s.send(terminate_message());
    return {proof64, final_msg, server_sig, pgw::auth::base64_encode(client_key), pgw::auth::base64_encode(stored_key),
            pgw::auth::base64_encode(server_key)};
}

std::string hex8(uint32_t v)
{
    char b[9];
    std::snprintf(b, sizeof b, "%08x", v);
    return b;
}

} // namespace

BOOST_AUTO_TEST_SUITE(secrets)

BOOST_AUTO_TEST_CASE(no_secret_in_logs_audit_show_or_metrics)
{
    const std::string dir = env().tmpdir;
    const std::string users = dir + "/secrets.users", hba = dir + "/secrets.hba", audit = dir + "/secrets.audit",
                      jwks = dir + "/secrets-jwks.json";
    const std::string scram_verifier_text = scram_verifier(kScramPw);
    const std::string md5_verifier_text = pgw::auth::scram::make_md5_verifier(kMd5Pw, "bob");
    write_file(users, userlist_line("alice", scram_verifier_text) + userlist_line("bob", md5_verifier_text));
    write_file(hba, "host all alice all scram-sha-256\n"
                    "host all bob all md5\n"
                    "hostssl all carol@example.com all jwt\n"
                    "host all all all trust\n");
    mint::write_jwks_file(jwks);
    ensure_role("carol@example.com");
    ensure_role("bob");
    const int mport = free_port();
    ProxyOptions o;
    o.extra_settings = tls_settings("prefer") + "auth_type = hba\nauth_hba_file = " + hba + "\nauth_file = " + users +
                       "\naudit_file = " + audit + "\naudit_parameters = on\n" +
                       "admin_users = postgres\nmetrics_listen = 127.0.0.1:" + std::to_string(mport) + "\n" +
                       "jwt_jwks_file = " + jwks + "\njwt_issuer = " + kIssuer + "\njwt_audience = " + kAudience + "\n";
    o.extra_databases = "secretdb = host=127.0.0.1 port=" + std::to_string(env().pg_port) +
                        " dbname=postgres password=" + kUpstreamPw + "\n";
    // At debug level, where most is said (the harness writes log_level from this).
    const char* level = std::getenv("PGWICKET_TEST_LOG_LEVEL");
    const std::string saved = level ? level : "";
    ::setenv("PGWICKET_TEST_LOG_LEVEL", "debug", 1);
    std::optional<Proxy> proxy;
    try {
        proxy.emplace("pgwicket-secrets", o);
    } catch (...) {
        level ? ::setenv("PGWICKET_TEST_LOG_LEVEL", saved.c_str(), 1) : ::unsetenv("PGWICKET_TEST_LOG_LEVEL");
        throw;
    }
    level ? ::setenv("PGWICKET_TEST_LOG_LEVEL", saved.c_str(), 1) : ::unsetenv("PGWICKET_TEST_LOG_LEVEL");
    Proxy& p = *proxy;
    BOOST_TEST_REQUIRE(contains(read_file(p.config_path()), "log_level = debug"));

    std::vector<std::pair<std::string, std::string>> secrets = {
        {"the SCRAM password", kScramPw},
        {"the md5 password", kMd5Pw},
        {"the upstream password", kUpstreamPw},
        {"the unreachable entry's password", kUnreachablePassword},
        {"the md5 verifier (a password equivalent)", md5_verifier_text.substr(3)},
    };
    // The SCRAM verifier's keys are password equivalents too.
    {
        auto v = pgw::auth::scram::parse_verifier(scram_verifier_text);
        BOOST_TEST_REQUIRE(v.ok());
        secrets.emplace_back("the verifier's StoredKey", pgw::auth::base64_encode(v->stored_key));
        secrets.emplace_back("the verifier's ServerKey", pgw::auth::base64_encode(v->server_key));
    }

    // SCRAM by hand, and by libpq with a wrong password too.
    auto scram = scram_login(p.port(), "alice", kScramPw);
    BOOST_TEST_REQUIRE(scram.size() == 6u, "the SCRAM login by hand failed\n" << p.log_tail());
    const char* names[] = {"the SCRAM client proof", "the SCRAM client-final-message", "the SCRAM server signature",
                           "the SCRAM ClientKey", "the SCRAM StoredKey", "the SCRAM ServerKey"};
    for (size_t i = 0; i < scram.size(); ++i)
        secrets.emplace_back(names[i], scram[i]);
    {
        Conn wrong = connect(p.conninfo("postgres", "alice", "password=" + kScramPw + "-wrong sslmode=disable"));
        BOOST_TEST(PQstatus(wrong.get()) == CONNECTION_BAD);
        secrets.emplace_back("a wrong password", kScramPw + "-wrong");
    }
    // md5.
    {
        Conn c = connect_ok(p.conninfo("postgres", "bob", "password=" + kMd5Pw + " sslmode=disable"));
        BOOST_TEST(scalar(c.get(), "SELECT current_user") == "bob");
    }
    // A JWT over TLS, and a second one that fails (expired).
    {
        const auto now = std::int64_t(std::time(nullptr));
        nlohmann::json claims = {{"iss", kIssuer}, {"aud", kAudience}, {"exp", now + 600}, {"iat", now - 5},
                                 {"sub", "carol"}, {"email", "carol@example.com"}};
        const std::string token = mint::mint(claims);
        claims["exp"] = now - 3600;
        const std::string expired = mint::mint(claims);
        Conn c = connect_ok(tls_conninfo(p, "postgres", "carol@example.com", "password=" + quoted(token)));
        BOOST_TEST(scalar(c.get(), "SELECT current_user") == "carol@example.com");
        Conn bad = connect(tls_conninfo(p, "postgres", "carol@example.com", "password=" + quoted(expired)));
        BOOST_TEST(PQstatus(bad.get()) == CONNECTION_BAD);
        for (const std::string& t : {token, expired}) {
            secrets.emplace_back("a token", t);
            secrets.emplace_back("a token's signature", t.substr(t.rfind('.') + 1));
        }
    }
    // The upstream password's entry.
    {
        Conn c = connect_ok(p.conninfo("secretdb", "postgres", "sslmode=disable"));
        BOOST_TEST(scalar(c.get(), "SELECT 1") == "1");
    }
    // Cancel requests: the session's key by hand, a right one and a wrong one.
    {
        RawSocket s(p.port());
        s.send(startup_packet({{"user", "postgres"}, {"database", "postgres"}, {"application_name", "secrets-cancel"}}));
        std::string key;
        for (const auto& m : s.read_until_ready())
            if (m.type == 'K')
                key = m.payload;
        BOOST_TEST_REQUIRE(key.size() == 8u);
        const uint32_t pid = get32(key, 0), secret = get32(key, 4);
        s.send(query_message("SELECT pg_sleep(30)"));
        BOOST_TEST_REQUIRE(wait_for([&] {
            return direct_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = " + std::to_string(pid) +
                                 " AND state = 'active'") == "1";
        }));
        for (uint32_t sent : {secret ^ 0x5a5a5a5au, secret}) {
            RawSocket c(p.port());
            c.send(be32(16) + be32(80877102) + be32(pid) + be32(sent));
            c.wait_closed(10000);
        }
        std::string state;
        for (const auto& m : s.read_until_ready(20000))
            if (m.type == 'E')
                state = error_fields(m.payload)['C'];
        BOOST_TEST(state == "57014", "the right cancel key did not cancel");
        s.send(terminate_message());
        const uint32_t wrong = secret ^ 0x5a5a5a5au;
        secrets.emplace_back("the cancel secret (decimal)", std::to_string(secret));
        secrets.emplace_back("the cancel secret (hex)", hex8(secret));
        secrets.emplace_back("a wrong cancel secret (decimal)", std::to_string(wrong));
        secrets.emplace_back("a wrong cancel secret (hex)", hex8(wrong));
    }

    // Everything pgwicket shows: each SHOW command of the console, the metrics, the files.
    std::vector<std::pair<std::string, std::string>> outputs;
    {
        Conn console = connect_ok(p.conninfo("pgwicket", "postgres", "sslmode=disable"));
        for (const auto& c : pgw::admin::commands()) {
            if (c.admin_only)
                continue;  // RELOAD, KILL, SHUTDOWN show nothing but act
            Result r(PQexec(console.get(), std::string(c.name).c_str()));
            BOOST_TEST(PQresultStatus(r.get()) == PGRES_TUPLES_OK, c.name << ": " << PQresultErrorMessage(r.get()));
            std::string text;
            for (int i = 0; i < PQntuples(r.get()); ++i)
                for (int j = 0; j < PQnfields(r.get()); ++j)
                    text += std::string(PQgetvalue(r.get(), i, j)) + "|";
            outputs.emplace_back(std::string(c.name), text);
        }
    }
    const std::string metrics = http_get("http://127.0.0.1:" + std::to_string(mport) + "/metrics").out;
    BOOST_TEST(contains(metrics, "pgwicket_connections_accepted_total"), excerpt(metrics));
    outputs.emplace_back("the metrics page", metrics);
    check_clean_stop(p);  // the workers' last lines are in the log
    outputs.emplace_back("the log", read_file(p.log_path()));
    outputs.emplace_back("the audit file", read_file(audit));
    BOOST_TEST(contains(outputs.back().second, "secrets-scram"), "the audit file has no record of the SCRAM session");

    for (const auto& [what, text] : outputs)
        for (const auto& [name, secret] : secrets)
            BOOST_TEST(!contains(text, secret), what << " shows " << name << " (" << secret << ")");
}

BOOST_AUTO_TEST_SUITE_END()
