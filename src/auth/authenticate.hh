// Client authentication in the worker: pick the rule, run its method's exchange
// over the client connection, and name the identity the session runs as.
#pragma once

#include "auth/rules.hh"
#include "common/net.hh"
#include "config/config.hh"
#include "ipc/session_table.hh"
#include "tls/server_tls.hh"

#include <sys/socket.h>

#include <string>
#include <vector>

namespace pgw::auth {

struct AuthRequest {
    const config::Config& cfg;
    tls::Conn& conn;
    std::string user;
    std::string database;
    bool local = false;                      // Unix socket
    const sockaddr_storage* peer = nullptr;  // TCP only
    std::string peer_host;                   // for messages
    net::Clock::time_point deadline;
    // The key fetcher's status (signing keys fetched from the provider); may be null.
    const ipc::SessionTable* table = nullptr;
};

struct AuthResult {
    bool ok = false;
    bool client_left = false;  // the client closed during the exchange (libpq asking for a password)
    Method method = Method::Trust;
    std::string identity;  // who the session runs as: the SSO identity, else the user name
    std::vector<std::string> groups;  // the token's groups claim (jwt only)
    std::string rule_policy;          // the matched rule's policy=NAME
    // On failure: what the client gets (FATAL), and a longer line for our log.
    std::string sqlstate;
    std::string message;
    std::string hint;
    std::string log;
};

AuthResult authenticate(const AuthRequest& req);

} // namespace pgw::auth
