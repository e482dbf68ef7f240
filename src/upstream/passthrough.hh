// Pass-through mode: pgwicket opens the upstream connection itself (TCP, TLS with its
// own OpenSSL client), forwards the client's startup and relays the server's
// authentication exchange both ways, so the server's pg_hba.conf decides who gets in.
#pragma once

#include "common/net.hh"
#include "common/result.hh"
#include "common/unique_fd.hh"
#include "config/config.hh"
#include "protocol/startup.hh"
#include "tls/server_tls.hh"

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace pgw::upstream {

// Where a [databases] entry points, in the terms pass-through needs.
struct PassThroughTarget {
    std::string host;  // the first host of the entry
    std::string port = "5432";
    std::string dbname;  // empty: the client's database
    std::string sslmode = "prefer";
    std::string sslrootcert;
    std::string describe() const;  // "host=... port=... sslmode=...", no secrets
};

Result<PassThroughTarget> pass_through_target(const config::DatabaseEntry& entry);

struct PassThroughSession {
    UniqueFd fd;
    std::unique_ptr<tls::Conn> conn;  // plain or TLS on fd
    std::uint32_t backend_pid = 0;     // the server's own cancel key: the pid goes to the client,
                                       // the secret never does
    std::uint32_t backend_secret = 0;
    char status = 'I';  // from the first ReadyForQuery, which is not yet sent to the client
};

struct PassThroughFailure {
    std::string sqlstate;   // for our FATAL, when `forwarded` is false
    std::string message;
    std::string hint;  // what the person can do about it
    std::string log;
    bool forwarded = false;  // the server's own error already went to the client
    bool client_left = false;
};

// Connects, logs in with the client's startup parameters (user, database, the rest,
// application_name naming the client), relays every authentication message, and
// forwards the greeting with the server's pid and our secret in the cancel key (the
// server's own secret stays in the returned session). SCRAM-SHA-256-PLUS is never offered to the client: channel binding would
// bind the client's TLS connection, which ends here, so the server could not check it.
std::variant<PassThroughSession, PassThroughFailure>
pass_through_login(const PassThroughTarget& target, const std::vector<std::pair<std::string, std::string>>& params,
                   tls::Conn& client, protocol::ByteSpan our_secret,
                   net::Clock::time_point deadline);

// A CancelRequest for the server's key, sent the way PostgreSQL expects it (plain TCP,
// then wait for the server to close). For the session's canceller child.
Status send_cancel(const PassThroughTarget& target, std::uint32_t pid, std::uint32_t secret,
                   net::Clock::time_point deadline);

} // namespace pgw::upstream
