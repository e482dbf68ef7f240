// More client authentication, end to end: pass-through against the shared cluster's own
// pg_hba.conf (md5 and SCRAM, wrong passwords, TLS clients, channel binding, cancel, an
// unreachable upstream, upstream verify-full); SASL OAUTHBEARER spoken by hand; [roles];
// the JWKS read again on an unknown kid; a broken rules file at SIGHUP; md5 rules with a
// SCRAM entry.
#include "harness.hh"
#include "tls_client.hh"
#include "tls_fixtures.hh"

#include "../common/jwt_mint.hh"

#include "auth/scram.hh"

#include <boost/test/unit_test.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <ctime>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
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

// psql -tA: bare values, one a line.
PsqlOptions tuples_only(EnvOverrides e = {})
{
    PsqlOptions o;
    o.args = {"-tA"};
    o.env = std::move(e);
    return o;
}

// ---- the shared cluster's pg_hba.conf --------------------------------------------------------------

constexpr const char* kMd5User = "pt_md5";
constexpr const char* kMd5Password = "pt-md5-secret";
constexpr const char* kScramUser = "pt_scram";
constexpr const char* kScramPassword = "pt-scram-secret";

void reload_cluster()
{
    RunResult r = run(as_server_user({env().bin("pg_ctl"), "-D", env().datadir, "reload"}));
    if (!r.ok())
        throw std::runtime_error("pg_ctl reload: " + r.status() + ": " + r.out);
}

// Whether the cluster asks `user` for a password now: a direct login with a wrong one fails
// with 28P01 (under the cluster's own trust lines it gets in).
bool cluster_checks_password(const std::string& user)
{
    Attempt a = attempt(env().direct("postgres", user, "password=surely-not-it"));
    return !a.ok && a.sqlstate == "28P01";
}

// A LOGIN role with a password stored as `encryption` ('md5' or 'scram-sha-256').
void password_role(const std::string& name, const std::string& password, const std::string& encryption)
{
    ensure_role(name);
    direct_exec("SET password_encryption = '" + encryption + "'; ALTER ROLE " + name + " LOGIN PASSWORD '" +
                password + "'");
}

