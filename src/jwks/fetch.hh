// Fetching an identity provider's signing keys: the OpenID discovery document of each
// configured issuer (or jwt_jwks_uri directly), then its JWKS, checked and merged into
// one key set with a cache lifetime. No state: the fetcher process (fetcher.cc) and
// --check-config call it.
#pragma once

#include "common/result.hh"
#include "config/config.hh"
#include "jwks/documents.hh"
#include "jwks/http.hh"

#include <string>
#include <vector>

namespace pgw::jwks {

struct FetchSettings {
    std::vector<std::string> issuers;  // discovery for each, when jwks_uri is empty
    std::string jwks_uri;
    HttpOptions http;
};
FetchSettings settings_from(const config::Config& cfg);

// Discovery (unless jwks_uri is set), then every distinct JWKS. Any failure fails the
// whole fetch, so a partial set never replaces a whole one.
Result<KeySet> fetch_keys(const FetchSettings& settings);

} // namespace pgw::jwks
