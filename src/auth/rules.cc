// Rule parsing and matching. The syntax follows pg_hba.conf closely enough that an
// operator can read it at a glance; quoting and @file includes are not supported.
#include "auth/rules.hh"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace pgw::auth {
namespace {

std::vector<std::string> split_commas(const std::string& field)
{
    std::vector<std::string> out;
    std::string cur;
    for (char c : field + ",") {
        if (c == ',') {
            if (!cur.empty())
                out.push_back(cur);
            cur.clear();
        } else {
            cur.push_back(c);
        }
    }
    return out;
}

// "10.0.0.0/8", "::1/128", or a bare address (a host: /32 or /128).
bool parse_cidr(const std::string& text, sockaddr_storage& net, int& prefix)
{
    std::string addr = text;
    prefix = -1;
    if (size_t slash = text.find('/'); slash != std::string::npos) {
        addr = text.substr(0, slash);
        std::string bits = text.substr(slash + 1);
        if (bits.empty() || bits.size() > 3 || bits.find_first_not_of("0123456789") != std::string::npos)
            return false;
        prefix = std::stoi(bits);
    }
    std::memset(&net, 0, sizeof net);
    auto* v4 = reinterpret_cast<sockaddr_in*>(&net);
    auto* v6 = reinterpret_cast<sockaddr_in6*>(&net);
    if (inet_pton(AF_INET, addr.c_str(), &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        if (prefix < 0)
            prefix = 32;
        return prefix <= 32;
    }
    if (inet_pton(AF_INET6, addr.c_str(), &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        if (prefix < 0)
            prefix = 128;
        return prefix <= 128;
    }
    return false;
}

bool prefix_equal(const unsigned char* a, const unsigned char* b, int bits)
{
    int bytes = bits / 8, rest = bits % 8;
    if (std::memcmp(a, b, size_t(bytes)) != 0)
        return false;
    if (rest == 0)
        return true;
    unsigned char mask = (unsigned char)(0xff << (8 - rest));
    return (a[bytes] & mask) == (b[bytes] & mask);
}

bool address_matches(const Rule& r, const sockaddr_storage& peer)
{
    if (r.any_address)
        return true;
    const auto* rn4 = reinterpret_cast<const sockaddr_in*>(&r.network);
    const auto* rn6 = reinterpret_cast<const sockaddr_in6*>(&r.network);
    if (peer.ss_family == AF_INET && r.network.ss_family == AF_INET) {
        const auto* p = reinterpret_cast<const sockaddr_in*>(&peer);
        return prefix_equal(reinterpret_cast<const unsigned char*>(&p->sin_addr),
                            reinterpret_cast<const unsigned char*>(&rn4->sin_addr), r.prefix_len);
    }
    if (peer.ss_family == AF_INET6 && r.network.ss_family == AF_INET6) {
        const auto* p = reinterpret_cast<const sockaddr_in6*>(&peer);
        return prefix_equal(reinterpret_cast<const unsigned char*>(&p->sin6_addr),
                            reinterpret_cast<const unsigned char*>(&rn6->sin6_addr), r.prefix_len);
    }
    // An IPv4 client on an IPv6 socket arrives as ::ffff:a.b.c.d: match IPv4 rules.
    if (peer.ss_family == AF_INET6 && r.network.ss_family == AF_INET) {
        const auto* p = reinterpret_cast<const sockaddr_in6*>(&peer);
        if (IN6_IS_ADDR_V4MAPPED(&p->sin6_addr))
            return prefix_equal(reinterpret_cast<const unsigned char*>(&p->sin6_addr) + 12,
                                reinterpret_cast<const unsigned char*>(&rn4->sin_addr), r.prefix_len);
    }
    return false;
}

bool list_matches(const std::vector<std::string>& list, const std::string& value)
{
    if (list.empty())
        return true;
    for (const auto& v : list)
        if (v == value)
            return true;
    return false;
}

} // namespace

const char* method_name(Method m)
{
    switch (m) {
    case Method::Trust:
        return "trust";
    case Method::Reject:
        return "reject";
    case Method::Scram:
        return "scram-sha-256";
    case Method::Md5:
        return "md5";
    case Method::Jwt:
        return "jwt";
    case Method::PassThrough:
        return "pass-through";
    }
    return "?";
}

bool parse_method(std::string_view text, Method& out)
{
    for (Method m : {Method::Trust, Method::Reject, Method::Scram, Method::Md5, Method::Jwt, Method::PassThrough})
        if (text == method_name(m)) {
            out = m;
            return true;
        }
    return false;
}

Result<std::vector<Rule>> parse_rules(const std::string& text, const std::string& name)
{
    std::vector<Rule> rules;
    std::istringstream in(text);
    std::string line;
    int lineno = 0;
    while (std::getline(in, line)) {
        ++lineno;
        if (size_t hash = line.find('#'); hash != std::string::npos)
            line.resize(hash);
        std::istringstream words(line);
        std::vector<std::string> f;
        for (std::string w; words >> w;)
            f.push_back(w);
        if (f.empty())
            continue;
        const std::string where = name + ":" + std::to_string(lineno) + ": ";
        Rule r;
        r.file = name;
        r.line = lineno;
        if (f[0] == "local")
            r.type = ConnType::Local;
        else if (f[0] == "host")
            r.type = ConnType::Host;
        else if (f[0] == "hostssl")
            r.type = ConnType::HostSsl;
        else if (f[0] == "hostnossl")
            r.type = ConnType::HostNoSsl;
        else
            return Error{where + "unknown connection type \"" + f[0] +
                         "\" (expected local, host, hostssl or hostnossl)"};
        const size_t need = r.type == ConnType::Local ? 4 : 5;
        if (f.size() < need)
            return Error{where + "too few fields: expected " +
                         (r.type == ConnType::Local ? "local DATABASE USER METHOD"
                                                    : f[0] + " DATABASE USER ADDRESS METHOD")};
        if (f[1] != "all")
            r.databases = split_commas(f[1]);
        if (f[2] != "all")
            r.users = split_commas(f[2]);
        size_t at = 3;
        if (r.type != ConnType::Local) {
            const std::string& addr = f[at++];
            if (addr != "all") {
                r.any_address = false;
                if (!parse_cidr(addr, r.network, r.prefix_len))
                    return Error{where + "invalid address \"" + addr +
                                 "\" (expected all, an IP address, or a CIDR such as 10.0.0.0/8)"};
            }
        }
        if (!parse_method(f[at], r.method))
            return Error{where + "unknown method \"" + f[at] +
                         "\" (expected trust, reject, scram-sha-256, md5, jwt or pass-through)"};
        for (size_t i = at + 1; i < f.size(); ++i) {
            size_t eq = f[i].find('=');
            std::string key = f[i].substr(0, eq), value = eq == std::string::npos ? "" : f[i].substr(eq + 1);
            if (key == "policy" && !value.empty()) {
                r.policy = value;
                continue;
            }
            if ((key == "allow_plaintext" || key == "oauthbearer") && r.method == Method::Jwt &&
                (value == "1" || value == "0")) {
                (key == "oauthbearer" ? r.oauthbearer : r.allow_plaintext) = value == "1";
                continue;
            }
            return Error{where + "unknown rule option \"" + f[i] + "\"" +
                         (r.method == Method::Jwt ? " (jwt rules take allow_plaintext=0|1, oauthbearer=0|1 and policy=NAME)"
                                                    : " (rules take policy=NAME)")};
        }
        rules.push_back(std::move(r));
    }
    if (rules.empty())
        return Error{name + ": no rules: every client would be refused; add at least one line"};
    return rules;
}

Result<std::vector<Rule>> load_rules(const std::string& path)
{
    std::ifstream in(path);
    if (!in)
        return Error{path + ": could not open auth_hba_file: " + std::strerror(errno)};
    std::stringstream ss;
    ss << in.rdbuf();
    return parse_rules(ss.str(), path);
}

const Rule* match_rule(const std::vector<Rule>& rules, const ConnectionFacts& c)
{
    for (const auto& r : rules) {
        if (r.type == ConnType::Local ? !c.local : c.local)
            continue;
        if (r.type == ConnType::HostSsl && !c.tls)
            continue;
        if (r.type == ConnType::HostNoSsl && c.tls)
            continue;
        if (!c.local && (!c.peer || !address_matches(r, *c.peer)))
            continue;
        if (!list_matches(r.databases, c.database) || !list_matches(r.users, c.user))
            continue;
        return &r;
    }
    return nullptr;
}

} // namespace pgw::auth