// pt_md5 (an md5 password) and pt_scram (a SCRAM one), and lines at the top of the shared
// cluster's pg_hba.conf that make the server check them with md5 and scram-sha-256 (the
// cluster trusts everyone else); the file is restored and the server reloaded again when
// the fixture goes, so other tests never see the lines.
struct ClusterPasswords {
    ClusterPasswords()
    {
        password_role(kMd5User, kMd5Password, "md5");
        password_role(kScramUser, kScramPassword, "scram-sha-256");
        BOOST_TEST_REQUIRE(starts_with(direct_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = 'pt_md5'"),
                                       "md5"));
        BOOST_TEST_REQUIRE(starts_with(
            direct_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = 'pt_scram'"), "SCRAM-SHA-256$"));
        path = env().datadir + "/pg_hba.conf";
        original = read_file(path);
        BOOST_TEST_REQUIRE(!original.empty(), "cannot read " << path);
        write_file(path, std::string("# added by the auth_more tests (removed again at their end)\n") +
                             "host all " + kMd5User + " 127.0.0.1/32 md5\n" + "host all " + kScramUser +
                             " 127.0.0.1/32 scram-sha-256\n" + original);
        bool in_effect = false;
        try {
            reload_cluster();
            in_effect = wait_for(
                [] { return cluster_checks_password(kMd5User) && cluster_checks_password(kScramUser); }, 15000);
        } catch (...) {
            restore();
            throw;
        }
        if (!in_effect)
            restore();  // the destructor does not run when the constructor fails
        BOOST_TEST_REQUIRE(in_effect, "the cluster does not check the passwords after pg_ctl reload");
    }
    ~ClusterPasswords() { restore(); }

    void restore()
    {
        if (restored)
            return;
        restored = true;
        try {
            write_file(path, original);
            reload_cluster();
            if (!wait_for([] { return !cluster_checks_password(kMd5User); }, 15000))
                BOOST_ERROR("the cluster still checks " << kMd5User << "'s password after restoring " << path);
        } catch (const std::exception& e) {
            BOOST_ERROR("restoring " << path << ": " << e.what());
        }
    }
    std::string path, original;
    bool restored = false;
};

// A pgwicket that lets the cluster authenticate everyone (auth_type = pass-through), TLS
// offered but not required.
ProxyOptions pass_through_options(const std::string& extra_databases = "")
{
    ProxyOptions o;
    o.extra_settings = tls_settings("prefer") + "auth_type = pass-through\n";
    o.extra_databases = extra_databases;
    return o;
}

// Under PQERRORS_VERBOSE libpq prints the error's LOCATION (routine, file, line): pgwicket's
// own errors have none, PostgreSQL's auth failures name auth_failed in auth.c.
bool from_the_server(const Attempt& a) { return contains(a.full, "auth_failed, auth.c"); }

// The server's key for a libpq connection, as the server knows it.
std::string backend_pid_upstream(PGconn* c) { return scalar(c, "SELECT pg_backend_pid()"); }

// ---- JWT -------------------------------------------------------------------------------------------

constexpr const char* kIssuer = "https://sso.example.test/auth-more/v2.0";
constexpr const char* kAudience = "api://pgwicket-auth-more";

std::int64_t unix_now() { return static_cast<std::int64_t>(std::time(nullptr)); }

json claims_for(const std::string& identity, const json& groups = json::array({"staff"}))
{
    const std::int64_t now = unix_now();
    return {{"iss", kIssuer}, {"aud", kAudience}, {"exp", now + 600}, {"iat", now - 5},
            {"nbf", now - 5}, {"sub", "00u-more-" + identity}, {"email", identity}, {"groups", groups}};
}

std::string token_for(const std::string& identity, const json& groups = json::array({"staff"}))
{
    return mint::mint(claims_for(identity, groups));
}

// The default JWKS of the minting helpers (kid rsa-1, ec-1, ec-384), written once.
const std::string& default_jwks()
{
    static std::string path;
    if (path.empty()) {
        path = tmp_path("auth-more-jwks.json");
        mint::write_jwks_file(path);
    }
    return path;
}

// [pgwicket] lines for the jwt method (without auth_type).
std::string jwt_settings(const std::string& jwks_file)
{
    return "jwt_jwks_file = " + jwks_file + "\njwt_issuer = " + kIssuer + "\njwt_audience = " + kAudience + "\n";
}

std::string with_token(const std::string& token) { return "password=" + quoted(token); }

// Where `text` shows `token` or its signature.
bool shows_token(const std::string& text, const std::string& token)
{
    size_t dot = token.rfind('.');
    return contains(text, token) || (dot != std::string::npos && contains(text, token.substr(dot + 1)));
}

// ---- SASL by hand ----------------------------------------------------------------------------------

// SASLInitialResponse: 'p', mechanism, Int32 length, data.
std::string sasl_initial_response(const std::string& mechanism, const std::string& data)
{
    std::string body = mechanism + std::string(1, '\0') + be32(static_cast<uint32_t>(data.size())) + data;
    return "p" + be32(static_cast<uint32_t>(body.size() + 4)) + body;
}

// SASLResponse: 'p', data.
std::string sasl_response(const std::string& data)
{
    return "p" + be32(static_cast<uint32_t>(data.size() + 4)) + data;
}

// RFC 7628's kvsep. Never written inside a literal before a letter: "\x01a" is one byte.
const std::string kKv(1, '\x01');

// The OAUTHBEARER client-first message with `auth` as its auth value.
std::string oauth_first(const std::string& auth) { return "n,," + kKv + "auth=" + auth + kKv + kKv; }

// The first column of the first DataRow among `msgs`, or nullopt.
std::optional<std::string> first_value(const std::vector<Message>& msgs)
{
    for (const auto& m : msgs)
        if (m.type == 'D' && m.payload.size() >= 6) {
            uint32_t len = get32(m.payload, 2);
            if (len == 0xffffffffu || m.payload.size() < 6 + len)
                return std::nullopt;
            return m.payload.substr(6, len);
        }
    return std::nullopt;
}

std::string describe_all(const std::vector<Message>& msgs)
{
    std::string out;
    for (const auto& m : msgs)
        out += describe(m) + "; ";
    return out.empty() ? "nothing" : out;
}

// A TLS session that has sent its startup packet and read AuthenticationSASL.
struct OAuthStart {
    std::unique_ptr<TlsClient> tls;
    std::optional<Message> sasl;
};

OAuthStart oauth_start(const Proxy& p, const std::string& user, const std::string& app = "oauth_more")
{
    OAuthStart s;
    s.tls = std::make_unique<TlsClient>(p.port(), tls_files().ca_cert);
    s.tls->send(startup_packet({{"user", user}, {"database", "postgres"}, {"application_name", app}}));
    s.sasl = s.tls->read_message(10000);
    return s;
}

}  // namespace

// =================================================================================================

BOOST_AUTO_TEST_SUITE(auth_more)

// ---- pass-through ----------------------------------------------------------------------------------

// The cluster's own md5 and SCRAM checks through pgwicket, with psql and libpq; its own FATAL
// for a wrong password; the session is the client's user, named by pgwicket upstream.
BOOST_FIXTURE_TEST_CASE(pass_through_md5_and_scram, ClusterPasswords)
{
    Proxy p("pgwicket-pt", pass_through_options());
    struct Case {
        std::string user, password, method;
        int code;  // the AuthenticationRequest the client sees: the server's
    };
    for (const auto& c : {Case{kMd5User, kMd5Password, "md5", 5}, Case{kScramUser, kScramPassword, "scram", 10}}) {
        BOOST_TEST_CONTEXT("user " << c.user << " (" << c.method << ")")
        {
            auto reply = first_reply(p, c.user);
            BOOST_TEST(auth_code(reply) == c.code, describe(reply));

            Attempt a = attempt(p.conninfo("postgres", c.user, "password=" + c.password + " application_name=pt_app"));
            check_connected(a);
            BOOST_TEST(current_user(a) == c.user);
            if (a.ok) {
                const std::string app = scalar(a.conn.get(), "SELECT application_name FROM pg_stat_activity "
                                                             "WHERE pid = pg_backend_pid()");
                BOOST_TEST(starts_with(app, "pgwicket "), "upstream application_name: " << app);
                BOOST_TEST(contains(app, "pt_app"), "upstream application_name: " << app);
                BOOST_TEST(scalar(a.conn.get(), "SELECT count(*) FROM pg_stat_ssl WHERE pid = pg_backend_pid() "
                                                "AND ssl") == "0",
                           "the wildcard entry says sslmode=disable");
            }

            RunResult r = psql(p.conninfo("postgres", c.user), "SELECT current_user;",
                               tuples_only({{"PGPASSWORD", c.password}}));
            BOOST_TEST(r.ok(), r.status() << ": " << r.out);
            BOOST_TEST(r.out == c.user + "\n", r.out);

            Attempt wrong = attempt(p.conninfo("postgres", c.user, "password=" + c.password + "-wrong"));
            check_refused(wrong, "28P01", "password authentication failed for user \"" + c.user + "\"");
            BOOST_TEST(from_the_server(wrong), "not the server's own error: " << wrong.full);

            RunResult rw = psql(p.conninfo("postgres", c.user), "SELECT 1;",
                                tuples_only({{"PGPASSWORD", c.password + "-wrong"}}));
            BOOST_TEST(!rw.ok(), rw.out);
            BOOST_TEST(contains(rw.out, "password authentication failed for user \"" + c.user + "\""), rw.out);
        }
    }
    BOOST_TEST_CONTEXT("a role the cluster trusts gets in without a password")
    {
        Attempt a = attempt(p.conninfo("postgres", "alice"));
        check_connected(a);
        BOOST_TEST(current_user(a) == "alice");
    }
    const std::string log = read_file(p.log_path());
    BOOST_TEST(!contains(log, kMd5Password), "the log shows a password");
    BOOST_TEST(!contains(log, kScramPassword), "the log shows a password");
    check_clean_stop(p);
}

// A rules file line with method pass-through, and a client on TLS (client_tls_sslmode =
// require): SCRAM through to the server; channel_binding=require cannot work.
BOOST_FIXTURE_TEST_CASE(pass_through_rule_for_a_tls_client, ClusterPasswords)
{
    const std::string hba = tmp_path("pass-through.hba");
    write_file(hba, "# pass-through for TCP clients\nhost all all all pass-through\n");
    ProxyOptions o;
    o.extra_settings = tls_settings("require") + "auth_type = hba\nauth_hba_file = " + hba + "\n";
    Proxy p("pgwicket-pt-tls", o);

    BOOST_TEST_CONTEXT("SCRAM over TLS to pgwicket, plaintext upstream")
    {
        Attempt a = attempt(tls_conninfo(p, "postgres", kScramUser, std::string("password=") + kScramPassword));
        check_connected(a);
        if (a.ok) {
            BOOST_TEST(PQsslInUse(a.conn.get()) == 1);
            BOOST_TEST(current_user(a) == kScramUser);
        }
        RunResult r = psql(tls_conninfo(p, "postgres", kScramUser), "SELECT current_user;",
                           tuples_only({{"PGPASSWORD", kScramPassword}}));
        BOOST_TEST(r.ok(), r.status() << ": " << r.out);
        BOOST_TEST(contains(r.out, kScramUser), r.out);
        check_refused(attempt(tls_conninfo(p, "postgres", kScramUser, "password=wrong")), "28P01",
                      "password authentication failed for user \"pt_scram\"");
    }
    BOOST_TEST_CONTEXT("md5 over TLS to pgwicket")
    {
        Attempt a = attempt(tls_conninfo(p, "postgres", kMd5User, std::string("password=") + kMd5Password));
        check_connected(a);
        BOOST_TEST(current_user(a) == kMd5User);
    }
    BOOST_TEST_CONTEXT("channel_binding=require: libpq refuses, SCRAM-SHA-256-PLUS is never offered")
    {
        // tlsdb reaches the cluster over TLS, so the server itself offers SCRAM-SHA-256-PLUS;
        // pgwicket takes it off the list.
        for (const std::string db : {"postgres", "tlsdb"}) {
            Attempt a = attempt(tls_conninfo(p, db, kScramUser,
                                             std::string("password=") + kScramPassword + " channel_binding=require"));
            BOOST_TEST(!a.ok, db << ": connected with channel_binding=require");
            BOOST_TEST(contains(a.full, "channel binding is required, but server did not offer an authentication "
                                        "method that supports channel binding"),
                       db << ": " << a.full);
        }
    }
    BOOST_TEST_CONTEXT("SCRAM over TLS to pgwicket and over TLS upstream (tlsdb), channel_binding=disable")
    {
        Attempt a = attempt(tls_conninfo(p, "tlsdb", kScramUser,
                                         std::string("password=") + kScramPassword + " channel_binding=disable"));
        check_connected(a);
        if (a.ok)
            BOOST_TEST(scalar(a.conn.get(), "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") == "t");
    }
    check_clean_stop(p);
}

// A TLS client, SCRAM, and an entry that reaches the server over TLS too (tlsdb: sslmode=
// require), tried as a user would: psql with libpq's defaults (sslmode=prefer, which takes
// pgwicket's TLS; channel_binding=prefer). libpq offered no SCRAM-SHA-256-PLUS says in its gs2
// header ("y,,") that it could have bound, and the server, which offered binding on its own
// TLS connection, must refuse that as a downgrade; the flag is covered by the client's proof,
// so pgwicket cannot rewrite it. It refuses first, and the user who does what the message and
// the man page ("Channel binding") say gets in.
BOOST_FIXTURE_TEST_CASE(pass_through_scram_tls_on_both_legs, ClusterPasswords)
{
    const std::string hba = tmp_path("pass-through-both.hba");
    write_file(hba, "host all all all pass-through\n");
    ProxyOptions o;
    o.extra_settings = tls_settings("require") + "auth_type = hba\nauth_hba_file = " + hba + "\n";
    Proxy p("pgwicket-pt-tls-both", o);
    const std::string plain = "host=127.0.0.1 port=" + std::to_string(p.port()) + " user=" + kScramUser;
    const EnvOverrides password = {{"PGPASSWORD", kScramPassword}};
    BOOST_TEST_CONTEXT("md5 is not affected")
    {
        Attempt a = attempt(tls_conninfo(p, "tlsdb", kMd5User, std::string("password=") + kMd5Password));
        check_connected(a);
    }
    BOOST_TEST_CONTEXT("psql with libpq's defaults: refused, with the way in")
    {
        RunResult r = psql(plain + " dbname=tlsdb", "SELECT current_user;", tuples_only(password));
        BOOST_TEST(!r.ok(), r.out);
        BOOST_TEST(contains(r.out, "FATAL:  SCRAM through pgwicket cannot use channel binding"), r.out);
        BOOST_TEST(contains(r.out, "HINT:  Add channel_binding=disable to the connection string"), r.out);
    }
    BOOST_TEST_CONTEXT("following the hint: channel_binding=disable in the connection string")
    {
        RunResult r = psql(plain + " dbname=tlsdb channel_binding=disable",
                           "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid();",
                           tuples_only(password));
        BOOST_TEST(r.ok(), r.status() << ": " << r.out);
        BOOST_TEST(r.out == std::string(kScramUser) + "|t\n", r.out);
    }
    BOOST_TEST_CONTEXT("following the hint: PGCHANNELBINDING=disable, and verify-full kept")
    {
        EnvOverrides env = password;
        env.emplace_back("PGCHANNELBINDING", "disable");
        RunResult r = psql(tls_conninfo(p, "tlsdb", kScramUser), "SELECT current_user;", tuples_only(env));
        BOOST_TEST(r.ok(), r.status() << ": " << r.out);
        BOOST_TEST(r.out == std::string(kScramUser) + "\n", r.out);
    }
    BOOST_TEST_CONTEXT("libpq's defaults work where the upstream is plaintext")
    {
        RunResult r = psql(plain + " dbname=postgres", "SELECT current_user;", tuples_only(password));
        BOOST_TEST(r.ok(), r.status() << ": " << r.out);
        BOOST_TEST(r.out == std::string(kScramUser) + "\n", r.out);
    }
    check_clean_stop(p);
}

// PQcancel reaches the server with the server's own key, whose secret the client never sees.
BOOST_FIXTURE_TEST_CASE(pass_through_cancel, ClusterPasswords)
{
    Proxy p("pgwicket-pt-cancel", pass_through_options());
    Conn c = connect_ok(p.conninfo("postgres", kScramUser,
                                   std::string("password=") + kScramPassword + " application_name=pt_cancel"));
    const std::string server_pid = backend_pid_upstream(c.get());
    // The client sees the server's own pid (with pgwicket's secret, not the server's).
    BOOST_TEST(std::to_string(PQbackendPID(c.get())) == server_pid);
    BOOST_TEST_REQUIRE(PQsendQuery(c.get(), "SELECT pg_sleep(30)") == 1);
    BOOST_TEST_REQUIRE(wait_for(
                           [&] {
                               return direct_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = " +
                                                    server_pid + " AND state = 'active' AND query LIKE "
                                                                 "'%pg_sleep%'") != "0";
                           },
                           15000),
                       p.log_tail());
    const auto t0 = Clock::now();
    std::unique_ptr<PGcancel, void (*)(PGcancel*)> cancel(PQgetCancel(c.get()), PQfreeCancel);
    char err[256] = "";
    BOOST_TEST(PQcancel(cancel.get(), err, sizeof err) == 1, err);
    Result r(PQgetResult(c.get()));
    const char* state = PQresultErrorField(r.get(), PG_DIAG_SQLSTATE);
    BOOST_TEST(std::string(state ? state : "") == "57014",
               PQresultErrorMessage(r.get()) << "; log:\n" << p.log_tail());
    while (PGresult* rest = PQgetResult(c.get()))
        PQclear(rest);
    BOOST_TEST(ms_since(t0) < 20000, "the cancel took " << ms_since(t0) << " ms");
    BOOST_TEST(scalar(c.get(), "SELECT 'still here'") == "still here");
    c.reset();
    check_clean_stop(p);
}

