// Worker entry point. Everything a child inherits from the supervisor is closed or
// reset here; no exception leaves this function, and the process ends with _exit().
#include "session/worker.hh"

#include "common/held_signals.hh"
#include "common/log.hh"
#include "ipc/fdpass.hh"
#include "session/exit_codes.hh"
#include "session/session.hh"

#include "pool/context.hh"
#include "pool/held.hh"
#include "tls/server_tls.hh"

#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <utility>

namespace pgw::session {
namespace {

void on_stop_signal(int) { g_stop_requested = 1; }
void on_cancel_signal(int) { g_cancel_signal = 1; }
void on_reload_signal(int) { g_reopen_log = 1; }
void on_drain_signal(int) { g_drain_notice = 1; }
// Only so that a cancel child's exit interrupts the relay's ppoll().
void on_child_signal(int) {}

void reset_signals()
{
    struct sigaction sa {};
    sigemptyset(&sa.sa_mask);
    // No SA_RESTART: a blocking poll() must return EINTR so the session sees the flag.
    sa.sa_handler = on_stop_signal;
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
    sa.sa_handler = on_cancel_signal;
    sigaction(SIGUSR1, &sa, nullptr);
    sa.sa_handler = on_reload_signal;
    sigaction(SIGHUP, &sa, nullptr);
    sa.sa_handler = on_drain_signal;
    sigaction(SIGUSR2, &sa, nullptr);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, nullptr);
    sa.sa_handler = on_child_signal;
    sigaction(SIGCHLD, &sa, nullptr);
    sa.sa_handler = SIG_DFL;
    sigaction(SIGQUIT, &sa, nullptr);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
}

// A handoff the worker may start a session with (the others are pooling replies).
bool starts_session(ipc::HandoffType t)
{
    return t == ipc::HandoffType::Session || t == ipc::HandoffType::Refuse || t == ipc::HandoffType::ShuttingDown ||
           t == ipc::HandoffType::Metrics;
}

// What one session may have left in the process-wide flags and log prefix.
void scrub_between_sessions()
{
    g_cancel_signal = 0;
    log::set_prefix("");
}

// The configuration a warm worker serves its sessions with: the one it was forked with,
// until a reload gives it another (Reconfigure).
struct Serving {
    const config::Config* cfg;
    SSL_CTX* tls;
    std::unique_ptr<config::Config> own_cfg;  // taken after a reload
    tls::ServerContext own_tls;
};

// After a reload: reads the configuration files as the supervisor did and takes what
// they say, provided they are what the supervisor read (the same digest) and the
// connection's route is the same under them; the error says why not.
Status take_configuration(Serving& s, const std::string& payload, const std::string& route, ipc::TableHeader& hosts)
{
    constexpr size_t kDigestLen = 64;  // config::source_digest, hex
    if (payload.size() < kDigestLen)
        return Error{"a Reconfigure message without a digest"};
    auto ctx = pool::decode_context(payload.substr(kDigestLen));
    if (!ctx)
        return Error{ctx.error()};
    auto next = config::load_file(s.cfg->path);
    if (!next)
        return Error{"the configuration does not load: " + next.error()};
    config::keep_restart_only(*s.cfg, *next, [](const config::OptionSpec&, const std::string&, const std::string&) {});
    if (auto errors = config::cross_check(*next); !errors.empty())
        return Error{"the configuration does not hold together: " + errors.front()};
    if (config::source_digest(*next) != payload.substr(0, kDigestLen))
        return Error{"the configuration files changed again since the supervisor read them"};
    auto keys = routes_for(*next, *ctx, hosts);
    if (!keys)
        return Error{keys.error()};
    if (std::find(keys->begin(), keys->end(), route) == keys->end())
        return Error{"its route's settings changed"};
    auto tls = tls::make_server_context(*next);
    if (!tls)
        return Error{tls.error()};
    s.own_cfg = std::make_unique<config::Config>(std::move(*next));
    s.own_tls = std::move(*tls);
    s.cfg = s.own_cfg.get();
    s.tls = s.own_tls.get();
    log::setup(config::log_settings(*s.cfg));
    return ok_status();
}

// Runs server_reset_query on a connection whose session has just ended (reset_pending),
// and counts it as idle and known to work from now.
Status reset_if_pending(pool::HeldUpstream& held, const config::Config& cfg)
{
    if (!std::exchange(held.reset_pending, false))
        return ok_status();
    const auto deadline = net::Clock::now() + std::chrono::seconds(cfg.server_connect_timeout);
    if (auto st = pool::simple_query(held, cfg.server_reset_query, deadline); !st)
        return st;
    held.idle_since = held.checked = net::Clock::now();
    return ok_status();
}

// A pooled connection between sessions: the worker tells the supervisor it is warm and
// waits for a client (MoveClient, or a new connection the supervisor guessed is for it).
// The server closing or speaking, server_idle_timeout and server_lifetime make it ask to
// leave; it goes only when the supervisor answers Retire, because a client may already
// be on its way to it. After a reload (Reconfigure) it takes the new configuration, or
// asks to leave when it cannot.
[[noreturn]] void keep_warm(const config::Config& forked_cfg, const ipc::SessionTable& table, SSL_CTX* forked_tls,
                            WorkerState& ws)
{
    using namespace std::chrono;
    Serving serving{&forked_cfg, forked_tls, nullptr, nullptr};
    for (;;) {
        const config::Config& cfg = *serving.cfg;
        scrub_between_sessions();
        pool::HeldUpstream& held = *ws.held;
        log::set_prefix("pool " + pool::route_label(held.route) + " (backend pid " + std::to_string(held.backend_pid) + ")");
        if (cfg.server_lifetime > 0 && net::Clock::now() >= held.created + seconds(cfg.server_lifetime)) {
            log_info("closing pooled connection: server_lifetime (%ld s) reached", cfg.server_lifetime);
            pool::close_gracefully(held);
            _exit(kExitOk);
        }
        if (auto st = ipc::send_message(ws.channel, ipc::HandoffType::Warm, held.route); !st) {
            log_error("telling the supervisor the connection is warm: %s", st.error().c_str());
            pool::close_gracefully(held);
            _exit(kExitChannelError);
        }
        pool::mark_server(held, table, pool::ServerState::Warm);
        log_debug("warm");
        // Asks the supervisor to let it go; it answers Retire, or a client already on its
        // way to this worker comes first.
        bool leaving = false;
        auto ask_to_leave = [&] {
            if (!ipc::send_message(ws.channel, ipc::HandoffType::Leaving)) {
                pool::close_gracefully(held);
                _exit(kExitChannelError);
            }
            leaving = true;
        };
        if (auto st = reset_if_pending(held, cfg); !st) {
            // A client may be on its way already: it gets a fresh connection.
            log_info("pooled connection not kept: %s", st.error().c_str());
            held.conn.reset();
            held.standby.reset();
            ask_to_leave();
        } else if (held.standby) {
            // read_routing: the standby connection the session routed reads to is kept
            // only when it resets too; the pooled connection stays either way.
            if (auto sst = reset_if_pending(*held.standby, cfg); !sst) {
                log_info("standby connection (backend pid %u) not kept: %s", held.standby->backend_pid,
                         sst.error().c_str());
                held.standby.reset();
            }
        }
        // SIGTERM and SIGINT are let in only inside ppoll(): one that comes between the
        // look at the flag and the wait is not lost, so the wait needs no tick and lasts
        // until the connection's next deadline (an idle warm worker costs no wake-ups).
        HeldSignals stop_signals{SIGTERM, SIGINT};
        for (;;) {
            auto deadline = net::Clock::time_point::max();
            if (cfg.server_idle_timeout > 0)
                deadline = std::min(deadline, held.idle_since + seconds(cfg.server_idle_timeout));
            if (cfg.server_lifetime > 0)
                deadline = std::min(deadline, held.created + seconds(cfg.server_lifetime));
            pollfd fds[3] = {{ws.channel, POLLIN, 0},
                             {held.fd(), POLLIN, 0},
                             {held.standby ? held.standby->fd() : -1, POLLIN, 0}};
            timespec ts{};
            const timespec* timeout = nullptr;  // leaving: until the supervisor answers
            if (!leaving && deadline != net::Clock::time_point::max()) {
                const int ms = std::max(0, net::ms_until(deadline));
                ts.tv_sec = ms / 1000;
                ts.tv_nsec = long(ms % 1000) * 1000000L;
                timeout = &ts;
            }
            const int n = g_stop_requested ? 0 : ::ppoll(fds, leaving ? 1 : 3, timeout, stop_signals.wait_mask());
            if (g_stop_requested) {
                pool::close_gracefully(held);
                _exit(kExitShutdown);
            }
            if (n > 0 && fds[0].revents) {
                if (!leaving && !fds[1].revents)
                    held.quiet_at = net::Clock::now();
                auto msg = ipc::receive_handoff(ws.channel);
                if (!msg || msg->handoff.type == ipc::HandoffType::Retire) {
                    if (!msg && msg.error() != "channel closed")
                        log_error("warm worker: %s", msg.error().c_str());
                    log_debug("retired");
                    pool::close_gracefully(held);
                    _exit(kExitOk);
                }
                if (msg->handoff.type == ipc::HandoffType::Reconfigure) {
                    if (leaving)
                        continue;  // Retire is on its way
                    if (auto st = take_configuration(serving, msg->payload, held.route, *table.header()); !st) {
                        log_info("pooled connection not kept after the reload: %s", st.error().c_str());
                        ask_to_leave();
                        continue;
                    }
                    log_info("took the reloaded configuration; the pooled connection stays");
                    stop_signals.restore();
                    break;  // warm again, under the new configuration
                }
                // A client moved here, or a new connection the supervisor guessed is for
                // this route (it may be for another, a cancel request, the console).
                if (msg->handoff.type != ipc::HandoffType::MoveClient && !starts_session(msg->handoff.type)) {
                    log_error("warm worker: unexpected message %u", unsigned(msg->handoff.type));
                    _exit(kExitChannelError);
                }
                stop_signals.restore();
                int code = run_session(cfg, table, serving.tls, std::move(*msg), ws);
                // Still holding a reusable connection: warm again, whatever the client did.
                if (!ws.held || code == kExitShutdown || code == kExitInternal || code == kExitChannelError ||
                    g_stop_requested)
                    _exit(code == kExitHandedOver ? kExitOk : code);
                break;  // warm again
            }
            if (leaving)
                continue;
            if (n > 0 && fds[2].revents && held.standby) {
                log_info("the standby connection (%s, backend pid %u) was closed or spoken on by the server; "
                         "closing it",
                         held.standby->where.c_str(), held.standby->backend_pid);
                pool::close_gracefully(*held.standby);
                held.standby.reset();
                if (!fds[1].revents)
                    continue;
            }
            const bool stirred = n > 0 && fds[1].revents;
            if (stirred || net::Clock::now() >= deadline) {
                log_info("pooled connection %s; leaving the pool",
                         stirred ? "was closed or spoken on by the server"
                                 : cfg.server_lifetime > 0 && net::Clock::now() >= held.created + seconds(cfg.server_lifetime)
                                       ? "reached server_lifetime"
                                       : "reached server_idle_timeout");
                ask_to_leave();
            }
        }
    }
}

} // namespace

