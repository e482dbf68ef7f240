// pgwicket's own keys of a [databases] connection string (pooling: pool_mode,
// pool_size, ...; replicas: load_balance, max_replica_lag, ban_time): found with
// libpq's own key=value rules, checked, and cut out so libpq never sees them.
#pragma once

#include "common/result.hh"
#include "config/config.hh"

#include <string>

namespace pgw::config {

struct SplitConninfo {
    std::string conninfo;  // the connection string without the pool keys
    PoolSettings pool;
    ReplicaSettings replicas;
};

// Splits `conninfo` (libpq keyword=value form) into the part for libpq and the
// pool settings. A string without pool keys comes back unchanged, and so does a
// URI (postgresql://...), which takes no pool keys. Errors have no file:line
// prefix; the caller adds it and the database name.
Result<SplitConninfo> split_pool_keys(const std::string& conninfo);

} // namespace pgw::config
