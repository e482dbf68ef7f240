// The key fetcher: a helper process of the supervisor (supervisor/aux_process.hh) that
// keeps the identity provider's signing keys in the cache directory, refreshed on
// their lifetime, early when a worker asks, and retried with a growing delay when a
// fetch fails. And the one fetch that --check-config makes.
#pragma once

#include "config/config.hh"
#include "ipc/session_table.hh"

#include <cstdio>

namespace pgw::jwks {

// Whether a configuration has keys to fetch (a jwt rule without jwt_jwks_file).
bool fetcher_wanted(const config::Config& cfg);

// The process's main; returns its exit status.
int fetcher_main(const config::Config& cfg, const ipc::SessionTable& table);

// --check-config: fetches once and says what it found on `out` (a failure on `err`). 0
// when logins would have keys (fetched now, or cached and within jwt_jwks_max_stale),
// else 1.
int check_fetch(const config::Config& cfg, std::FILE* out, std::FILE* err);

} // namespace pgw::jwks
