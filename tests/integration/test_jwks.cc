// Signing keys fetched from the identity provider (issue 15), end to end against a stand-in
// provider over HTTPS (idp_server.py, the test CA): discovery, key rotation, a stream of
// made-up key ids, a provider that is down, slow, returns garbage or too much, redirects to
// http, or names another issuer; logins from the cache while it is down, until
// jwt_jwks_max_stale; --check-config's one fetch.
#include "harness.hh"
#include "tls_client.hh"
#include "tls_fixtures.hh"

#include "../common/jwt_mint.hh"

#include <boost/test/unit_test.hpp>

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <ctime>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>

using namespace pgw::it;
namespace mint = pgw::testing;
using nlohmann::json;

namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kAudience = "api://pgwicket-jwks-it";
constexpr const char* kUser = "jwks_alice";

std::string tmp_path(const std::string& name) { return env().tmpdir + "/" + name; }

long ms_since(Clock::time_point t)
{
    return long(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count());
}

std::int64_t unix_now() { return std::int64_t(std::time(nullptr)); }

// The stand-in provider: files under DIR/files, misbehaviour from DIR/behaviour.json.
class Idp {
public:
    explicit Idp(const std::string& name) : dir_(tmp_path(name)), port_(free_port())
    {
        run({"mkdir", "-p", dir_ + "/files/idp/.well-known"});
        set_discovery({{"issuer", issuer()}, {"jwks_uri", jwks_uri()}, {"token_endpoint", base() + "/idp/token"}});
        set_keys(mint::test_jwks_json());
        behave({{"mode", "ok"}, {"max_age", 600}});
        start();
    }
    ~Idp() = default;

    std::string base() const { return "https://127.0.0.1:" + std::to_string(port_); }
    std::string issuer() const { return base() + "/idp"; }
    std::string jwks_uri() const { return base() + "/idp/keys"; }
    void set_keys(const json& jwks) { write_file(dir_ + "/files/idp/keys", jwks.dump()); }
    void set_discovery(const json& doc) { write_file(dir_ + "/files/idp/.well-known/openid-configuration", doc.dump()); }
    void behave(const json& b) { write_file(dir_ + "/behaviour.json", b.dump()); }
    // Requests for paths containing `what` so far.
    int requests(const std::string& what) const
    {
        std::istringstream in(read_file(dir_ + "/requests.log"));
        int n = 0;
        for (std::string line; std::getline(in, line);)
            n += contains(line, what) ? 1 : 0;
        return n;
    }
    void start()
    {
        const TlsFiles& t = tls_files();
        server_.emplace(std::vector<std::string>{"python3", env().top_srcdir + "/tests/integration/idp_server.py",
                                                 std::to_string(port_), t.server_cert, t.server_key, dir_},
                        dir_ + "/server.log");
        if (!wait_for([&] { return tcp_accepts(port_); }, 10000))
            throw std::runtime_error("idp_server.py does not listen: " + server_->log_tail());
    }
    // Down: nothing listens on its port any more.
    void stop() { server_.reset(); }

private:
    std::string dir_;
    int port_;
    std::optional<Daemon> server_;
};

json claims_for(const Idp& idp, const std::string& identity = kUser)
{
    const std::int64_t now = unix_now();
    return {{"iss", idp.issuer()}, {"aud", kAudience}, {"exp", now + 600},
            {"iat", now - 5},      {"sub", "it-" + identity}, {"email", identity}};
}

std::string with_token(const std::string& token) { return "password=" + quoted(token); }

struct Settings {
    std::string cache;
    int min_refresh = 1;
    int max_stale = 86400;
    int fetch_timeout = 2;
    std::string more;
};

