// The session's cancels of its upstream query: each sent by a short-lived child whose
// time is bounded, and the hold on the client's next statement while one is in flight.
#pragma once

#include "common/result.hh"

#include <functional>

namespace pgw::session {

class UpstreamCanceller {
public:
    // `send` sends one cancel to the upstream server; it runs in the child, which
    // closes `client_fd` and `upstream_fd` first. Without `send`, cancels are only logged.
    UpstreamCanceller(std::function<Status()> send, int client_fd, int upstream_fd);
    ~UpstreamCanceller() { reap(); }
    UpstreamCanceller(const UpstreamCanceller&) = delete;
    UpstreamCanceller& operator=(const UpstreamCanceller&) = delete;

    // Starts a cancel; `why` names the reason in the log.
    void cancel(const char* why);
    // Collects finished children; never waits for one.
    void reap();
    // A ReadyForQuery arrived: the query a cancel was aimed at has ended.
    void on_ready_for_query() { idle_since_cancel_ = true; }

    // PostgreSQL's postmaster signals a cancelled backend twice (the process, then
    // its process group). If the backend handles the first before the second lands,
    // the second can cancel whatever runs next; the relay forwards the client's next
    // statement within a millisecond of the error, so it is held until the cancel
    // child has exited: by then the postmaster has sent both signals. Held from the
    // ReadyForQuery that ends the cancelled query (the next statement's header must
    // not release it); the child's exit (SIGCHLD) wakes the relay.
    bool hold() const { return children_ > 0 && idle_since_cancel_; }
    // A cancel child is still running (its signal may yet land on the backend).
    bool busy() const { return children_ > 0; }

private:
    static constexpr unsigned kSeconds = 10;  // bound on one child

    std::function<Status()> send_;
    int client_fd_;
    int upstream_fd_;
    int children_ = 0;
    bool idle_since_cancel_ = false;  // a ReadyForQuery came after the last cancel started
};

} // namespace pgw::session
