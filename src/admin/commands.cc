// Definitions of the admin console's commands. Adding one here is half the
// change; console.cc runs it, and make check asks for its man page entry.
#include "admin/commands.hh"

#include <array>

namespace pgw::admin {
namespace {

const std::array<CommandSpec, 12> kCommands = {{
    {CommandId::ShowSessions, "SHOW SESSIONS", "", false,
     "one row per session: id, state, client, database, user, counters"},
    {CommandId::ShowStats, "SHOW STATS", "", false,
     "every counter and gauge, as the metrics endpoint exports them"},
    {CommandId::ShowDatabases, "SHOW DATABASES", "", false,
     "the [databases] entries, passwords hidden"},
    {CommandId::ShowPools, "SHOW POOLS", "", false,
     "one row per pooled route: warm, open and waiting connections, longest wait, pool_size"},
    {CommandId::ShowServers, "SHOW SERVERS", "", false,
     "one row per pooled upstream connection: pool, state, backend and worker pid, ages, sessions, TLS"},
    {CommandId::ShowHosts, "SHOW HOSTS", "", false,
     "one row per upstream host of a multi-host entry: state, role, lag, last check, ban, last error"},
    {CommandId::ShowConfig, "SHOW CONFIG", "", false,
     "every [pgwicket] option with its value, default and reload class"},
    {CommandId::ShowVersion, "SHOW VERSION", "", false, "the pgwicket version"},
    {CommandId::ShowHelp, "SHOW HELP", "", false, "this list"},
    {CommandId::Reload, "RELOAD", "", true, "reload the configuration file (as SIGHUP does)"},
    {CommandId::Kill, "KILL", "session", true,
     "end a session (FATAL 57P01 to its client); the id is SHOW SESSIONS' first column"},
    {CommandId::Shutdown, "SHUTDOWN", "", true,
     "drain and stop pgwicket (as SIGTERM does)"},
}};

} // namespace

std::span<const CommandSpec> commands() { return kCommands; }

} // namespace pgw::admin
