// Command-line flags: one table that drives parsing, --help and the man page check.
#pragma once

#include "common/result.hh"

#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace pgw::config {

struct FlagSpec {
    char short_name;           // 0 when there is none
    std::string_view long_name;
    std::string_view argument;  // empty when the flag takes none
    std::string_view help;
};

std::span<const FlagSpec> flags();

struct CommandLine {
    std::string config_path;
    bool check_config = false;
    bool version = false;
    bool help = false;
    std::string hash_password_user;  // --hash-password USER; empty when not given
};

// Parses argv; errors say which flag was wrong.
Result<CommandLine> parse_command_line(const std::vector<std::string>& args);
std::string usage_text(std::string_view program);

// Where the config is looked for when -c is not given.
inline constexpr std::string_view kDefaultConfigPath = SYSCONFDIR "/pgwicket/pgwicket.ini";

} // namespace pgw::config
