// Command-line parsing from the flags table; GNU style (-c FILE, --config=FILE, --config FILE).
#include "config/cli.hh"

#include <array>

namespace pgw::config {
namespace {

const std::array<FlagSpec, 5> kFlags = {{
    {'c', "config", "FILE", "read the configuration from FILE"},
    {0, "check-config", "", "validate the configuration, print what is wrong, and exit"},
    {0, "hash-password", "USER", "read USER's password from standard input, print an auth_file line, and exit"},
    {'V', "version", "", "print the version and exit"},
    {'h', "help", "", "print this help and exit"},
}};

} // namespace

std::span<const FlagSpec> flags() { return kFlags; }

Result<CommandLine> parse_command_line(const std::vector<std::string>& args)
{
    CommandLine cl;
    cl.config_path = std::string(kDefaultConfigPath);
    bool options_done = false;
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        const FlagSpec* spec = nullptr;
        std::string inline_value;
        bool has_inline = false;
        if (a == "--" && !options_done) {
            options_done = true;  // as getopt: what follows is not an option
            continue;
        }
        if (options_done) {
            return Error{"unexpected argument \"" + a + "\""};
        } else if (a.size() >= 2 && a[0] == '-' && a[1] != '-') {
            for (const auto& f : kFlags)
                if (f.short_name == a[1])
                    spec = &f;
            if (spec && a.size() > 2) {
                if (spec->argument.empty())
                    return Error{"option \"-" + std::string(1, a[1]) + "\" takes no argument"};
                inline_value = a.substr(2);  // -cFILE, as getopt allows
                has_inline = true;
            }
        } else if (a.rfind("--", 0) == 0) {
            std::string name = a.substr(2);
            size_t eq = name.find('=');
            if (eq != std::string::npos) {
                inline_value = name.substr(eq + 1);
                name.resize(eq);
                has_inline = true;
            }
            for (const auto& f : kFlags)
                if (f.long_name == name)
                    spec = &f;
        } else {
            return Error{"unexpected argument \"" + a + "\""};
        }
        if (!spec)
            return Error{"unknown option \"" + a + "\""};
        std::string value;
        if (!spec->argument.empty()) {
            if (has_inline && inline_value.empty())
                return Error{"option \"--" + std::string(spec->long_name) + "\" requires a non-empty " +
                             std::string(spec->argument)};
            if (has_inline)
                value = inline_value;
            else if (i + 1 < args.size())
                value = args[++i];
            else
                return Error{"option \"" + a + "\" requires an argument " +
                             std::string(spec->argument)};
        } else if (has_inline) {
            return Error{"option \"--" + std::string(spec->long_name) + "\" takes no argument"};
        }
        if (spec->long_name == "config")
            cl.config_path = value;
        else if (spec->long_name == "check-config")
            cl.check_config = true;
        else if (spec->long_name == "hash-password")
            cl.hash_password_user = value;
        else if (spec->long_name == "version")
            cl.version = true;
        else if (spec->long_name == "help")
            cl.help = true;
    }
    return cl;
}

std::string usage_text(std::string_view program)
{
    std::string out = "pgwicket is a PostgreSQL access proxy.\n\nUsage:\n  " + std::string(program) +
                      " [OPTION]...\n\nOptions:\n";
    for (const auto& f : kFlags) {
        std::string left = "  ";
        left += f.short_name ? std::string("-") + f.short_name + ", " : std::string("    ");
        left += "--" + std::string(f.long_name);
        if (!f.argument.empty())
            left += " " + std::string(f.argument);
        if (left.size() < 28)
            left.resize(28, ' ');
        else
            left += "  ";
        out += left + std::string(f.help) + "\n";
    }
    out += "\nWithout -c, the configuration is read from " + std::string(kDefaultConfigPath) +
           ".\nSee pgwicket(8) and pgwicket.ini(5).\n";
    return out;
}

} // namespace pgw::config
