// One HTTPS GET with libcurl, locked down for fetching an identity provider's public
// documents: https only (redirects too), peer and host verified, timeouts, a size cap.
#pragma once

#include "common/result.hh"

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace pgw::jwks {

struct HttpOptions {
    std::string ca_file;  // empty: the system's CA store
    std::string proxy;    // empty: no proxy, whatever the environment says
    std::chrono::milliseconds connect_timeout{5000};
    std::chrono::milliseconds total_timeout{10000};
    size_t max_bytes = 1 << 20;  // a longer body is an error, not a truncation
};

struct HttpResponse {
    std::string body;
    std::string final_url;             // after redirects
    std::optional<long> max_age;       // Cache-Control max-age, seconds
    bool no_cache = false;             // Cache-Control no-cache or no-store
};

// GET `url`. Anything but a 200 with a body within the cap is an error whose text says
// what happened (for the log and --check-config), naming the address.
Result<HttpResponse> https_get(const std::string& url, const HttpOptions& options);

} // namespace pgw::jwks
