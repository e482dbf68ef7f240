// Client authentication rules: pgwicket's pg_hba. An ordered list read from
// auth_hba_file (or one rule made from auth_type); the first match picks the method.
#pragma once

#include "common/result.hh"

#include <sys/socket.h>

#include <string>
#include <string_view>
#include <vector>

namespace pgw::auth {

enum class ConnType { Local, Host, HostSsl, HostNoSsl };
// PassThrough: the upstream server authenticates the client (pgwicket relays the exchange).
enum class Method { Trust, Reject, Scram, Md5, Jwt, PassThrough };

const char* method_name(Method m);
// "trust", "reject", "scram-sha-256", "md5", "jwt", "pass-through"; false when unknown.
bool parse_method(std::string_view text, Method& out);

struct Rule {
    ConnType type = ConnType::Host;
    std::vector<std::string> databases;  // empty: all
    std::vector<std::string> users;      // empty: all
    bool any_address = true;
    sockaddr_storage network{};          // when !any_address: the masked address
    int prefix_len = 0;
    Method method = Method::Trust;
    bool allow_plaintext = false;        // jwt: accept a token without TLS
    bool oauthbearer = false;            // jwt: SASL OAUTHBEARER (libpq 18) instead of a password
    std::string policy;                  // policy=NAME: the [policy.NAME] for sessions it admits
    std::string file;                    // where it was written, for messages
    int line = 0;
};

// Parses pg_hba-style text: TYPE DATABASE USER [ADDRESS] METHOD [name=value ...].
// jwt rules take allow_plaintext=0|1 and oauthbearer=0|1; every rule takes policy=NAME.
// Errors name `name` and the line.
Result<std::vector<Rule>> parse_rules(const std::string& text, const std::string& name);
Result<std::vector<Rule>> load_rules(const std::string& path);

struct ConnectionFacts {
    bool local = false;  // Unix socket
    bool tls = false;
    const sockaddr_storage* peer = nullptr;  // TCP only
    std::string database;
    std::string user;
};

// The first rule that matches, or nullptr.
const Rule* match_rule(const std::vector<Rule>& rules, const ConnectionFacts& facts);

} // namespace pgw::auth
