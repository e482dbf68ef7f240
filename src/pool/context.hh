// What a warm worker needs to carry on a session that another worker accepted and
// authenticated: who the client is and what it asked for. Sent through the
// supervisor with the client's fd (MoveClient); checked field by field on receipt.
#pragma once

#include "common/result.hh"

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pgw::pool {

struct SessionContext {
    std::string route;  // the route key the asker computed; the warm worker checks it
    std::string entry;  // the [databases] entry's name (the supervisor's limits come from it)
    std::string user;
    std::string database;
    std::string identity;     // the SSO identity, else the user name
    std::string rule_policy;  // the matched rule's policy=NAME
    std::uint32_t method = 0;         // auth::Method
    std::uint32_t secret_length = 4;  // of the client's cancel secret
    std::uint16_t protocol_minor = 0;
    // Nonzero: the client is on TLS and stays with this worker (its pid), which relays
    // the decrypted stream over the socket that travels instead of the client's.
    std::uint32_t relayed_by = 0;
    std::vector<std::string> groups;
    std::vector<std::pair<std::string, std::string>> startup;  // the client's startup parameters, in order
};

std::string encode(const SessionContext& c);
Result<SessionContext> decode_context(std::string_view bytes);

} // namespace pgw::pool

#include "upstream/connect.hh"

namespace pgw::pool {

// A route: connections interchangeable between clients. "entry/user/dbname/digest",
// the digest (SHA-256, hex, shortened) over every libpq parameter but
// application_name, which is set per client. No password appears in the key.
std::string route_key(const std::string& entry, const upstream::Params& params);

// "entry/user/dbname", for SHOW POOLS and logs.
std::string route_label(const std::string& route);

} // namespace pgw::pool