// Nothing listens at the entry's port: FATAL 08006, without the entry's password.
BOOST_AUTO_TEST_CASE(pass_through_unreachable_upstream)
{
    Proxy p("pgwicket-pt-unreachable", pass_through_options());
    Attempt a = attempt(p.conninfo("unreachable", kMd5User, "password=whatever"));
    check_refused(a, "08006", "could not connect to upstream server for database \"unreachable\"");
    BOOST_TEST(!contains(a.full, kUnreachablePassword), a.full);
    BOOST_TEST(!contains(read_file(p.log_path()), kUnreachablePassword));
    check_clean_stop(p);
}

// Rules, policies and routing see the database PostgreSQL will use: an empty or missing
// database is the user's name, never "" (a proxy once let an empty database name slip past
// its rules).
BOOST_AUTO_TEST_CASE(an_empty_database_is_the_user_name_for_rules_and_policies)
{
    using Params = std::vector<std::pair<std::string, std::string>>;
    // The first message pgwicket answers a startup packet with, as "E <SQLSTATE>" or its type.
    auto first_answer = [](int port, const Params& params, const std::string& then_query = "") {
        RawSocket s(port);
        s.send(startup_packet(params));
        std::vector<Message> greeting = s.read_until_ready(15000);
        if (greeting.empty())
            return std::string("nothing");
        if (greeting.back().type == 'E')
            return "E " + error_fields(greeting.back().payload)['C'];
        if (then_query.empty())
            return std::string(1, greeting.back().type);
        s.send(query_message(then_query));
        std::vector<Message> answer = s.read_until_ready(15000);
        for (const Message& m : answer)
            if (m.type == 'E')
                return "E " + error_fields(m.payload)['C'];
        return answer.empty() ? std::string("nothing") : std::string(1, answer.back().type);
    };
    const std::string hba = tmp_path("defaults.hba");
    write_file(hba, "host postgres postgres all reject\nhost all all all trust\n");
    ProxyOptions o;
    o.extra_settings = "auth_type = hba\nauth_hba_file = " + hba + "\n";
    Proxy p("pgwicket-defaults", o);
    for (const Params& params : {Params{{"user", "postgres"}}, Params{{"user", "postgres"}, {"database", ""}},
                                 Params{{"user", "postgres"}, {"database", "postgres"}}})
        BOOST_TEST(first_answer(p.port(), params) == "E 28000", "database \"" << (params.size() > 1 ? params[1].second : "(none)") << "\"");
    BOOST_TEST(first_answer(p.port(), {{"user", "postgres"}, {"database", "template1"}}) == "Z",
               "the trust rule for another database");
    check_clean_stop(p);

    ProxyOptions q;
    q.extra_sections = "[policy.readonly]\nread_only = 1\n[database_policies]\npostgres = readonly\n";
    Proxy pq("pgwicket-defaults-policy", q);
    for (const Params& params : {Params{{"user", "postgres"}}, Params{{"user", "postgres"}, {"database", ""}}})
        BOOST_TEST(first_answer(pq.port(), params, "CREATE TABLE pgw_defaults_never (i int)") == "E 42501",
                   "the read-only policy of database postgres");
    BOOST_TEST(first_answer(pq.port(), {{"user", "postgres"}, {"database", "template1"}}, "SELECT 1") == "Z");
    check_clean_stop(pq);

    // Routing too: user "asalice" with no database (or an empty one) reaches the
    // [databases] entry "asalice" (upstream user alice), not the '*' entry, whose upstream
    // would be a role "asalice" that does not exist.
    for (const Params& params : {Params{{"user", "asalice"}}, Params{{"user", "asalice"}, {"database", ""}}}) {
        RawSocket s(env().proxy->port());
        s.send(startup_packet(params));
        auto greeting = s.read_until_ready(15000);
        BOOST_TEST_REQUIRE(!greeting.empty());
        BOOST_TEST_REQUIRE(greeting.back().type == 'Z', describe_all(greeting));
        s.send(query_message("SELECT current_user"));
        BOOST_TEST(first_value(s.read_until_ready(15000)).value_or("<none>") == "alice");
    }
}

