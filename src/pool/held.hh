// A pooled upstream connection held by a worker between sessions (warm) and during
// them: the libpq connection that owns the socket, the route it serves, and what the
// server has told it (ParameterStatus), so the next client's greeting is true.
#pragma once

#include "common/net.hh"
#include "common/result.hh"
#include "upstream/connect.hh"
#include "upstream/transport.hh"

#include <cstdint>
#include <map>
#include <memory>
#include <string>

namespace pgw::pool {

struct HeldUpstream {
    upstream::PgConnPtr conn;
    std::string route;
    std::string where;  // upstream::describe(), for logs and errors
    std::map<std::string, std::string> parameters;  // the server's ParameterStatus values now
    std::uint32_t backend_pid = 0;
    net::Clock::time_point created{}, idle_since{}, checked{};
    unsigned sessions = 0;  // served so far
    // The last client has left and server_reset_query has not run yet: the worker says
    // it is warm first (so the next client is not sent elsewhere meanwhile), then resets
    // before it reads its next message.
    bool reset_pending = false;

    int fd() const { return PQsocket(conn.get()); }
    // A transport over libpq's socket (and its TLS session); the connection must outlive it.
    std::unique_ptr<upstream::Transport> transport() const;
};

// Takes over a fresh libpq connection: its reported parameters and backend pid.
HeldUpstream hold(upstream::PgConnPtr conn, std::string route, std::string where);

// One simple Query on the raw stream, read to its ReadyForQuery before `deadline`;
// ParameterStatus messages update `held.parameters`, notices and notifications are
// dropped. An ErrorResponse, a close, a protocol surprise or a status other than 'I'
// is an error: the connection's state is then in doubt and it must not be reused.
Status simple_query(HeldUpstream& held, const std::string& sql, net::Clock::time_point deadline);

// Whether the server has sent anything, or closed, while nobody was talking to it.
bool stirred(const HeldUpstream& held);

// Sends Terminate (best effort, never blocking) and closes the connection.
void close_gracefully(HeldUpstream& held);

} // namespace pgw::pool
