// Worker entry point. Everything a child inherits from the supervisor is closed or
// reset here; no exception leaves this function, and the process ends with _exit().
#include "session/worker.hh"

#include "common/log.hh"
#include "ipc/fdpass.hh"
#include "session/exit_codes.hh"
#include "session/session.hh"

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <exception>

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

        auto work = ipc::receive_handoff(channel);
        if (!work) {
            // The supervisor closes an idle spare's channel to retire it.
            if (work.error() == "channel closed")
                _exit(kExitOk);
            log_error("handoff failed: %s", work.error().c_str());
            _exit(kExitChannelError);
        }
        ::close(channel);
        if (g_stop_requested)
            _exit(kExitShutdown);
        code = run_session(cfg, table, tls, std::move(*work));
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