// [pgwicket] lines for tokens checked against keys fetched from `idp`.
std::string jwks_settings(const Idp& idp, const Settings& s)
{
    return tls_settings("prefer") + "auth_type = jwt\njwt_issuer = " + idp.issuer() + "\njwt_audience = " + kAudience +
           "\njwt_ca_file = " + tls_files().ca_cert + "\njwt_jwks_cache = " + s.cache +
           "\njwt_jwks_min_refresh = " + std::to_string(s.min_refresh) +
           "\njwt_jwks_max_stale = " + std::to_string(s.max_stale) +
           "\njwt_fetch_timeout = " + std::to_string(s.fetch_timeout) + "\njwt_fetch_connect_timeout = 2\n" + s.more;
}

// A config file for --check-config alone.
std::string write_config(const std::string& name, const std::string& settings)
{
    const std::string path = tmp_path(name + ".ini");
    write_file(path, "[pgwicket]\nlisten_addr = 127.0.0.1\nlisten_port = " + std::to_string(free_port()) + "\n" +
                         settings + "[databases]\n* = host=127.0.0.1 port=" + std::to_string(env().pg_port) + "\n");
    return path;
}

RunResult check_config(const std::string& path) { return run({env().pgwicket_bin, "--check-config", "-c", path}); }

double metric_of(int metrics_port, const std::string& series)
{
    RunResult r = http_get("http://127.0.0.1:" + std::to_string(metrics_port) + "/metrics");
    return metric(r.out, series);
}

Attempt login(const Proxy& p, const std::string& token) { return attempt(tls_conninfo(p, "postgres", kUser, with_token(token))); }

// Rewrites the cache file's times as if it had been fetched `age` seconds ago with a
// lifetime of `lifetime` seconds (the fetcher keeps its own schedule in memory).
void age_cache(const std::string& dir, std::int64_t age, std::int64_t lifetime)
{
    const std::string path = dir + "/jwks.json";
    json doc = json::parse(read_file(path));
    doc["pgwicket"]["fetched_at"] = unix_now() - age;
    doc["pgwicket"]["expires_at"] = unix_now() - age + lifetime;
    write_file(path + ".test", doc.dump());
    ::chmod((path + ".test").c_str(), 0600);
    ::rename((path + ".test").c_str(), path.c_str());
}

} // namespace

BOOST_AUTO_TEST_SUITE(jwks)

// jwt_issuer alone: discovery, the keys, a login; a new key appears and the old one goes
// (the unknown kid fetches early); the metrics show the rotation.
BOOST_AUTO_TEST_CASE(discovery_login_and_key_rotation)
{
    ensure_role(kUser);
    Idp idp("idp-rotation");
    const int metrics_port = free_port();
    ProxyOptions o;
    o.extra_settings = jwks_settings(idp, {tmp_path("cache-rotation"), 1, 86400, 2,
                                           "metrics_listen = 127.0.0.1:" + std::to_string(metrics_port) + "\n"});
    Proxy p("pgwicket-jwks-rotation", o);

    BOOST_TEST_CONTEXT("the first login finds the keys (fetched at start, or asked for)")
    {
        Attempt a = login(p, mint::mint(claims_for(idp)));
        check_connected(a);
        BOOST_TEST(current_user(a) == kUser);
    }
    BOOST_TEST(idp.requests("/idp/.well-known/openid-configuration") >= 1);
    BOOST_TEST(idp.requests("/idp/keys") >= 1);
    BOOST_TEST(wait_for([&] { return metric_of(metrics_port, "pgwicket_jwks_keys") == 3; }, 5000),
               "pgwicket_jwks_keys should be 3");
    BOOST_TEST(metric_of(metrics_port, "pgwicket_jwks_fetches_total{result=\"ok\"}") >= 1);
    const double changes_before = metric_of(metrics_port, "pgwicket_jwks_key_changes_total");

    // Rotation: rsa-2 is published and rsa-1 withdrawn.
    idp.set_keys({{"keys", json::array({mint::rsa_jwk(mint::TestKeys::get().rsa_other.get(), "rsa-2")})}});
    sleep_ms(1100);  // past jwt_jwks_min_refresh since the last fetch
    BOOST_TEST_CONTEXT("a token of the new key gets in: its unknown kid fetched the keys early")
    {
        Attempt a = login(p, mint::mint(claims_for(idp), "RS256", "rsa-2", mint::TestKeys::get().rsa_other.get()));
        check_connected(a);
    }
    BOOST_TEST_CONTEXT("a token of the withdrawn key is refused")
    {
        sleep_ms(1100);
        check_refused(login(p, mint::mint(claims_for(idp))), "28P01", "unknown signing key");
    }
    BOOST_TEST(metric_of(metrics_port, "pgwicket_jwks_keys") == 1);
    BOOST_TEST(metric_of(metrics_port, "pgwicket_jwks_key_changes_total") >= changes_before + 1);
    BOOST_TEST(metric_of(metrics_port, "pgwicket_jwks_refresh_requests_total") >= 1);
    BOOST_TEST(contains(read_file(p.log_path()), "signing keys changed"), p.log_tail());
    BOOST_TEST(contains(read_file(p.log_path()), "added rsa-2; removed ec-1, ec-384, rsa-1"), p.log_tail());
    check_clean_stop(p);
}

