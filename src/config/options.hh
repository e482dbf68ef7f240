// The table of [pgwicket] options: the single source for the parser, defaults,
// bounds, reload class, the man page check and the sample config check.
#pragma once

#include <span>
#include <string>
#include <string_view>

namespace pgw::config {

struct Config;

enum class OptionType { String, Integer, Seconds, Enum };

// Whether a changed value can take effect on SIGHUP or needs a restart.
// (Reload itself arrives with the operations issue; the class is recorded now.)
enum class ReloadClass { Reload, Restart };

struct OptionSpec {
    std::string_view name;
    OptionType type;
    std::string_view default_value;
    long min = 0;  // Integer/Seconds bounds, inclusive
    long max = 0;
    std::string_view enum_values;  // Enum: '|'-separated
    ReloadClass reload;
    std::string_view summary;  // one line, used by the sample config
    long Config::*int_field = nullptr;
    std::string Config::*str_field = nullptr;
};

std::span<const OptionSpec> options();
const OptionSpec* find_option(std::string_view name);

// An option's value in a configuration, written as in the file.
std::string option_value(const Config& cfg, const OptionSpec& spec);

// Sections other than [pgwicket] the parser accepts, for the documentation check.
std::span<const std::string_view> sections();

} // namespace pgw::config
