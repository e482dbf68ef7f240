// The admin console: the virtual database "pgwicket", answered by the worker itself
// with ordinary result sets, so psql renders them. Commands are in commands.hh.
#pragma once

#include "config/config.hh"
#include "ipc/session_table.hh"
#include "tls/server_tls.hh"

#include <cstdint>
#include <string>

namespace pgw::admin {

inline constexpr const char* kConsoleDatabase = "pgwicket";

struct ConsoleSession {
    const config::Config& cfg;
    const ipc::SessionTable& table;
    tls::Conn& conn;  // the startup packet has been read, the user authenticated
    ipc::Slot* slot;  // this session's slot, or null
    std::string user;
    std::string application_name;
    std::size_t secret_length;  // of the cancel key's secret: 4, or 32 for a protocol 3.2 client
};

// Checks admin_users/stats_users, greets, and serves commands until the client
// leaves or the worker is told to stop. Returns the worker's exit code.
int run_console(const ConsoleSession& s);

} // namespace pgw::admin