// Tokens with made-up key ids: at most one fetch per jwt_jwks_min_refresh, and the logins
// are refused without waiting for the network.
BOOST_AUTO_TEST_CASE(made_up_kids_do_not_hammer_the_provider)
{
    Idp idp("idp-junk");
    ProxyOptions o;
    o.extra_settings = jwks_settings(idp, {tmp_path("cache-junk"), 3600, 86400, 2, ""});
    Proxy p("pgwicket-jwks-junk", o);
    ensure_role(kUser);
    check_connected(login(p, mint::mint(claims_for(idp))));
    const int before = idp.requests("/idp/keys");
    const auto start = Clock::now();
    for (int i = 0; i < 10; ++i)
        check_refused(login(p, mint::mint(claims_for(idp), "RS256", "junk-" + std::to_string(i))), "28P01",
                      "unknown signing key");
    const long took = ms_since(start);
    BOOST_TEST_MESSAGE("10 logins with made-up kids took " << took << " ms");
    // Each would wait jwks::kRefreshWait (2 s) if it waited for a fetch.
    BOOST_TEST(took < 15000, took << " ms");
    BOOST_TEST(idp.requests("/idp/keys") <= before + 1, "fetches of the keys: " << idp.requests("/idp/keys") - before);
    check_clean_stop(p);
}

