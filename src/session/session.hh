// One client session in a worker: the state machine of DESIGN.md from the first
// packet to the end of the relay. Returns the worker's exit code; never exits itself.
#pragma once

#include "config/config.hh"
#include "ipc/fdpass.hh"
#include "ipc/session_table.hh"
#include "pool/context.hh"
#include "pool/held.hh"
#include "session/exit_codes.hh"

#include <openssl/ssl.h>

#include <csignal>
#include <optional>

namespace pgw::session {

// Set by the worker's SIGTERM/SIGINT handler; the session polls it.
extern volatile std::sig_atomic_t g_stop_requested;
// Set by the worker's SIGUSR1 handler: someone bumped our slot's cancel sequence.
extern volatile std::sig_atomic_t g_cancel_signal;
// Set by the worker's SIGHUP handler: the supervisor reloaded; reopen the log file.
extern volatile std::sig_atomic_t g_reopen_log;
// Set by the worker's SIGUSR2 handler: pgwicket is draining (only the admin console acts on it).
extern volatile std::sig_atomic_t g_drain_notice;

// What a worker carries from one session to the next: its channel to the supervisor
// and, on a pooled route, the upstream connection it holds (empty otherwise).
struct WorkerState {
    int channel = -1;
    std::optional<pool::HeldUpstream> held;
};

// min_pool_size: opens a connection of the route a session context names, with no
// client, into `ws.held` (left empty when the entry or the route changed, or the
// connection failed; the log says which).
// `hosts`: the health checker's rows (the route's host of a multi-host entry).
ExitCode prefill_route(const config::Config& cfg, ipc::TableHeader& hosts, const std::string& context,
                       WorkerState& ws);
// min_pool_size before a route's first client: the session context of a client that logs
// in to a pooled entry as the entry's own upstream user and sends nothing else, with its
// route; one per host for an entry of several hosts (none until the health checker has
// seen them). None for '*', for entries without min_pool_size, and for entries that do
// not fix their upstream user (it would be each client's).
std::vector<pool::SessionContext> starting_contexts(const config::Config& cfg, const config::DatabaseEntry& entry,
                                                   ipc::TableHeader& hosts);

// The route keys a client of this context may get under `cfg` (one per host of a
// multi-host entry), with why not when it gets none (the entry is gone or no longer
// pooled, its parameters do not build).
Result<std::vector<std::string>> routes_for(const config::Config& cfg, const pool::SessionContext& ctx,
                                            ipc::TableHeader& hosts);

// Runs one session. kExitHandedOver: the client moved to a warm worker and this
// worker may serve another; `ws.held` set: a pooled connection, reset, to keep warm.
ExitCode run_session(const config::Config& cfg, const ipc::SessionTable& table, SSL_CTX* tls,
                     ipc::Received&& work, WorkerState& ws);

} // namespace pgw::session
