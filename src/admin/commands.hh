// The admin console's commands: one table for the parser, the privilege check,
// SHOW HELP and the man page check in make check.
#pragma once

#include <span>
#include <string_view>

namespace pgw::admin {

enum class CommandId {
    ShowSessions,
    ShowStats,
    ShowDatabases,
    ShowPools,
    ShowServers,
    ShowHosts,
    ShowConfig,
    ShowVersion,
    ShowHelp,
    Reload,
    Kill,
    Shutdown
};

struct CommandSpec {
    CommandId id;
    std::string_view name;      // as typed, upper case; KILL takes an argument
    std::string_view argument;  // "" or the argument's name
    bool admin_only;            // stats_users may run only the others
    std::string_view summary;
};

std::span<const CommandSpec> commands();

} // namespace pgw::admin