// The provider goes down: logins with known keys go on from the cache, without waiting,
// while the keys are within their lifetime plus jwt_jwks_max_stale; past it they fail
// closed with a message that says why; a restart while it is down starts from the cache;
// when it is back, logins work again.
BOOST_AUTO_TEST_CASE(provider_down_cache_then_max_stale)
{
    ensure_role(kUser);
    Idp idp("idp-down");
    const std::string cache = tmp_path("cache-down");
    const int metrics_port = free_port();
    ProxyOptions o;
    o.extra_settings = jwks_settings(idp, {cache, 1, 60, 2,
                                           "metrics_listen = 127.0.0.1:" + std::to_string(metrics_port) + "\n"});
    std::optional<Proxy> p;
    p.emplace("pgwicket-jwks-down", o);
    check_connected(login(*p, mint::mint(claims_for(idp))));

    idp.stop();
    BOOST_TEST_CONTEXT("down, within the lifetime: known keys work without a fetch")
    {
        const auto t = Clock::now();
        check_connected(login(*p, mint::mint(claims_for(idp))));
        BOOST_TEST_MESSAGE("login from the cache, provider down: " << ms_since(t) << " ms");
    }
    BOOST_TEST_CONTEXT("an unknown kid while it is down: refused after one failed fetch")
    {
        sleep_ms(1100);
        const auto t = Clock::now();
        check_refused(login(*p, mint::mint(claims_for(idp), "RS256", "rsa-new")), "28P01", "unknown signing key");
        const long took = ms_since(t);
        BOOST_TEST_MESSAGE("login with an unknown kid, provider down (connection refused): " << took << " ms");
        BOOST_TEST(took < 10000, took << " ms");
        BOOST_TEST(wait_for([&] { return contains(read_file(p->log_path()), "could not fetch the signing keys"); }),
                   p->log_tail());
        BOOST_TEST(metric_of(metrics_port, "pgwicket_jwks_fetches_total{result=\"failed\"}") >= 1);
    }
    BOOST_TEST_CONTEXT("past the lifetime, within jwt_jwks_max_stale (60 s): still in use")
    {
        age_cache(cache, 330, 300);  // fetched 330 s ago with a lifetime of 300 s: expired 30 s ago
        check_connected(login(*p, mint::mint(claims_for(idp))));
    }
    BOOST_TEST_CONTEXT("a restart while the provider is down starts from the cached keys")
    {
        p.reset();
        p.emplace("pgwicket-jwks-down-2", o);
        check_connected(login(*p, mint::mint(claims_for(idp))));
    }
    BOOST_TEST_CONTEXT("past jwt_jwks_max_stale: logins fail closed and say why")
    {
        age_cache(cache, 400, 300);  // expired 100 s ago, more than max_stale 60 s
        Attempt a = login(*p, mint::mint(claims_for(idp)));
        check_refused(a, "28P01", "signing keys are not available");
        BOOST_TEST(wait_for([&] { return contains(read_file(p->log_path()), "past jwt_jwks_max_stale"); }),
                   p->log_tail());
    }
    BOOST_TEST_CONTEXT("the provider is back: the next login fetches and gets in")
    {
        idp.start();
        sleep_ms(1100);
        Attempt a = login(*p, mint::mint(claims_for(idp)));
        check_connected(a);
    }
    check_clean_stop(*p);
}

// A slow provider: logins with known keys do not wait for it; one with an unknown kid waits
// a short bound, not the fetch.
BOOST_AUTO_TEST_CASE(slow_provider_does_not_slow_logins)
{
    ensure_role(kUser);
    Idp idp("idp-slow");
    ProxyOptions o;
    o.extra_settings = jwks_settings(idp, {tmp_path("cache-slow"), 1, 86400, 8, ""});
    Proxy p("pgwicket-jwks-slow", o);
    check_connected(login(p, mint::mint(claims_for(idp))));
    idp.behave({{"mode", "slow"}, {"delay", 12}});
    sleep_ms(1100);
    // The unknown kid starts a fetch that takes jwt_fetch_timeout (8 s) to fail.
    auto t = Clock::now();
    check_refused(login(p, mint::mint(claims_for(idp), "RS256", "rsa-slow")), "28P01", "unknown signing key");
    const long unknown_ms = ms_since(t);
    BOOST_TEST_MESSAGE("login with an unknown kid, provider slow: " << unknown_ms << " ms");
    BOOST_TEST(unknown_ms < 7000, unknown_ms << " ms: the wait should be about 2 s, not the fetch's 8");
    // The fetch is still running: known keys need no wait.
    t = Clock::now();
    check_connected(login(p, mint::mint(claims_for(idp))));
    const long known_ms = ms_since(t);
    BOOST_TEST_MESSAGE("login with a known kid while a slow fetch runs: " << known_ms << " ms");
    BOOST_TEST(known_ms < 5000, known_ms << " ms");
    BOOST_TEST(wait_for([&] { return contains(read_file(p.log_path()), "could not fetch the signing keys"); }, 20000),
               p.log_tail());
    check_clean_stop(p);
}

