// Discovery and JWKS fetches, checked and merged into one key set (see fetch.hh).
#include "jwks/fetch.hh"

#include "auth/json_util.hh"
#include "auth/jwt.hh"
#include "config/config.hh"

#include <algorithm>

namespace pgw::jwks {

using auth::json_util::json;
using auth::json_util::quote_untrusted;

FetchSettings settings_from(const config::Config& cfg)
{
    FetchSettings s;
    s.jwks_uri = cfg.jwt_jwks_uri;
    if (s.jwks_uri.empty())
        s.issuers = config::split_list(cfg.jwt_issuer);
    s.http.ca_file = cfg.jwt_ca_file;
    s.http.proxy = cfg.jwt_http_proxy;
    s.http.connect_timeout = std::chrono::seconds(cfg.jwt_fetch_connect_timeout);
    s.http.total_timeout = std::chrono::seconds(cfg.jwt_fetch_timeout);
    s.http.max_bytes = auth::jwt::kMaxJwksBytes;
    return s;
}

std::string discovery_url(std::string_view issuer)
{
    std::string base(issuer);
    while (!base.empty() && base.back() == '/')
        base.pop_back();
    return base + "/.well-known/openid-configuration";
}

Result<std::string> parse_discovery(std::string_view text, std::string_view issuer)
{
    std::string err;
    auto doc = auth::json_util::parse_object(text, err);
    if (!doc)
        return Error{"discovery document: " + err};
    auto iss = doc->find("issuer");
    if (iss == doc->end() || !iss->is_string())
        return Error{"discovery document has no \"issuer\""};
    if (iss->get_ref<const std::string&>() != issuer)
        return Error{"discovery document names issuer " + quote_untrusted(iss->get_ref<const std::string&>()) +
                     ", not the configured " + quote_untrusted(issuer) +
                     " (they must be equal, trailing slash included)"};
    auto uri = doc->find("jwks_uri");
    if (uri == doc->end() || !uri->is_string())
        return Error{"discovery document has no \"jwks_uri\""};
    const std::string& u = uri->get_ref<const std::string&>();
    if (u.rfind("https://", 0) != 0 || u.size() > 2048 ||
        std::any_of(u.begin(), u.end(), [](char ch) { return static_cast<unsigned char>(ch) <= ' '; }))
        return Error{"discovery document's jwks_uri " + quote_untrusted(u) + " is not an https:// address"};
    return u;
}

std::chrono::seconds lifetime_from(std::optional<long> max_age, bool no_cache)
{
    if (no_cache)
        return kMinLifetime;
    if (!max_age)
        return kDefaultLifetime;
    return std::clamp(std::chrono::seconds(*max_age), kMinLifetime, kMaxLifetime);
}

Result<KeySet> merge_documents(const std::vector<std::pair<std::string, std::string>>& source_and_text)
{
    KeySet set;
    json merged = json::array();
    for (const auto& [source, text] : source_and_text) {
        std::string err;
        auto doc = auth::json_util::parse_object(text, err);
        if (!doc)
            return Error{source + ": not a JWKS: " + err};
        auto keys = doc->find("keys");
        if (keys == doc->end() || !keys->is_array())
            return Error{source + ": not a JWKS: no \"keys\" array"};
        for (const auto& k : *keys)
            if (std::find(merged.begin(), merged.end(), k) == merged.end())
                merged.push_back(k);
        set.sources.push_back(source);
    }
    set.jwks_json = json{{"keys", merged}}.dump();
    auto parsed = auth::jwt::Jwks::parse(set.jwks_json);
    if (!parsed) {
        std::string from;
        for (const auto& s : set.sources)
            from += (from.empty() ? "" : ", ") + s;
        return Error{from + ": " + parsed.error()};
    }
    for (const auto& k : parsed->keys())
        set.kids.push_back(k.kid);
    set.notes = parsed->notes();
    return set;
}

Result<KeySet> fetch_keys(const FetchSettings& settings)
{
    std::vector<std::string> uris;
    std::optional<long> max_age;
    bool no_cache = false;
    auto note_caching = [&](const HttpResponse& r) {
        no_cache = no_cache || r.no_cache;
        if (r.max_age)
            max_age = max_age ? std::min(*max_age, *r.max_age) : *r.max_age;
    };
    if (!settings.jwks_uri.empty()) {
        uris.push_back(settings.jwks_uri);
    } else {
        for (const auto& iss : settings.issuers) {
            const std::string url = discovery_url(iss);
            auto r = https_get(url, settings.http);
            if (!r)
                return Error{"discovery: " + r.error()};
            auto uri = parse_discovery(r->body, iss);
            if (!uri)
                return Error{url + ": " + uri.error()};
            if (std::find(uris.begin(), uris.end(), *uri) == uris.end())
                uris.push_back(*uri);
        }
    }
    std::vector<std::pair<std::string, std::string>> docs;
    for (const auto& uri : uris) {
        auto r = https_get(uri, settings.http);
        if (!r)
            return Error{r.error()};
        note_caching(*r);
        docs.emplace_back(uri, std::move(r->body));
    }
    auto set = merge_documents(docs);
    if (!set)
        return set;
    set->lifetime = lifetime_from(max_age, no_cache);
    return set;
}

} // namespace pgw::jwks
