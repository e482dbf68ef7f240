// The established session's watcher in the relay: it keeps the slot true, routes a
// cancel or an expired timeout to the upstream canceller, and joins the policy gate,
// the audit trail and the result caps to the messages the relay frames. One per
// session: what it holds is forgotten when the session ends.
#pragma once

#include "config/config.hh"
#include "health/hosts.hh"
#include "ipc/session_table.hh"
#include "common/net.hh"
#include "session/audit_trail.hh"
#include "session/policy_gate.hh"
#include "session/read_router.hh"
#include "session/relay.hh"
#include "session/result_caps.hh"
#include "session/slot_report.hh"
#include "session/upstream_canceller.hh"

#include <functional>
#include <string>

namespace pgw::session {

class SessionControl final : public RelayObserver {
public:
    // `cancel` sends the upstream cancel; it runs in a short-lived child.
    // `gate` (may be null) checks statements against the session's policy;
    // `query_timeout` and `idle_timeout` are in seconds (0: none).
    SessionControl(const config::Config& cfg, ipc::Slot* slot, std::function<Status()> cancel, int client_fd,
                   int upstream_fd, PolicyGate* gate, AuditTrail* trail, long query_timeout, long idle_timeout);

    // The policy's caps, and SET pgwicket.max_rows / max_bytes that it allowed (value -1:
    // back to the policy's).
    void set_caps(long max_rows, long max_bytes, bool allow_override) { caps_.set(max_rows, max_bytes, allow_override); }
    void set_cap(const std::string& setting, long value, const policy::Policy& p);

    bool inspect_client(char type) override;
    std::optional<protocol::Bytes> on_client_body(char type, protocol::ByteSpan body) override;
    void on_client_message(char type, protocol::ByteSpan head) override;
    void on_server_message(char type, std::uint64_t size) override;
    // Rows past a cap are dropped by the relay from their headers, a run of them at once
    // (the server goes on sending until the cancel lands).
    bool drop_server(char type) override { return caps_.drops(type); }
    std::optional<protocol::Bytes> on_server_body(char type, protocol::ByteSpan body) override;
    std::optional<protocol::Bytes> on_server_error(const protocol::ErrorFields& e) override;
    void on_ready_for_query(char status) override;
    void on_bytes(bool from_client, size_t n) override
    {
        report_.count(from_client ? ipc::kBytesFromClient : ipc::kBytesFromServer, n);
    }
    void on_command_complete(std::string_view tag) override;
    protocol::Bytes stop_message() override;
    int poll_timeout_ms() override;
    bool hold_client_input() override { return canceller_.hold(); }
    void on_wake() override;
    // A session of a multi-host entry ends when its host changes role (a failover):
    // looked at on every ReadyForQuery and at least every second.
    void watch_host(const ipc::TableHeader* h, health::HostWatch w)
    {
        watch_table_ = h;
        watch_ = std::move(w);
    }
    // read_routing: the router sees the client's stream as the relay scans it.
    void set_router(ReadRouter* r) { router_ = r; }
    // Pooled sessions keep the upstream: the client's Terminate is not forwarded.
    void set_keep_upstream(bool keep) { keep_upstream_ = keep; }
    bool keep_upstream() override { return keep_upstream_; }
    // Nothing of the session is in flight upstream: every client message since the
    // last ReadyForQuery was a Terminate, and no cancel child is running. With the
    // relay's outcome (at a boundary, status 'I') this is what makes a pooled
    // connection reusable.
    bool quiescent()
    {
        canceller_.reap();
        return !active_ && !canceller_.busy();
    }

    // The session ends while the upstream may still run its query (shutdown, KILL, a
    // client that broke the protocol): cancel that query, as PostgreSQL's own shutdown
    // would end it, instead of leaving it to run to completion on a backend nobody
    // reads. The cancel child outlives this process if it must (bounded by its alarm).
    void abandon(const char* why)
    {
        canceller_.reap();
        if (active_ && !canceller_.busy())
            canceller_.cancel(why);
    }

private:
    protocol::Bytes routed(char type, protocol::Bytes replacement);
    void check_role();
    int poll_timeout_unwatched_ms();
    net::Clock::time_point timeout_deadline() const { return started_ + std::chrono::seconds(query_timeout_); }

    const config::Config& cfg_;
    SlotReport report_;
    UpstreamCanceller canceller_;
    PolicyGate* gate_;
    AuditTrail* trail_;
    ReadRouter* router_ = nullptr;
    ResultCaps caps_;
    std::uint32_t seen_seq_ = 0;  // the slot's cancel sequence we last acted on
    bool active_ = false;         // a client message came after the last ReadyForQuery
    bool in_transaction_ = false;
    bool greeted_ = false;  // the first ReadyForQuery (the greeting's) has been seen
    bool audit_alarmed_ = false;
    bool keep_upstream_ = false;
    // query_timeout: cancelled the running query; its 57014 was rewritten for the client.
    long query_timeout_;
    bool timeout_fired_ = false;
    bool timeout_reported_ = false;
    net::Clock::time_point started_{};
    // client_idle_timeout
    long idle_timeout_;
    net::Clock::time_point idle_since_ = net::Clock::now();
    bool idle_expired_ = false;
    // Failover
    const ipc::TableHeader* watch_table_ = nullptr;
    health::HostWatch watch_;
    bool role_changed_ = false;
    ipc::HostRole new_role_ = ipc::HostRole::Unknown;
};

} // namespace pgw::session
