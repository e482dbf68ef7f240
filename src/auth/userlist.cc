// userlist parsing: two double-quoted fields per line, "" inside a field is a quote.
#include "auth/userlist.hh"

#include "auth/scram.hh"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace pgw::auth {
namespace {

// Reads one "quoted" field from `line` at `at`; false when there is none.
bool quoted_field(const std::string& line, size_t& at, std::string& out)
{
    while (at < line.size() && (line[at] == ' ' || line[at] == '\t'))
        ++at;
    if (at >= line.size() || line[at] != '"')
        return false;
    out.clear();
    for (++at; at < line.size(); ++at) {
        if (line[at] == '"') {
            if (at + 1 < line.size() && line[at + 1] == '"') {
                out.push_back('"');
                ++at;
                continue;
            }
            ++at;
            return true;
        }
        out.push_back(line[at]);
    }
    return false;
}

} // namespace

Result<std::map<std::string, std::string>> parse_userlist(const std::string& text, const std::string& name)
{
    std::map<std::string, std::string> users;
    std::istringstream in(text);
    std::string line;
    int lineno = 0;
    while (std::getline(in, line)) {
        ++lineno;
        const std::string where = name + ":" + std::to_string(lineno) + ": ";
        size_t first = line.find_first_not_of(" \t\r");
        if (first == std::string::npos || line[first] == '#' || line[first] == ';')
            continue;
        size_t at = 0;
        std::string user, secret;
        if (!quoted_field(line, at, user) || !quoted_field(line, at, secret))
            return Error{where + "expected \"user\" \"verifier\" (both in double quotes)"};
        if (line.find_first_not_of(" \t\r", at) != std::string::npos)
            return Error{where + "unexpected text after the verifier"};
        if (user.empty())
            return Error{where + "empty user name"};
        if (secret.rfind("SCRAM-SHA-256$", 0) == 0) {
            if (auto v = scram::parse_verifier(secret); !v)
                return Error{where + "user \"" + user + "\": " + v.error()};
        } else if (!(secret.size() == 35 && secret.rfind("md5", 0) == 0 &&
                     secret.find_first_not_of("0123456789abcdef", 3) == std::string::npos)) {
            // Plain-text passwords are not accepted: the file would hold them in the clear.
            return Error{where + "user \"" + user +
                         "\": not a SCRAM-SHA-256 or md5 verifier; make one with pgwicket --hash-password"};
        }
        if (!users.emplace(user, secret).second)
            return Error{where + "user \"" + user + "\" is listed twice"};
    }
    return users;
}

Result<std::map<std::string, std::string>> load_userlist(const std::string& path)
{
    std::ifstream in(path);
    if (!in)
        return Error{path + ": could not open auth_file: " + std::strerror(errno)};
    std::stringstream ss;
    ss << in.rdbuf();
    return parse_userlist(ss.str(), path);
}

} // namespace pgw::auth
