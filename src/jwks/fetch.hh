// Fetching an identity provider's signing keys: the OpenID discovery document of each
// configured issuer (or jwt_jwks_uri directly), then its JWKS, checked and merged into
// one key set with a cache lifetime. No state: the fetcher process (fetcher.cc) and
// --check-config call it.
#pragma once

#include "common/result.hh"
#include "config/config.hh"
#include "jwks/http.hh"

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pgw::jwks {

// Cache lifetimes: the providers' Cache-Control max-age, kept within these bounds
// (Auth0 says 15 s, which would be a fetch per login; a day is as long as we trust a set
// without asking again). Without a max-age, an hour.
inline constexpr std::chrono::seconds kMinLifetime{300};
inline constexpr std::chrono::seconds kMaxLifetime{86400};
inline constexpr std::chrono::seconds kDefaultLifetime{3600};

struct FetchSettings {
    std::vector<std::string> issuers;  // discovery for each, when jwks_uri is empty
    std::string jwks_uri;
    HttpOptions http;
};
FetchSettings settings_from(const config::Config& cfg);

// "<issuer>/.well-known/openid-configuration", without a doubled slash.
std::string discovery_url(std::string_view issuer);

// The jwks_uri of a discovery document, which must name `issuer` exactly (OpenID
// Connect Discovery 1.0, section 4.3) and give an https jwks_uri.
Result<std::string> parse_discovery(std::string_view text, std::string_view issuer);

std::chrono::seconds lifetime_from(std::optional<long> max_age, bool no_cache);

struct KeySet {
    std::string jwks_json;             // {"keys":[...]}: every source's keys, duplicates once
    std::vector<std::string> sources;  // the JWKS addresses they came from
    std::chrono::seconds lifetime{kDefaultLifetime};  // the shortest of the sources'
    std::vector<std::string> kids;     // of the usable keys, in order
    std::vector<std::string> notes;    // keys skipped, and why
};

// Merges JWKS documents (already fetched) into one set; each must hold a "keys" array,
// and together at least one usable key. Exposed for tests.
Result<KeySet> merge_documents(const std::vector<std::pair<std::string, std::string>>& source_and_text);

// Discovery (unless jwks_uri is set), then every distinct JWKS. Any failure fails the
// whole fetch, so a partial set never replaces a whole one.
Result<KeySet> fetch_keys(const FetchSettings& settings);

} // namespace pgw::jwks
