// Keeps the man pages and the sample config in step with the options and flags tables:
// every option and flag documented, nothing documented that does not exist, the sample parses.
#include <boost/test/unit_test.hpp>

#include "admin/commands.hh"
#include "config/cli.hh"
#include "config/config.hh"
#include "config/options.hh"
#include "policy/policy.hh"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace {

using pgw::config::OptionSpec;
using pgw::config::OptionType;
using pgw::config::ReloadClass;

std::string source_path(const std::string& relative)
{
    const char* dir = std::getenv("top_srcdir");
    return std::string(dir && *dir ? dir : ".") + "/" + relative;
}

std::vector<std::string> read_lines(const std::string& relative)
{
    const std::string path = source_path(relative);
    std::ifstream in(path);
    BOOST_REQUIRE_MESSAGE(in, "cannot open " << path << " (set top_srcdir to the source tree)");
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) {
        while (!line.empty() && (line.back() == ' ' || line.back() == '\t' || line.back() == '\r'))
            line.pop_back();
        lines.push_back(line);
    }
    return lines;
}

bool starts_with(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

bool is_macro(std::string_view line, std::string_view macro)
{
    // ".TP" or ".TP 8", but not ".TPX"
    return starts_with(line, macro) && (line.size() == macro.size() || line[macro.size()] == ' ');
}

bool is_heading(std::string_view line) { return is_macro(line, ".SH") || is_macro(line, ".SS"); }

// roff writes a minus as \- ; compare names with plain hyphens.
std::string unescape_minus(std::string s)
{
    for (size_t at; (at = s.find("\\-")) != std::string::npos;)
        s.replace(at, 2, "-");
    return s;
}

bool is_name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

// Whether `word` occurs in `text` with no name character right before or after it.
bool contains_word(const std::string& text, const std::string& word)
{
    for (size_t at = text.find(word); at != std::string::npos; at = text.find(word, at + 1)) {
        bool left_ok = at == 0 || !is_name_char(text[at - 1]) || word.front() == '-';
        bool right_ok = at + word.size() == text.size() || !is_name_char(text[at + word.size()]);
        if (left_ok && right_ok)
            return true;
    }
    return false;
}

// The lines of the section whose .SH heading contains `marker`, up to the next .SH.
std::vector<std::string> man_section(const std::vector<std::string>& lines, const std::string& marker,
                                     const std::string& file)
{
    std::vector<std::string> out;
    bool inside = false, found = false;
    for (const auto& line : lines) {
        if (is_macro(line, ".SH")) {
            inside = line.find(marker) != std::string::npos;
            found = found || inside;
            continue;
        }
        if (inside)
            out.push_back(line);
    }
    BOOST_REQUIRE_MESSAGE(found, file << " has no .SH heading containing \"" << marker << "\"");
    return out;
}

struct ManEntry {
    std::string tag;                 // the line after .TP
    std::vector<std::string> body;  // up to the next .TP (or the end of the section)
};

// The .TP entries of a section, in order.
std::vector<ManEntry> tp_entries(const std::vector<std::string>& section)
{
    std::vector<ManEntry> out;
    for (size_t i = 0; i < section.size(); ++i) {
        if (!is_macro(section[i], ".TP"))
            continue;
        ManEntry e;
        e.tag = i + 1 < section.size() ? section[i + 1] : "";
        for (size_t j = i + 2; j < section.size() && !is_macro(section[j], ".TP") && !is_heading(section[j]);
             ++j)
            e.body.push_back(section[j]);
        out.push_back(e);
    }
    return out;
}

// ".B name" -> "name"; anything else -> "".
std::string bold_name(const std::string& tag)
{
    if (!starts_with(tag, ".B "))
        return "";
    std::string name = tag.substr(3);
    if (name.size() >= 2 && name.front() == '"' && name.back() == '"')
        name = name.substr(1, name.size() - 2);
    return name;
}

std::map<std::string, ManEntry> option_entries()
{
    auto lines = read_lines("man/pgwicket.ini.5");
    auto section = man_section(lines, "[pgwicket]", "man/pgwicket.ini.5");
    std::map<std::string, ManEntry> out;
    for (auto& e : tp_entries(section))
        out[bold_name(e.tag)] = e;
    return out;
}

std::string join(const std::vector<std::string>& lines)
{
    std::string s;
    for (const auto& l : lines)
        s += l + "\n";
    return s;
}

std::string bounds_text(const OptionSpec& o)
{
    if (o.name == "unix_socket_mode") {
        char buf[64];
        std::snprintf(buf, sizeof buf, "%lo to 0%lo", static_cast<unsigned long>(o.min),
                      static_cast<unsigned long>(o.max));
        return buf;
    }
    return std::to_string(o.min) + " to " + std::to_string(o.max);
}

// Whether a sample line sets `name` ("name = ..."), or shows it commented out (";name = ...").
bool names_option(const std::string& line, const std::string& name)
{
    std::string s = starts_with(line, ";") ? line.substr(1) : line;
    if (!starts_with(s, name))
        return false;
    s.erase(0, name.size());
    s.erase(0, s.find_first_not_of(" \t"));
    return starts_with(s, "=");
}

// The lines of the sample config's [section], comments included.
std::vector<std::string> sample_section(const std::string& name)
{
    std::vector<std::string> out;
    bool inside = false;
    for (const auto& line : read_lines("conf/pgwicket.ini")) {
        if (starts_with(line, "[")) {
            inside = line == "[" + name + "]";
            continue;
        }
        if (inside)
            out.push_back(line);
    }
    return out;
}

} // namespace

