// Signing keys fetched from the identity provider: the document decoders (discovery,
// Cache-Control, merged JWKS), the cache file's checks, and the configuration that asks
// for a fetch. The fetching itself is tested end to end (tests/integration/test_jwks.cc).
#include "config/config.hh"
#include "jwks/cache.hh"
#include "jwks/documents.hh"
#include "../common/jwt_mint.hh"

#include <boost/test/unit_test.hpp>

#include <nlohmann/json.hpp>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

namespace j = pgw::jwks;
namespace mint = pgw::testing;
using nlohmann::json;

namespace {

template <typename T> std::string why(const pgw::Result<T>& r) { return r.ok() ? std::string() : r.error(); }

std::string temp_dir()
{
    char path[] = "/tmp/pgwicket-unit-jwks-XXXXXX";
    BOOST_REQUIRE(mkdtemp(path) != nullptr);
    return path;
}

void remove_dir(const std::string& dir)
{
    for (const char* f : {"/jwks.json", "/jwks.json.tmp", "/refresh"})
        ::unlink((dir + f).c_str());
    ::rmdir(dir.c_str());
}

j::KeySet test_set()
{
    auto set = j::merge_documents({{"https://idp.example/keys", mint::test_jwks_json().dump()}});
    BOOST_REQUIRE_MESSAGE(set.ok(), why(set));
    return *set;
}

const std::string kMinimal = "[databases]\n* = host=127.0.0.1\n";

} // namespace

BOOST_AUTO_TEST_SUITE(jwks_documents)

BOOST_AUTO_TEST_CASE(discovery_url_has_one_slash)
{
    BOOST_TEST(j::discovery_url("https://a.example/t/v2.0") == "https://a.example/t/v2.0/.well-known/openid-configuration");
    BOOST_TEST(j::discovery_url("https://x.auth0.com/") == "https://x.auth0.com/.well-known/openid-configuration");
}

