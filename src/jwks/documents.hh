// The identity provider's documents, as pure decoders of hostile input (no I/O; each
// has a fuzz target, tests/fuzz/fuzz_jwks.cc): the OpenID discovery document, JWKS
// documents merged into one key set, and Cache-Control's max-age as a cache lifetime.
#pragma once

#include "common/result.hh"

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pgw::jwks {

// Whether `s` starts with `prefix` (given in lower case), ignoring ASCII case: HTTP
// header names and Cache-Control directives.
bool iequals_prefix(std::string_view s, std::string_view prefix);

// Cache lifetimes: the providers' Cache-Control max-age, kept within these bounds
// (Auth0 says 15 s, which would be a fetch per login; a day is as long as we trust a set
// without asking again). Without a max-age, an hour.
inline constexpr std::chrono::seconds kMinLifetime{300};
inline constexpr std::chrono::seconds kMaxLifetime{86400};
inline constexpr std::chrono::seconds kDefaultLifetime{3600};

// "<issuer>/.well-known/openid-configuration", without a doubled slash.
std::string discovery_url(std::string_view issuer);

// The jwks_uri of a discovery document, which must name `issuer` exactly (OpenID
// Connect Discovery 1.0, section 4.3) and give an https jwks_uri.
Result<std::string> parse_discovery(std::string_view text, std::string_view issuer);

// The max-age of one Cache-Control header value (s-maxage is for shared caches, not
// us), and whether it says no-cache/no-store.
void parse_cache_control(std::string_view value, std::optional<long>& max_age, bool& no_cache);

std::chrono::seconds lifetime_from(std::optional<long> max_age, bool no_cache);

struct KeySet {
    std::string jwks_json;             // {"keys":[...]}: every source's keys, duplicates once
    std::vector<std::string> sources;  // the JWKS addresses they came from
    std::chrono::seconds lifetime{kDefaultLifetime};  // the shortest of the sources'
    std::vector<std::string> kids;     // of the usable keys, in order
    std::vector<std::string> notes;    // keys skipped, and why
};

// Merges JWKS documents (source address, text) into one set; each must hold a "keys"
// array, and together at least one usable key, within auth::jwt's limits.
Result<KeySet> merge_documents(const std::vector<std::pair<std::string, std::string>>& source_and_text);

} // namespace pgw::jwks