// A fake upstream (a real server cannot be made to do this) that answers the SSLRequest
// with 'S' and, in the same packet, bytes that did not come through TLS: a man in the
// middle could have put them there (CVE-2021-23222). pgwicket refuses before any handshake.
BOOST_AUTO_TEST_CASE(pass_through_upstream_bytes_behind_its_tls_answer)
{
    const int fake_port = free_port();
    int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    BOOST_TEST_REQUIRE(listener >= 0);
    int one = 1;
    ::setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(std::uint16_t(fake_port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    BOOST_TEST_REQUIRE(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    BOOST_TEST_REQUIRE(::listen(listener, 4) == 0);
    std::string request;
    std::thread fake([&] {
        int c = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
        if (c < 0)
            return;
        char buf[8];
        size_t got = 0;
        while (got < sizeof buf) {
            ssize_t n = ::recv(c, buf + got, sizeof buf - got, 0);
            if (n <= 0)
                break;
            got += size_t(n);
        }
        request.assign(buf, got);
        const std::string answer = "S" + std::string("\x16\x03\x03injected", 12);
        (void)!::send(c, answer.data(), answer.size(), MSG_NOSIGNAL);
        char drain[256];
        while (::recv(c, drain, sizeof drain, 0) > 0) {
        }
        ::close(c);
    });
    Proxy p("pgwicket-pt-injected", pass_through_options("injected = host=127.0.0.1 port=" + std::to_string(fake_port) +
                                                        " sslmode=require\n"));
    Attempt a = attempt(p.conninfo("injected", kMd5User, "password=whatever"));
    check_refused(a, "08006", "unencrypted data after its answer to the TLS request");
    fake.join();
    ::close(listener);
    BOOST_TEST(request == be32(8) + be32(80877103), "the fake did not get an SSLRequest");
    check_clean_stop(p);
}

// pgwicket's own TLS client to the server: verify-full against the certificate that signed
// the cluster's. The harness makes a self-signed certificate with CN=localhost and no
// subjectAltName, so it is its own root: host=localhost verifies, host=127.0.0.1 does not
// (the name is an IP address the certificate does not hold), nor does another CA.
BOOST_FIXTURE_TEST_CASE(pass_through_upstream_verify_full, ClusterPasswords)
{
    if (direct_scalar("SHOW ssl") != "on") {
        BOOST_TEST_MESSAGE("the shared cluster runs without ssl: nothing to verify");
        return;
    }
    std::string crt = direct_scalar("SHOW ssl_cert_file");
    if (!starts_with(crt, "/"))
        crt = env().datadir + "/" + crt;
    auto name_of = [&](const std::string& which) {
        RunResult r = run({"openssl", "x509", "-in", crt, "-noout", "-" + which});
        BOOST_TEST_REQUIRE(r.ok(), r.out);
        std::string line = r.out.substr(0, r.out.find('\n'));
        return line.substr(line.find('=') + 1);  // "subject=CN = localhost"
    };
    const std::string subject = name_of("subject"), issuer = name_of("issuer");
    BOOST_TEST_MESSAGE("cluster certificate " << crt << ": subject " << subject << ", issuer " << issuer);
    BOOST_TEST_REQUIRE(subject == issuer, "the cluster's certificate is not self-signed, so it is not its own root");
    const std::string pg = "port=" + std::to_string(env().pg_port) + " dbname=postgres";
    Proxy p("pgwicket-pt-verify",
            pass_through_options("byname = host=localhost " + pg + " sslmode=verify-full sslrootcert=" + crt + "\n" +
                                 "byip = host=127.0.0.1 " + pg + " sslmode=verify-full sslrootcert=" + crt + "\n" +
                                 "otherca = host=localhost " + pg + " sslmode=verify-full sslrootcert=" +
                                 tls_files().other_ca_cert + "\n" + "cafull = host=localhost " + pg +
                                 " sslmode=verify-ca sslrootcert=" + crt + "\n"));

    for (const std::string db : {"byname", "cafull"}) {
        BOOST_TEST_CONTEXT(db << ": verifies")
        {
            for (const auto& [user, password] : {std::pair{kScramUser, kScramPassword}, std::pair{kMd5User, kMd5Password}}) {
                Attempt a = attempt(p.conninfo(db, user, std::string("password=") + password));
                check_connected(a);
                if (a.ok) {
                    BOOST_TEST(current_user(a) == user);
                    BOOST_TEST(scalar(a.conn.get(), "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") == "t");
                }
            }
            check_refused(attempt(p.conninfo(db, kScramUser, "password=wrong")), "28P01",
                          "password authentication failed for user \"pt_scram\"");
        }
    }
    BOOST_TEST_CONTEXT("byip: the certificate has no IP address")
    {
        Attempt a = attempt(p.conninfo("byip", kScramUser, std::string("password=") + kScramPassword));
        check_refused(a, "08006", "certificate does not verify");
    }
    BOOST_TEST_CONTEXT("otherca: signed by another CA")
    {
        Attempt a = attempt(p.conninfo("otherca", kScramUser, std::string("password=") + kScramPassword));
        check_refused(a, "08006", "certificate does not verify");
    }
    check_clean_stop(p);
}

// ---- OAUTHBEARER -----------------------------------------------------------------------------------

// SASL OAUTHBEARER as libpq 18 speaks it, by hand (libpq 15 cannot): a token gets a session;
// no token gets the discovery challenge and then FATAL; so does a bad token.
BOOST_AUTO_TEST_CASE(oauthbearer_by_hand)
{
    const std::string hba = tmp_path("oauthbearer.hba");
    write_file(hba, "host all all all jwt oauthbearer=1\n");
    ProxyOptions o;
    o.extra_settings = tls_settings("prefer") + "auth_type = hba\nauth_hba_file = " + hba + "\n" +
                       jwt_settings(default_jwks()) + "jwt_oauth_scope = openid email\n";
    o.extra_sections = "[identity_map]\nob@example.com = alice\n";
    Proxy p("pgwicket-oauthbearer", o);
    const std::string token = token_for("ob@example.com");
    const std::string discovery = std::string(kIssuer) + "/.well-known/openid-configuration";

    BOOST_TEST_CONTEXT("a good token")
    {
        OAuthStart s = oauth_start(p, "alice", "oauth_login");
        BOOST_TEST_REQUIRE(auth_code(s.sasl) == 10, describe(s.sasl));
        BOOST_TEST(s.sasl->payload.substr(4) == std::string("OAUTHBEARER\0\0", 13), "mechanisms offered");
        BOOST_TEST_REQUIRE(s.tls->send(sasl_initial_response("OAUTHBEARER", oauth_first("Bearer " + token))));
        auto ok = s.tls->read_message(15000);
        BOOST_TEST_REQUIRE(auth_code(ok) == 0, describe(ok));
        auto greeting = s.tls->read_until_ready(15000);
        BOOST_TEST_REQUIRE((!greeting.empty() && greeting.back().type == 'Z'), describe_all(greeting));
        BOOST_TEST_REQUIRE(s.tls->send(query_message("SELECT 1")));
        auto rows = s.tls->read_until_ready(15000);
        BOOST_TEST(first_value(rows).value_or("<none>") == "1", describe_all(rows));
        BOOST_TEST_REQUIRE(s.tls->send(query_message("SELECT current_user")));
        rows = s.tls->read_until_ready(15000);
        BOOST_TEST(first_value(rows).value_or("<none>") == "alice", describe_all(rows));
        s.tls->send(terminate_message());
    }
    struct Refusal {
        std::string name, auth, sqlstate, mention;
    };
    const std::vector<Refusal> refusals = {
        {"discovery: no token", "", "28000", "OAuth bearer authentication failed for user \"alice\""},
        {"a token with a bad signature", "Bearer " + mint::with_flipped_signature(token), "28P01",
         "token authentication failed for user \"alice\""},
        {"an expired token", "Bearer " + mint::mint([&] {
             json c = claims_for("ob@example.com");
             c["exp"] = unix_now() - 3600;
             return c;
         }()),
         "28P01", "expired"},
        {"not a Bearer credential", "Basic YWxpY2U6cHc=", "28000", "OAuth bearer authentication failed"},
    };
    for (const auto& r : refusals) {
        BOOST_TEST_CONTEXT(r.name)
        {
            OAuthStart s = oauth_start(p, "alice");
            BOOST_TEST_REQUIRE(auth_code(s.sasl) == 10, describe(s.sasl));
            BOOST_TEST_REQUIRE(s.tls->send(sasl_initial_response("OAUTHBEARER", oauth_first(r.auth))));
            auto challenge = s.tls->read_message(15000);
            BOOST_TEST_REQUIRE(auth_code(challenge) == 11, describe(challenge));
            const std::string text = challenge->payload.substr(4);
            BOOST_TEST(contains(text, "invalid_token"), text);
            BOOST_TEST(contains(text, "openid-configuration"), text);
            json j = json::parse(text, nullptr, false);
            BOOST_TEST_REQUIRE(!j.is_discarded(), "not JSON: " << text);
            BOOST_TEST(j.value("status", "") == "invalid_token", text);
            BOOST_TEST(j.value("openid-configuration", "") == discovery, text);
            BOOST_TEST(j.value("scope", "") == "openid email", text);
            BOOST_TEST(!shows_token(text, token));
            BOOST_TEST_REQUIRE(s.tls->send(sasl_response(kKv)));
            auto fatal = s.tls->read_message(15000);
            BOOST_TEST_REQUIRE((fatal && fatal->type == 'E'), describe(fatal));
            auto f = error_fields(fatal->payload);
            BOOST_TEST(f['S'] == "FATAL", fields_text(f));
            BOOST_TEST(f['C'] == r.sqlstate, fields_text(f));
            BOOST_TEST(contains(f['M'], r.mention), fields_text(f));
            BOOST_TEST(s.tls->wait_closed(10000), "pgwicket kept the connection open after FATAL");
        }
    }
    BOOST_TEST_CONTEXT("the challenge must be acknowledged with a single 0x01")
    {
        OAuthStart s = oauth_start(p, "alice");
        BOOST_TEST_REQUIRE(auth_code(s.sasl) == 10, describe(s.sasl));
        s.tls->send(sasl_initial_response("OAUTHBEARER", oauth_first("")));
        auto challenge = s.tls->read_message(15000);
        BOOST_TEST_REQUIRE(auth_code(challenge) == 11, describe(challenge));
        s.tls->send(sasl_response("n,," + kKv + "auth=Bearer " + token + kKv + kKv));
        auto fatal = s.tls->read_message(15000);
        BOOST_TEST_REQUIRE((fatal && fatal->type == 'E'), describe(fatal));
        BOOST_TEST(error_fields(fatal->payload)['C'] == "08P01", fields_text(error_fields(fatal->payload)));
    }
    BOOST_TEST_CONTEXT("plaintext: refused before any SASL, so no token is sent in clear")
    {
        auto reply = first_reply(p, "alice");
        BOOST_TEST_REQUIRE((reply && reply->type == 'E'), describe(reply));
        auto f = error_fields(reply->payload);
        BOOST_TEST(f['C'] == "28000", fields_text(f));
        BOOST_TEST(contains(f['M'], "SSO tokens must be sent over TLS"), fields_text(f));
    }
    BOOST_TEST_CONTEXT("libpq 15 knows no OAUTHBEARER")
    {
        Attempt a = attempt(tls_conninfo(p, "postgres", "alice", with_token(token)));
        BOOST_TEST(!a.ok, "libpq 15 connected through an OAUTHBEARER rule");
        BOOST_TEST(contains(a.full, "SASL authentication mechanism"), a.full);
    }
    BOOST_TEST(!shows_token(read_file(p.log_path()), token), "the log shows the token");
    check_clean_stop(p);
}

// ---- [roles] ---------------------------------------------------------------------------------------

// A person in a [roles] group logs in upstream as the group's role; without the group, as
// the user the token's identity is mapped to.
BOOST_AUTO_TEST_CASE(roles_pick_the_upstream_role)
{
    ensure_role("pt_reader");
    ensure_role("ann");
    ProxyOptions o;
    o.extra_settings = tls_settings("prefer") + "auth_type = jwt\n" + jwt_settings(default_jwks());
    o.extra_sections = "[identity_map]\nann@example.com = ann\n[roles]\nanalysts = pt_reader\n";
    Proxy p("pgwicket-roles", o);

    BOOST_TEST_CONTEXT("in the analysts group")
    {
        const std::string token = token_for("ann@example.com", json::array({"staff", "analysts"}));
        RunResult r = psql(tls_conninfo(p, "postgres", "ann"), "SELECT current_user || ' ' || session_user;",
                           tuples_only({{"PGPASSWORD", token}}));
        BOOST_TEST(r.ok(), r.status() << ": " << r.out);
        BOOST_TEST(r.out == "pt_reader pt_reader\n", r.out);
        BOOST_TEST(log_has(p, "upstream role \"pt_reader\" from [roles]"), p.log_tail());
    }
    BOOST_TEST_CONTEXT("not in it")
    {
        const std::string token = token_for("ann@example.com", json::array({"staff"}));
        RunResult r = psql(tls_conninfo(p, "postgres", "ann"), "SELECT current_user || ' ' || session_user;",
                           tuples_only({{"PGPASSWORD", token}}));
        BOOST_TEST(r.ok(), r.status() << ": " << r.out);
        BOOST_TEST(r.out == "ann ann\n", r.out);
    }
    BOOST_TEST_CONTEXT("groups as one string")
    {
        json c = claims_for("ann@example.com");
        c["groups"] = "analysts";
        Attempt a = attempt(tls_conninfo(p, "postgres", "ann", with_token(mint::mint(c))));
        check_connected(a);
        BOOST_TEST(current_user(a) == "pt_reader");
    }
    check_clean_stop(p);
}

// ---- JWKS ------------------------------------------------------------------------------------------

// A token signed with a key the JWKS file does not have yet fails; once the file holds the
// key (no SIGHUP), the same token gets in: a worker reads the file again on an unknown kid.
BOOST_AUTO_TEST_CASE(jwks_reread_on_unknown_kid)
{
    const auto& keys = mint::TestKeys::get();
    const json key_a = mint::rsa_jwk(keys.rsa.get(), "key-a");
    const json key_b = mint::rsa_jwk(keys.rsa_other.get(), "key-b");
    const std::string jwks = tmp_path("rotating-jwks.json");
    mint::write_jwks_file(jwks, {{"keys", json::array({key_a})}});
    ProxyOptions o;
    o.extra_settings = tls_settings("prefer") + "auth_type = jwt\n" + jwt_settings(jwks);
    o.extra_sections = "[identity_map]\nrot@example.com = alice\n";
    Proxy p("pgwicket-jwks-rotation", o);

    const json claims = claims_for("rot@example.com");
    const std::string token_a = mint::mint(claims, "RS256", "key-a", keys.rsa.get());
    const std::string token_b = mint::mint(claims, "RS256", "key-b", keys.rsa_other.get());
    check_connected(attempt(tls_conninfo(p, "postgres", "alice", with_token(token_a))));

    const size_t mark = p.log_size();
    check_refused(attempt(tls_conninfo(p, "postgres", "alice", with_token(token_b))), "28P01", "unknown signing key");
    BOOST_TEST(log_has(p, "unknown signing key; reread " + jwks, mark), p.log_tail());

    mint::write_jwks_file(jwks, {{"keys", json::array({key_a, key_b})}});
    Attempt b = attempt(tls_conninfo(p, "postgres", "alice", with_token(token_b)));
    check_connected(b);
    BOOST_TEST(current_user(b) == "alice");
    // Again, in another worker; and the old key still works.
    check_connected(attempt(tls_conninfo(p, "postgres", "alice", with_token(token_b))));
    check_connected(attempt(tls_conninfo(p, "postgres", "alice", with_token(token_a))));
    BOOST_TEST(!log_has(p, "reloading configuration"), "pgwicket reloaded its configuration: " << p.log_tail());
    b.conn.reset();
    check_clean_stop(p);
}

// ---- rules reload ----------------------------------------------------------------------------------

// A rules file broken at SIGHUP: the log names the file and line, and the old rules stay.
BOOST_AUTO_TEST_CASE(broken_rules_file_at_sighup_keeps_the_old_rules)
{
    const std::string hba = tmp_path("reload.hba");
    write_file(hba, "host all postgres 127.0.0.1/32 trust\n"
                    "host all all all reject\n");
    ProxyOptions o;
    o.extra_settings = "auth_type = hba\nauth_hba_file = " + hba + "\n";
    Proxy p("pgwicket-hba-reload", o);
    check_connected(attempt(p.conninfo()));
    check_refused(attempt(p.conninfo("postgres", "alice")), "28000", "rejects connection");

    // Swapped rules, and a bad method on line 4.
    write_file(hba, "# swapped\n"
                    "host all postgres 127.0.0.1/32 reject\n"
                    "host all alice 127.0.0.1/32 trust\n"
                    "host all all all trustme\n");
    size_t mark = p.log_size();
    hup(p);
    BOOST_TEST_REQUIRE(wait_for([&] { return log_has(p, "reload failed", mark); }), p.log_tail());
    const std::string log = read_file(p.log_path()).substr(mark);
    BOOST_TEST(contains(log, hba + ":4"), "expected \"" << hba << ":4\" in:\n" << log);
    BOOST_TEST(contains(log, "trustme"), log);
    BOOST_TEST(p.running());
    BOOST_TEST_CONTEXT("the old rules still apply")
    {
        for (int i = 0; i < 4; ++i) {  // more than the spare workers, so new workers too
            check_connected(attempt(p.conninfo()));
            check_refused(attempt(p.conninfo("postgres", "alice")), "28000", "rejects connection");
        }
    }

    // Fixed: the new rules apply.
    write_file(hba, "host all postgres 127.0.0.1/32 reject\n"
                    "host all alice 127.0.0.1/32 trust\n");
    mark = p.log_size();
    hup(p);
    BOOST_TEST_REQUIRE(wait_for([&] { return log_has(p, "configuration reloaded", mark); }), p.log_tail());
    check_refused(attempt(p.conninfo()), "28000", "rejects connection");
    Attempt alice = attempt(p.conninfo("postgres", "alice"));
    check_connected(alice);
    BOOST_TEST(current_user(alice) == "alice");
    alice.conn.reset();
    check_clean_stop(p);
}

// ---- md5 with a SCRAM entry ------------------------------------------------------------------------

// Under md5, a user with a SCRAM verifier (or none) is asked for SCRAM, as PostgreSQL does;
// a user with an md5 verifier gets the MD5 challenge.
BOOST_AUTO_TEST_CASE(md5_rule_with_a_scram_entry)
{
    ensure_role("am_scram");
    ensure_role("am_md5");
    const std::string users = tmp_path("md5-mixed.users");
    write_file(users, userlist_line("am_scram", scram_verifier("am-scram-pw")) +
                          userlist_line("am_md5", pgw::auth::scram::make_md5_verifier("am-md5-pw", "am_md5")));
    const std::string hba = tmp_path("md5-mixed.hba");
    write_file(hba, "host all all 127.0.0.1/32 md5\n");
    ProxyOptions o;
    o.extra_settings = "auth_type = hba\nauth_hba_file = " + hba + "\nauth_file = " + users + "\n";
    Proxy p("pgwicket-md5-mixed", o);

    BOOST_TEST_CONTEXT("SCRAM entry: SASL with SCRAM-SHA-256")
    {
        auto reply = first_reply(p, "am_scram");
        BOOST_TEST(auth_code(reply) == 10, describe(reply));
        if (auth_code(reply) == 10)
            BOOST_TEST(contains(reply->payload, "SCRAM-SHA-256"));
        Attempt a = attempt(p.conninfo("postgres", "am_scram", "password=am-scram-pw"));
        check_connected(a);
        BOOST_TEST(current_user(a) == "am_scram");
        RunResult r = psql(p.conninfo("postgres", "am_scram"), "SELECT current_user;",
                           tuples_only({{"PGPASSWORD", "am-scram-pw"}}));
        BOOST_TEST(r.ok(), r.status() << ": " << r.out);
        BOOST_TEST(r.out == "am_scram\n", r.out);
        check_refused(attempt(p.conninfo("postgres", "am_scram", "password=am-scram-PW")), "28P01",
                      "password authentication failed for user \"am_scram\"");
    }
    BOOST_TEST_CONTEXT("md5 entry: the MD5 challenge")
    {
        auto reply = first_reply(p, "am_md5");
        BOOST_TEST(auth_code(reply) == 5, describe(reply));
        Attempt a = attempt(p.conninfo("postgres", "am_md5", "password=am-md5-pw"));
        check_connected(a);
        BOOST_TEST(current_user(a) == "am_md5");
        check_refused(attempt(p.conninfo("postgres", "am_md5", "password=am-md5-PW")), "28P01",
                      "password authentication failed for user \"am_md5\"");
    }
    BOOST_TEST_CONTEXT("unknown user: SCRAM too, and the same failure")
    {
        auto reply = first_reply(p, "am_nobody");
        BOOST_TEST(auth_code(reply) == 10, describe(reply));
        check_refused(attempt(p.conninfo("postgres", "am_nobody", "password=x")), "28P01",
                      "password authentication failed for user \"am_nobody\"");
    }
    check_clean_stop(p);
}

BOOST_AUTO_TEST_SUITE_END()