void worker_main(const config::Config& cfg, const ipc::SessionTable& table, SSL_CTX* tls, int channel,
                 const std::vector<int>& close_fds)
{
    int code = kExitInternal;
    try {
        reset_signals();
        // Listeners, epoll, signalfd and other workers' channels are the supervisor's.
        // (Closed by number rather than by range: libraries such as sd-journal keep
        // descriptors of their own that must stay valid.)
        for (int fd : close_fds)
            ::close(fd);
        log::set_process_name("worker");
        log::set_prefix("");
        // A worker that serves several sessions (pooling) reuses the relay's buffers
        // from its heap instead of mapping and faulting in fresh pages for each.
        mallopt(M_MMAP_THRESHOLD, 1024 * 1024);
        mallopt(M_TRIM_THRESHOLD, 2 * 1024 * 1024);

        // The channel stays open for the worker's life: pooled sessions talk to the
        // supervisor on it.
        WorkerState ws;
        ws.channel = channel;
        for (;;) {
            auto work = ipc::receive_handoff(channel);
            if (!work) {
                // The supervisor closes an idle spare's channel to retire it.
                if (work.error() == "channel closed")
                    _exit(kExitOk);
                log_error("handoff failed: %s", work.error().c_str());
                _exit(kExitChannelError);
            }
            if (work->handoff.type == ipc::HandoffType::Prefill) {
                code = prefill_route(cfg, *table.header(), work->payload, ws);
                break;
            }
            if (!starts_session(work->handoff.type)) {
                log_error("handoff failed: a spare got message %u", unsigned(work->handoff.type));
                _exit(kExitChannelError);
            }
            if (g_stop_requested)
                _exit(kExitShutdown);
            code = run_session(cfg, table, tls, std::move(*work), ws);
            if (code != kExitHandedOver)
                break;
            // The client went to a warm worker; this one never touched an upstream and
            // is a spare again.
            scrub_between_sessions();
        }
        if (ws.held && code == kExitOk)
            keep_warm(cfg, table, tls, ws);
    } catch (const std::exception& e) {
        log_error("internal error: %s", e.what());
        code = kExitInternal;
    } catch (...) {
        log_error("internal error: unknown exception");
        code = kExitInternal;
    }
    // _exit, not exit: no atexit handlers or static destructors of the supervisor's
    // state may run in a child.
    _exit(code);
}

} // namespace pgw::session