BOOST_AUTO_TEST_SUITE(docs)

BOOST_AUTO_TEST_CASE(every_option_is_in_the_ini_man_page)
{
    auto entries = option_entries();
    for (const auto& o : pgw::config::options())
        BOOST_CHECK_MESSAGE(entries.count(std::string(o.name)),
                            "option \"" << o.name
                                        << "\" is not documented in man/pgwicket.ini.5: add \".TP\" then \".B "
                                        << o.name << "\" to its [pgwicket] section");
}

BOOST_AUTO_TEST_CASE(ini_man_page_documents_no_stale_option)
{
    for (const auto& [name, entry] : option_entries())
        BOOST_CHECK_MESSAGE(!name.empty() && pgw::config::find_option(name),
                            "man/pgwicket.ini.5 documents \"" << (name.empty() ? entry.tag : name)
                                                              << "\" in its [pgwicket] section, which is "
                                                                 "not an option of src/config/options.cc");
}

BOOST_AUTO_TEST_CASE(ini_man_page_states_type_default_bounds_and_reload_class)
{
    auto entries = option_entries();
    for (const auto& o : pgw::config::options()) {
        auto it = entries.find(std::string(o.name));
        if (it == entries.end())
            continue;  // reported by every_option_is_in_the_ini_man_page
        const std::string text = join(it->second.body);
        const std::string name(o.name);

        const char* type = o.type == OptionType::String    ? "String"
                           : o.type == OptionType::Integer ? "Integer"
                           : o.type == OptionType::Seconds ? "Seconds"
                                                           : "One of";
        BOOST_CHECK_MESSAGE(starts_with(text, type),
                            "man/pgwicket.ini.5: \"" << name << "\" should start with its type \"" << type << "\"");

        if (o.default_value.empty())
            BOOST_CHECK_MESSAGE(text.find("Default: empty") != std::string::npos,
                                "man/pgwicket.ini.5: \"" << name << "\" should say \"Default: empty\"");
        else
            BOOST_CHECK_MESSAGE(text.find("Default:") != std::string::npos &&
                                    contains_word(unescape_minus(text.substr(text.find("Default:"))),
                                                  std::string(o.default_value)),
                                "man/pgwicket.ini.5: \"" << name << "\" does not give its default \""
                                                         << o.default_value << "\" after \"Default:\"");

        if (o.type == OptionType::Integer || o.type == OptionType::Seconds)
            BOOST_CHECK_MESSAGE(text.find(bounds_text(o)) != std::string::npos,
                                "man/pgwicket.ini.5: \"" << name << "\" does not give its bounds \""
                                                         << bounds_text(o) << "\"");
        if (o.type == OptionType::Enum) {
            std::string values(o.enum_values);
            for (size_t start = 0, bar;; start = bar + 1) {
                bar = values.find('|', start);
                std::string v = values.substr(start, bar == std::string::npos ? bar : bar - start);
                BOOST_CHECK_MESSAGE(contains_word(text, v), "man/pgwicket.ini.5: \"" << name
                                                                                    << "\" does not list the value \""
                                                                                    << v << "\"");
                if (bar == std::string::npos)
                    break;
            }
        }

        const size_t reload = text.find("Reload."), restart = text.find("Restart.");
        const bool says_reload = reload != std::string::npos && (restart == std::string::npos || reload < restart);
        const bool says_restart = restart != std::string::npos && (reload == std::string::npos || restart < reload);
        if (o.reload == ReloadClass::Reload)
            BOOST_CHECK_MESSAGE(says_reload, "man/pgwicket.ini.5: \"" << name << "\" should say \"Reload.\"");
        else
            BOOST_CHECK_MESSAGE(says_restart, "man/pgwicket.ini.5: \"" << name << "\" should say \"Restart.\"");
    }
}