// --check-config fetches once and reports what it found; each misbehaving provider gets a
// message that names what went wrong.
BOOST_AUTO_TEST_CASE(check_config_fetches_once_and_names_failures)
{
    Idp idp("idp-check");
    const std::string cache = tmp_path("cache-check");
    const std::string settings = jwks_settings(idp, {cache, 1, 86400, 2, ""});
    const std::string path = write_config("jwks-check", settings);
    BOOST_TEST_CONTEXT("a good provider")
    {
        RunResult r = check_config(path);
        BOOST_TEST(r.ok(), r.status() << ": " << r.out);
        BOOST_TEST(contains(r.out, "3 signing keys (rsa-1, ec-1, ec-384)"), r.out);
        BOOST_TEST(contains(r.out, "cache lifetime 600 s"), r.out);
        BOOST_TEST(contains(r.out, "configuration is valid"), r.out);
    }
    BOOST_TEST_CONTEXT("jwt_jwks_uri names the keys directly: no discovery")
    {
        const int before = idp.requests("openid-configuration");
        RunResult r = check_config(write_config("jwks-check-uri", settings + "jwt_jwks_uri = " + idp.jwks_uri() + "\n"));
        BOOST_TEST(r.ok(), r.status() << ": " << r.out);
        BOOST_TEST(contains(r.out, "(jwt_jwks_uri)"), r.out);
        BOOST_TEST(idp.requests("openid-configuration") == before);
    }
    BOOST_TEST_CONTEXT("proxy variables of the environment are ignored; jwt_http_proxy is used")
    {
        const std::string dead = "http://127.0.0.1:" + std::to_string(env().dead_port);
        RunOptions ro;
        ro.env = {{"https_proxy", dead}, {"HTTPS_PROXY", dead}, {"all_proxy", dead}, {"ALL_PROXY", dead}};
        RunResult r = run({env().pgwicket_bin, "--check-config", "-c", path}, ro);
        BOOST_TEST(r.ok(), r.status() << ": " << r.out);
        r = check_config(write_config("jwks-check-proxy", settings + "jwt_http_proxy = " + dead + "\n"));
        BOOST_TEST(r.exit_code == 1, r.status() << ": " << r.out);
        BOOST_TEST(contains(r.out, "could not fetch the signing keys"), r.out);
        BOOST_TEST(contains(r.out, std::to_string(env().dead_port)), r.out);
    }
    BOOST_TEST_CONTEXT("jwt_jwks_uri must be https")
    {
        RunResult r = check_config(
            write_config("jwks-check-http", settings + "jwt_jwks_uri = http://127.0.0.1:1/keys\n"));
        BOOST_TEST(r.exit_code == 1, r.status() << ": " << r.out);
        BOOST_TEST(contains(r.out, "jwt_jwks_uri must be an https:// address"), r.out);
    }
    struct Case {
        std::string name;
        json behaviour;
        std::string mention;
    };
    const std::vector<Case> cases = {
        {"HTTP 503", {{"mode", "status"}, {"status", 503}}, "HTTP status 503"},
        {"garbage", {{"mode", "garbage"}}, "discovery document"},
        {"oversized", {{"mode", "huge"}}, "larger than 1048576 bytes"},
        {"redirect to http", {{"mode", "redirect_http"}}, "which is not https"},
        {"slow", {{"mode", "slow"}, {"delay", 5}}, "no complete answer within 2 s"},
    };
    for (const auto& c : cases) {
        BOOST_TEST_CONTEXT("provider: " << c.name)
        {
            idp.behave(c.behaviour);
            const auto t = Clock::now();
            RunResult r = check_config(path);
            BOOST_TEST(r.exit_code == 1, r.status() << ": " << r.out);
            BOOST_TEST(contains(r.out, "could not fetch the signing keys"), r.out);
            BOOST_TEST(contains(r.out, c.mention), r.out);
            BOOST_TEST(!contains(r.out, "configuration is valid"), r.out);
            BOOST_TEST_MESSAGE(c.name << ": --check-config took " << ms_since(t) << " ms");
        }
    }
    idp.behave({{"mode", "ok"}});
    BOOST_TEST_CONTEXT("the discovery document names another issuer")
    {
        idp.set_discovery({{"issuer", idp.issuer() + "/"}, {"jwks_uri", idp.jwks_uri()}});
        RunResult r = check_config(path);
        BOOST_TEST(r.exit_code == 1, r.status() << ": " << r.out);
        BOOST_TEST(contains(r.out, "names issuer '" + idp.issuer() + "/'"), r.out);
    }
    BOOST_TEST_CONTEXT("the discovery document's jwks_uri is http")
    {
        idp.set_discovery({{"issuer", idp.issuer()}, {"jwks_uri", "http://127.0.0.1:1/keys"}});
        RunResult r = check_config(path);
        BOOST_TEST(r.exit_code == 1, r.status() << ": " << r.out);
        BOOST_TEST(contains(r.out, "is not an https:// address"), r.out);
    }
    BOOST_TEST_CONTEXT("a certificate from another CA")
    {
        idp.set_discovery({{"issuer", idp.issuer()}, {"jwks_uri", idp.jwks_uri()}});
        const std::string other = settings.substr(0, settings.find("jwt_ca_file")) + "jwt_ca_file = " +
                                  tls_files().other_ca_cert + settings.substr(settings.find("\njwt_jwks_cache"));
        RunResult r = check_config(write_config("jwks-check-ca", other));
        BOOST_TEST(r.exit_code == 1, r.status() << ": " << r.out);
        BOOST_TEST(contains(r.out, "certificate"), r.out);
    }
}

