// Discovery and JWKS fetches, checked and merged into one key set (see fetch.hh).
#include "jwks/fetch.hh"

#include "auth/jwt.hh"
#include "config/config.hh"

#include <algorithm>

namespace pgw::jwks {

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