BOOST_AUTO_TEST_CASE(every_section_is_in_the_ini_man_page)
{
    auto lines = read_lines("man/pgwicket.ini.5");
    for (const auto& s : pgw::config::sections()) {
        const std::string marker = "[" + std::string(s) + "]";
        bool found = false;
        for (const auto& line : lines)
            found = found || (is_heading(line) && line.find(marker) != std::string::npos);
        BOOST_CHECK_MESSAGE(found, "section " << marker
                                              << " has no .SH or .SS heading in man/pgwicket.ini.5");
    }
}

BOOST_AUTO_TEST_CASE(every_option_is_in_the_sample_config)
{
    auto lines = sample_section("pgwicket");
    for (const auto& o : pgw::config::options()) {
        const std::string name(o.name);
        std::string commented = ";" + name + " =";
        if (!o.default_value.empty())
            commented += " " + std::string(o.default_value);
        bool found = false;
        for (const auto& line : lines) {
            found = found || line == commented || (!starts_with(line, ";") && names_option(line, name));
        }
        BOOST_CHECK_MESSAGE(found, "option \"" << name << "\" is missing from the [pgwicket] section of "
                                               << "conf/pgwicket.ini: add the line \"" << commented << "\"");
    }
}

BOOST_AUTO_TEST_CASE(sample_config_summaries_match_the_table)
{
    auto lines = sample_section("pgwicket");
    for (const auto& o : pgw::config::options()) {
        const std::string name(o.name), summary = "; " + std::string(o.summary);
        bool found = false;
        for (size_t i = 1; i < lines.size(); ++i)
            if (names_option(lines[i], name))
                found = found || lines[i - 1] == summary;
        BOOST_CHECK_MESSAGE(found, "conf/pgwicket.ini: the line before \"" << name << "\" should be \"" << summary
                                                                        << "\" (its summary in the options table)");
    }
}

BOOST_AUTO_TEST_CASE(sample_config_has_no_stale_option)
{
    for (const auto& line : sample_section("pgwicket")) {
        std::string s = starts_with(line, ";") ? line.substr(1) : line;
        const size_t eq = s.find(" =");
        if (s.empty() || s.front() == ' ' || eq == std::string::npos)
            continue;  // prose comment
        const std::string name = s.substr(0, eq);
        if (name.find(' ') != std::string::npos)
            continue;
        BOOST_CHECK_MESSAGE(pgw::config::find_option(name),
                            "conf/pgwicket.ini sets \"" << name << "\", which is not an option of src/config/options.cc");
    }
}

BOOST_AUTO_TEST_CASE(sample_config_loads_and_yields_the_defaults)
{
    const std::string path = source_path("conf/pgwicket.ini");
    auto cfg = pgw::config::load_file(path);
    BOOST_REQUIRE_MESSAGE(cfg.ok(), "conf/pgwicket.ini does not load: " << (cfg.ok() ? "" : cfg.error()));
    const auto defaults = pgw::config::defaults();
    for (const auto& o : pgw::config::options()) {
        if (o.int_field)
            BOOST_CHECK_MESSAGE(cfg.value().*(o.int_field) == defaults.*(o.int_field),
                                "conf/pgwicket.ini changes \"" << o.name << "\" from its default");
        if (o.str_field)
            BOOST_CHECK_MESSAGE(cfg.value().*(o.str_field) == defaults.*(o.str_field),
                                "conf/pgwicket.ini changes \"" << o.name << "\" from its default");
    }
    BOOST_CHECK_MESSAGE(cfg.value().find_database("any_name") != nullptr,
                        "conf/pgwicket.ini has no [databases] fallback entry \"*\"");
}

