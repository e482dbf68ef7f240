// SASL OAUTHBEARER (RFC 7628) as PostgreSQL 18 and libpq 18 use it: the client's initial
// response, and the error challenge that sends libpq off to run its OAuth device flow.
#pragma once

#include <string>
#include <string_view>
#include <variant>

namespace pgw::auth::oauthbearer {

inline constexpr const char* kMechanism = "OAUTHBEARER";
// PostgreSQL's PG_MAX_AUTH_TOKEN_LENGTH. The JWT layer caps the token itself lower.
inline constexpr size_t kMaxMessage = 65535;

// The exchange, as PostgreSQL 18 runs it:
//   server: AuthenticationSASL ["OAUTHBEARER"]
//   client: SASLInitialResponse  "n,,\x01auth=Bearer <token>\x01\x01"
//           -> token good: AuthenticationOk
//           -> token bad, or "auth=" empty (a client asking how to get a token):
//   server: AuthenticationSASLContinue <error_challenge() JSON>
//   client: SASLResponse "\x01"            (is_error_ack)
//   server: ErrorResponse FATAL; libpq runs the flow and connects again with a token.
struct ClientResponse {
    enum class Kind {
        Token,      // "auth=Bearer <token>": `token` is set
        Discovery,  // "auth=" empty: the client has no token yet and asks for parameters
        BadToken,   // an auth value that is not a well-formed Bearer credential
    };
    Kind kind = Kind::Discovery;
    std::string token;
    // From "a=..." in the gs2 header, unescaped; empty if absent. PostgreSQL refuses any
    // authzid (0A000); the caller decides.
    std::string authzid;
};

// Malformed message: the caller sends FATAL 08P01. Never quotes the message.
struct ProtocolError {
    std::string message;
};

std::variant<ClientResponse, ProtocolError> parse_initial_response(std::string_view message);

// The only valid client reply to error_challenge(): a single 0x01 byte.
inline bool is_error_ack(std::string_view message)
{
    return message.size() == 1 && message[0] == '\x01';
}

// {"status":"invalid_token","openid-configuration":"<discovery URL>","scope":"<scope>"}.
// The discovery URL is `issuer` + "/.well-known/openid-configuration" (OIDC Discovery,
// one trailing '/' of the issuer dropped first), or `issuer` as is when it already holds
// a "/.well-known/" segment. libpq 18 requires the document's issuer to equal its own
// oauth_issuer setting. An empty `scope` is left out.
std::string error_challenge(std::string_view issuer, std::string_view scope);

} // namespace pgw::auth::oauthbearer