// A reload to another issuer restarts the key fetcher, which fetches the new issuer's keys;
// the old issuer's cached set is not used for it.
BOOST_AUTO_TEST_CASE(reload_to_another_issuer)
{
    ensure_role(kUser);
    Idp first("idp-reload-1"), second("idp-reload-2");
    second.set_keys({{"keys", json::array({mint::rsa_jwk(mint::TestKeys::get().rsa_other.get(), "rsa-second")})}});
    ProxyOptions o;
    o.extra_settings = jwks_settings(first, {tmp_path("cache-reload"), 1, 86400, 2, ""});
    Proxy p("pgwicket-jwks-reload", o);
    check_connected(login(p, mint::mint(claims_for(first))));
    std::string ini = read_file(p.config_path());
    for (size_t at; (at = ini.find(first.issuer())) != std::string::npos;)
        ini.replace(at, first.issuer().size(), second.issuer());
    write_file(p.config_path(), ini);
    const size_t from = p.log_size();
    ::kill(p.pid(), SIGHUP);
    BOOST_TEST(wait_for([&] { return contains(read_file(p.log_path()).substr(from), "configuration reloaded"); }),
               p.log_tail());
    const std::string second_token =
        mint::mint(claims_for(second), "RS256", "rsa-second", mint::TestKeys::get().rsa_other.get());
    BOOST_TEST(wait_for([&] { return login(p, second_token).ok; }, 10000), p.log_tail());
    BOOST_TEST(second.requests("/idp/keys") >= 1);
    // Its kid (rsa-1) is not among the new issuer's keys.
    check_refused(login(p, mint::mint(claims_for(first))), "28P01", "unknown signing key");
    check_clean_stop(p);
}

// A discovery document that names another issuer: no keys, and logins say so.
BOOST_AUTO_TEST_CASE(daemon_refuses_keys_of_another_issuer)
{
    ensure_role(kUser);
    Idp idp("idp-other-issuer");
    idp.set_discovery({{"issuer", "https://evil.example.test/idp"}, {"jwks_uri", idp.jwks_uri()}});
    ProxyOptions o;
    o.extra_settings = jwks_settings(idp, {tmp_path("cache-other-issuer"), 1, 86400, 2, ""});
    Proxy p("pgwicket-jwks-other-issuer", o);
    check_refused(login(p, mint::mint(claims_for(idp))), "28P01", "signing keys are not available");
    BOOST_TEST(wait_for([&] { return contains(read_file(p.log_path()), "names issuer 'https://evil.example.test/idp'"); }),
               p.log_tail());
    BOOST_TEST(idp.requests("/idp/keys") == 0);
    check_clean_stop(p);
}

BOOST_AUTO_TEST_SUITE_END()
