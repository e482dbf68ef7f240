// The health checker: a helper process (supervisor/aux_process.hh) that checks every
// host of the multi-host entries each server_check_period and writes what it finds
// (up or down, primary or standby, replication lag) into the shared table's host rows.
#pragma once

#include "config/config.hh"
#include "ipc/session_table.hh"

#include <string>
#include <utility>
#include <vector>

namespace pgw::health {

// Whether the configuration has a host to check: an entry of several hosts, or one
// with a target_session_attrs other than any.
bool checker_wanted(const config::Config& cfg);

// The hosts (host, port) that configuration checks, each once.
std::vector<std::pair<std::string, unsigned>> checked_hosts(const config::Config& cfg);

// The process's main loop; returns its exit status (it normally runs until SIGTERM).
int checker_main(const config::Config& cfg, const ipc::SessionTable& table);

} // namespace pgw::health
