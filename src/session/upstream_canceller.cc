// Upstream cancels from short-lived children. PQcancel opens a connection of its own to
// the server and waits for it to close, with no timeout: a server (or a middlebox) that
// takes the connection and never answers would freeze the session, the query's own
// result included. So a child sends it, bounded by alarm(), and the relay never waits.
#include "session/upstream_canceller.hh"

#include "common/log.hh"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace pgw::session {

UpstreamCanceller::UpstreamCanceller(std::function<Status()> send, int client_fd, int upstream_fd)
    : send_(std::move(send)), client_fd_(client_fd), upstream_fd_(upstream_fd)
{
}

void UpstreamCanceller::cancel(const char* why)
{
    if (!send_) {
        log_warning("could not cancel the upstream query after %s: no cancel handle", why);
        return;
    }
    pid_t pid = fork();
    if (pid < 0) {
        log_warning("could not cancel the upstream query after %s: fork: %s", why, std::strerror(errno));
        return;
    }
    if (pid == 0) {
        // The child must not keep the session's sockets open: the client would
        // not see its connection close while the child waits.
        ::close(client_fd_);
        ::close(upstream_fd_);
        signal(SIGTERM, SIG_DFL);
        signal(SIGINT, SIG_DFL);
        signal(SIGUSR1, SIG_IGN);
        signal(SIGALRM, SIG_DFL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, nullptr);  // the relay blocks some; not here
        alarm(kSeconds);
        if (auto st = send_(); !st) {
            log_warning("could not cancel the upstream query after %s: %s", why, st.error().c_str());
            _exit(1);
        }
        _exit(0);
    }
    ++children_;
    idle_since_cancel_ = false;
    log_info("cancelling the upstream query after %s", why);
}

void UpstreamCanceller::reap()
{
    while (children_ > 0) {
        int status = 0;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid <= 0)
            return;
        --children_;
        if (WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM)
            log_warning("the upstream did not answer a cancel request within %u s", kSeconds);
    }
}

} // namespace pgw::session