BOOST_AUTO_TEST_CASE(discovery_names_the_issuer_exactly_and_an_https_jwks_uri)
{
    const std::string iss = "https://x.auth0.com/";
    auto ok = j::parse_discovery(R"({"issuer":"https://x.auth0.com/","jwks_uri":"https://x.auth0.com/.well-known/jwks.json"})", iss);
    BOOST_TEST_REQUIRE(ok.ok(), why(ok));
    BOOST_TEST(*ok == "https://x.auth0.com/.well-known/jwks.json");
    struct Case {
        const char* doc;
        const char* mention;
    };
    for (const Case& c : {
             Case{R"({"issuer":"https://x.auth0.com","jwks_uri":"https://x/k"})", "names issuer 'https://x.auth0.com'"},
             Case{R"({"jwks_uri":"https://x/k"})", "no \"issuer\""},
             Case{R"({"issuer":"https://x.auth0.com/"})", "no \"jwks_uri\""},
             Case{R"({"issuer":"https://x.auth0.com/","jwks_uri":"http://x/k"})", "not an https:// address"},
             Case{R"({"issuer":"https://x.auth0.com/","jwks_uri":"https://x/k y"})", "not an https:// address"},
             Case{R"({"issuer":"https://x.auth0.com/","issuer":"https://x.auth0.com/","jwks_uri":"https://x/k"})", "discovery document"},
             Case{"<html>", "discovery document"},
         }) {
        auto r = j::parse_discovery(c.doc, iss);
        BOOST_TEST_CONTEXT(c.doc)
        {
            BOOST_TEST_REQUIRE(!r.ok());
            BOOST_TEST(r.error().find(c.mention) != std::string::npos, r.error());
        }
    }
}

BOOST_AUTO_TEST_CASE(cache_control_lifetime_is_clamped)
{
    auto lifetime = [](const char* header) {
        std::optional<long> max_age;
        bool no_cache = false;
        j::parse_cache_control(header, max_age, no_cache);
        return j::lifetime_from(max_age, no_cache).count();
    };
    BOOST_TEST(lifetime("public, max-age=3600") == 3600);
    BOOST_TEST(lifetime("max-age=15, stale-while-revalidate=15") == 300);  // Auth0's: at least 5 minutes
    BOOST_TEST(lifetime("Max-Age=\"604800\"") == 86400);                     // at most a day
    BOOST_TEST(lifetime("no-store") == 300);
    BOOST_TEST(lifetime("s-maxage=10") == 3600);  // for shared caches: the default
    BOOST_TEST(lifetime("max-age=abc") == 3600);
    BOOST_TEST(lifetime("") == 3600);
}

BOOST_AUTO_TEST_CASE(merged_documents_keep_each_key_once)
{
    const json jwks = mint::test_jwks_json();
    json other = {{"keys", json::array({mint::rsa_jwk(mint::TestKeys::get().rsa_other.get(), "rsa-2")})}};
    auto set = j::merge_documents({{"https://a/keys", jwks.dump()}, {"https://b/keys", jwks.dump()},
                                   {"https://c/keys", other.dump()}});
    BOOST_TEST_REQUIRE(set.ok(), why(set));
    BOOST_TEST(set->kids == (std::vector<std::string>{"rsa-1", "ec-1", "ec-384", "rsa-2"}));
    BOOST_TEST(set->sources.size() == 3u);
    for (const char* bad : {R"({"nokeys":[]})", "[]", R"({"keys":[{"kty":"oct","k":"c2VjcmV0"}]})"}) {
        auto r = j::merge_documents({{"https://a/keys", bad}});
        BOOST_TEST(!r.ok(), bad);
        if (!r.ok())
            BOOST_TEST(r.error().find("https://a/keys") != std::string::npos, r.error());
    }
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(jwks_cache)

BOOST_AUTO_TEST_CASE(written_then_read_for_the_same_configuration_only)
{
    const std::string dir = temp_dir();
    BOOST_TEST_REQUIRE(j::ensure_private_dir(dir).ok());
    auto w = j::write_cache(dir, "issuer https://idp.example/", test_set(), 1000);
    BOOST_TEST_REQUIRE(w.ok(), why(w));
    auto r = j::read_cache(dir, "issuer https://idp.example/");
    BOOST_TEST_REQUIRE(r.ok(), why(r));
    BOOST_TEST(r->fetched_at == 1000);
    BOOST_TEST(r->expires_at == 1000 + j::kDefaultLifetime.count());
    BOOST_TEST(r->kids == (std::vector<std::string>{"rsa-1", "ec-1", "ec-384"}));
    BOOST_TEST(r->jwks->find("ec-1") != nullptr);
    auto other = j::read_cache(dir, "issuer https://other.example/");
    BOOST_TEST_REQUIRE(!other.ok());
    BOOST_TEST(other.error().find("another configuration") != std::string::npos, other.error());
    // The file is a JWKS as it stands: an operator can copy it to jwt_jwks_file.
    std::ifstream in(j::cache_file(dir));
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    BOOST_TEST(pgw::auth::jwt::Jwks::parse(text).ok());
    remove_dir(dir);
}

BOOST_AUTO_TEST_CASE(keys_others_can_write_are_not_used)
{
    const std::string dir = temp_dir();
    BOOST_TEST_REQUIRE(j::write_cache(dir, "x", test_set(), 1000).ok());
    BOOST_TEST(j::read_cache(dir, "x").ok());
    ::chmod(j::cache_file(dir).c_str(), 0666);
    auto r = j::read_cache(dir, "x");
    BOOST_TEST_REQUIRE(!r.ok());
    BOOST_TEST(r.error().find("writable by other users") != std::string::npos, r.error());
    ::chmod(j::cache_file(dir).c_str(), 0600);
    ::chmod(dir.c_str(), 0777);
    BOOST_TEST(!j::read_cache(dir, "x").ok());
    BOOST_TEST(!j::ensure_private_dir(dir).ok());
    ::chmod(dir.c_str(), 0700);
    // A symbolic link to the directory is not it.
    const std::string link = dir + "-link";
    BOOST_TEST_REQUIRE(::symlink(dir.c_str(), link.c_str()) == 0);
    BOOST_TEST(!j::read_cache(link, "x").ok());
    BOOST_TEST(!j::ensure_private_dir(link).ok());
    ::unlink(link.c_str());
    remove_dir(dir);
}

BOOST_AUTO_TEST_CASE(login_keys_until_max_stale_then_why_not)
{
    const std::string dir = temp_dir();
    auto cfg = pgw::config::load_string("[pgwicket]\nauth_type = jwt\njwt_issuer = https://idp.example/\n"
                                        "jwt_audience = api://x\njwt_jwks_max_stale = 100\njwt_jwks_cache = " +
                                        dir + "\n" + kMinimal);
    BOOST_TEST_REQUIRE(cfg.ok(), why(cfg));
    auto none = j::keys_for_login(*cfg, nullptr, 5000);
    BOOST_TEST(!none.jwks);
    BOOST_TEST(none.why_none.find("no keys fetched yet") != std::string::npos, none.why_none);
    BOOST_TEST_REQUIRE(j::write_cache(dir, cfg->jwks_fetch_for, test_set(), 1000).ok());
    const std::int64_t expires = 1000 + j::kDefaultLifetime.count();
    BOOST_TEST(j::keys_for_login(*cfg, nullptr, expires).jwks);
    BOOST_TEST(j::keys_for_login(*cfg, nullptr, expires + 100).jwks);
    auto stale = j::keys_for_login(*cfg, nullptr, expires + 101);
    BOOST_TEST(!stale.jwks);
    BOOST_TEST(stale.why_none.find("past jwt_jwks_max_stale (100 s)") != std::string::npos, stale.why_none);
    remove_dir(dir);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(jwks_config)

BOOST_AUTO_TEST_CASE(what_is_fetched_and_where)
{
    auto load = [](const std::string& settings) {
        return pgw::config::load_string("[pgwicket]\nlisten_port = 7000\nauth_type = jwt\njwt_audience = api://x\n" +
                                        settings + kMinimal);
    };
    ::unsetenv("RUNTIME_DIRECTORY");
    auto c = load("jwt_issuer = https://a.example/v2.0, https://b.example/\n");
    BOOST_TEST_REQUIRE(c.ok(), why(c));
    BOOST_TEST(c->jwks_fetch_for == "issuer https://a.example/v2.0 https://b.example/");
    BOOST_TEST(c->jwks_cache_dir == "/tmp/pgwicket-jwks.7000");
    BOOST_TEST(!c->jwks);
    ::setenv("RUNTIME_DIRECTORY", "/run/pgwicket:/run/other", 1);
    c = load("jwt_issuer = https://a.example/\njwt_jwks_uri = https://a.example/keys\n");
    ::unsetenv("RUNTIME_DIRECTORY");
    BOOST_TEST_REQUIRE(c.ok(), why(c));
    BOOST_TEST(c->jwks_fetch_for == "jwks_uri https://a.example/keys");
    BOOST_TEST(c->jwks_cache_dir == "/run/pgwicket/pgwicket-jwks.7000");
    c = load("jwt_issuer = https://a.example/\njwt_jwks_cache = /var/cache/pgwicket/\n");
    BOOST_TEST_REQUIRE(c.ok(), why(c));
    BOOST_TEST(c->jwks_cache_dir == "/var/cache/pgwicket");
    // No jwt rule: nothing to fetch.
    c = pgw::config::load_string("[pgwicket]\njwt_issuer = https://a.example/\n" + kMinimal);
    BOOST_TEST_REQUIRE(c.ok(), why(c));
    BOOST_TEST(c->jwks_fetch_for.empty());

    struct Case {
        std::string settings, mention;
    };
    for (const Case& bad : {
             Case{"jwt_issuer = http://a.example/\n", "is not an https:// address"},
             Case{"jwt_issuer = https://a.example/\njwt_jwks_uri = http://a.example/keys\n", "must be an https://"},
             Case{"jwt_issuer = https://a.example/\njwt_jwks_uri = https://a.example/keys\njwt_jwks_file = /x\n",
                  "not both"},
             Case{"jwt_issuer = https://a.example/\njwt_jwks_cache = relative\n", "absolute path"},
             Case{"jwt_issuer = https://a.example/\njwt_jwks_cache = /" + std::string(100, 'd') + "\n",
                  "longer than 90 bytes"},
             Case{"jwt_issuer = https://a.example/\njwt_ca_file = /nonexistent/ca.pem\n", "jwt_ca_file"},
         }) {
        auto r = load(bad.settings);
        BOOST_TEST_CONTEXT(bad.settings)
        {
            BOOST_TEST_REQUIRE(!r.ok());
            BOOST_TEST(r.error().find(bad.mention) != std::string::npos, r.error());
        }
    }
}

BOOST_AUTO_TEST_SUITE_END()