BOOST_AUTO_TEST_CASE(every_flag_is_in_the_daemon_man_page)
{
    auto lines = read_lines("man/pgwicket.8");
    auto entries = tp_entries(man_section(lines, "OPTIONS", "man/pgwicket.8"));
    for (const auto& f : pgw::config::flags()) {
        const std::string long_name = "--" + std::string(f.long_name);
        bool found = false, short_found = f.short_name == 0;
        for (const auto& e : entries) {
            const std::string tag = unescape_minus(e.tag);
            if (e.tag.find("\\-\\-") != std::string::npos && contains_word(tag, long_name)) {
                found = true;
                if (f.short_name)
                    short_found = contains_word(tag, std::string("-") + f.short_name);
            }
        }
        BOOST_CHECK_MESSAGE(found, "flag " << long_name
                                           << " is not documented in the OPTIONS of man/pgwicket.8: add \".TP\" "
                                              "then a line with \"\\-\\-"
                                           << f.long_name << "\"");
        BOOST_CHECK_MESSAGE(!found || short_found, "man/pgwicket.8 documents " << long_name << " without its short form -"
                                                                               << f.short_name);
    }
}

BOOST_AUTO_TEST_CASE(daemon_man_page_documents_no_stale_flag)
{
    auto lines = read_lines("man/pgwicket.8");
    for (const auto& e : tp_entries(man_section(lines, "OPTIONS", "man/pgwicket.8"))) {
        const std::string tag = unescape_minus(e.tag);
        bool known = false;
        for (const auto& f : pgw::config::flags())
            known = known || contains_word(tag, "--" + std::string(f.long_name));
        BOOST_CHECK_MESSAGE(known, "man/pgwicket.8 documents \"" << e.tag
                                                                 << "\" under OPTIONS, which is not a flag of "
                                                                    "src/config/cli.cc");
    }
}

BOOST_AUTO_TEST_SUITE_END()

// The admin console's commands (src/admin/commands.cc) and pgwicket.8's ADMIN CONSOLE
// section: every command has an entry, and no entry names a command that does not exist.
BOOST_AUTO_TEST_SUITE(docs_admin)

BOOST_AUTO_TEST_CASE(every_admin_command_is_in_the_man_page_and_no_other)
{
    auto lines = read_lines("man/pgwicket.8");
    auto section = man_section(lines, "ADMIN CONSOLE", "man/pgwicket.8");
    std::set<std::string> documented;
    for (const auto& e : tp_entries(section))
        if (auto name = bold_name(e.tag); !name.empty())
            documented.insert(name);
    std::set<std::string> commands;
    for (const auto& c : pgw::admin::commands()) {
        commands.insert(std::string(c.name));
        BOOST_CHECK_MESSAGE(documented.count(std::string(c.name)),
                            "admin command \"" << c.name << "\" is not documented in man/pgwicket.8: add "
                                               << "\".TP\" then \".B " << c.name << "\" to its ADMIN CONSOLE section");
    }
    for (const auto& name : documented)
        BOOST_CHECK_MESSAGE(commands.count(name), "man/pgwicket.8's ADMIN CONSOLE documents \""
                                                      << name << "\", which is not a command of src/admin/commands.cc");
}

BOOST_AUTO_TEST_SUITE_END()

// The policy settings table (src/policy/policy.cc) and pgwicket.ini.5's [policy.NAME] section.
BOOST_AUTO_TEST_SUITE(docs_policy)

BOOST_AUTO_TEST_CASE(every_policy_setting_is_in_the_ini_man_page_and_no_other)
{
    auto lines = read_lines("man/pgwicket.ini.5");
    auto section = man_section(lines, "[policy.NAME]", "man/pgwicket.ini.5");
    std::set<std::string> documented;
    for (const auto& e : tp_entries(section))
        if (auto name = bold_name(e.tag); !name.empty())
            documented.insert(name);
    std::set<std::string> settings;
    for (const auto& s : pgw::policy::policy_settings()) {
        settings.insert(std::string(s.name));
        BOOST_CHECK_MESSAGE(documented.count(std::string(s.name)),
                            "policy setting \"" << s.name << "\" is not documented in man/pgwicket.ini.5: add "
                                                << "\".TP\" then \".B " << s.name << "\" to its [policy.NAME] section");
    }
    for (const auto& name : documented)
        BOOST_CHECK_MESSAGE(settings.count(name), "man/pgwicket.ini.5's [policy.NAME] section documents \""
                                                      << name << "\", which is not a setting of src/policy/policy.cc");
}

BOOST_AUTO_TEST_SUITE_END()
