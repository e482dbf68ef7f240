// A pooled upstream connection held by a worker between sessions (warm) and during
// them: the libpq connection that owns the socket, the route it serves, and what the
// server has told it (ParameterStatus), so the next client's greeting is true.
#pragma once

#include "common/net.hh"
#include "common/result.hh"
#include "ipc/session_table.hh"
#include "health/hosts.hh"
#include "upstream/connect.hh"
#include "upstream/transport.hh"

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>

namespace pgw::pool {

using ServerState = ipc::ServerState;

// This process's row in the shared table's SHOW SERVERS list, cleared when the lease
// ends (the connection is closed, or its HeldUpstream destroyed). Move-only.
class ServerRowLease {
public:
    ServerRowLease() = default;
    explicit ServerRowLease(ipc::ServerRow* row) : row_(row) {}
    ServerRowLease(ServerRowLease&& o) noexcept : row_(std::exchange(o.row_, nullptr)) {}
    ServerRowLease& operator=(ServerRowLease&& o) noexcept
    {
        if (this != &o) {
            release();
            row_ = std::exchange(o.row_, nullptr);
        }
        return *this;
    }
    ServerRowLease(const ServerRowLease&) = delete;
    ServerRowLease& operator=(const ServerRowLease&) = delete;
    ~ServerRowLease() { release(); }

    ipc::ServerRow* get() const { return row_; }
    explicit operator bool() const { return row_ != nullptr; }
    void release();

private:
    ipc::ServerRow* row_ = nullptr;
};

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
    // When the warm worker's wait last found the server silent (the wait that a client
    // ended): a client that comes right after needs no look of its own.
    net::Clock::time_point quiet_at{};
    ServerRowLease row;  // in SHOW SERVERS, once mark_server has found a free row
    health::HostWatch watch;  // its host's role when connected (multi-host entries)
    // read_routing on a pooled route: the standby connection that the sessions of this
    // one route their reads to, kept with it between sessions (reset, and closed, with
    // it). Opened by the first session that reads; listed in SHOW SERVERS (pool name
    // followed by "(standby)") from its first session's end.
    std::unique_ptr<HeldUpstream> standby;
    int standby_row = -1;  // the standby's host row (health checker), -1 when not listed

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

// SET application_name on a held connection (its ParameterStatus updates `parameters`),
// so the server names the client that uses it now.
Status set_application_name(HeldUpstream& held, const std::string& name, net::Clock::time_point deadline);

// Whether the server has sent anything, or closed, while nobody was talking to it.
bool stirred(const HeldUpstream& held);

// Sends Terminate (best effort, never blocking) and closes the connection.
void close_gracefully(HeldUpstream& held);

// Publishes the connection's state, its times and session count in its SHOW SERVERS
// row, claiming a free row of `table` on the first call, and the same for its kept
// standby connection ("<pool> (standby)"). Without a free row the connection works all
// the same and is not listed (one warning per pgwicket run).
void mark_server(HeldUpstream& held, const ipc::SessionTable& table, ServerState state);

} // namespace pgw::pool
