// What happens when a CancelRequest arrives: decode the key, route it to the owning
// worker through the session table, or forward it to the peer instance that issued it.
#pragma once

#include "config/config.hh"
#include "ipc/session_table.hh"
#include "protocol/startup.hh"

#include <string>

namespace pgw::session {

// Handles one cancel request (already read from the client); never answers the
// client, as PostgreSQL never does. `from` names the sender for the log; the
// outcome is counted in `counters` (this worker's slot) when there is one.
void handle_cancel_request(const config::Config& cfg, const ipc::SessionTable& table,
                           const protocol::CancelRequest& req, std::uint32_t hops,
                           const std::string& from, ipc::Counters* counters);

} // namespace pgw::session
