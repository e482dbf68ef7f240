// The fetched signing keys on disk, where the key fetcher writes them and workers read
// them: <jwt_jwks_cache>/jwks.json, a JWKS with a "pgwicket" member saying what it was
// fetched for and when; and the worker's side of a refresh (a datagram to the fetcher's
// socket <jwt_jwks_cache>/refresh, then a bounded wait for its next fetch to end).
#pragma once

#include "auth/jwt.hh"
#include "common/net.hh"
#include "common/result.hh"
#include "config/config.hh"
#include "ipc/session_table.hh"
#include "jwks/fetch.hh"

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace pgw::jwks {

// How long a login waits for an early refresh (a token with an unknown kid, or no key
// set yet) before it is refused.
inline constexpr std::chrono::milliseconds kRefreshWait{2000};

std::string cache_file(const std::string& dir);
std::string socket_path(const std::string& dir);

// Creates the directory (0700) if it is missing; either way it must be a directory (not
// a symbolic link) owned by this user that no other user can write: whoever can write
// the key set can sign in as anyone.
Status ensure_private_dir(const std::string& dir);

struct Cached {
    std::shared_ptr<const auth::jwt::Jwks> jwks;
    std::int64_t fetched_at = 0;  // Unix seconds
    std::int64_t expires_at = 0;  // fetched_at + lifetime
    std::vector<std::string> sources;
    std::vector<std::string> kids;
};

// Writes the set atomically (temporary file, fsync, rename), for `fetch_for`
// (Config::jwks_fetch_for).
Status write_cache(const std::string& dir, const std::string& fetch_for, const KeySet& set,
                   std::int64_t fetched_at);

// Reads and checks the cache: the directory and the file are ours and private, the file
// names the same `fetch_for` (a reload to another issuer must not use the old keys).
Result<Cached> read_cache(const std::string& dir, const std::string& fetch_for);

// The keys a login may use now, or why there are none: never fetched, or past
// jwt_jwks_max_stale (with the last fetch error from `table`'s status, when there is one).
struct LoginKeys {
    std::shared_ptr<const auth::jwt::Jwks> jwks;
    std::string why_none;
};
LoginKeys keys_for_login(const config::Config& cfg, const ipc::SessionTable* table, std::int64_t now_s);

// Asks the fetcher to fetch now and waits until a fetch has ended, at most until
// `deadline`. False, without waiting, when the fetcher cannot be reached or will not
// fetch before the deadline (jwt_jwks_min_refresh), so a stream of tokens with made-up
// key ids costs the provider one fetch per jwt_jwks_min_refresh and a login no wait.
bool refresh_and_wait(const config::Config& cfg, const ipc::SessionTable& table, net::Clock::time_point deadline);

// "2026-12-06T10:00:00Z"
std::string utc(std::int64_t unix_seconds);

} // namespace pgw::jwks
