// The session's RelayObserver: the order in which gate, trail, caps, timeouts and the
// slot see each message is decided here, and only here.
#include "session/session_control.hh"

#include "common/log.hh"
#include "protocol/messages.hh"
#include "session/session.hh"

namespace pgw::session {

using protocol::Bytes;

SessionControl::SessionControl(const config::Config& cfg, ipc::Slot* slot, std::function<Status()> cancel,
                               int client_fd, int upstream_fd, PolicyGate* gate, AuditTrail* trail,
                               long query_timeout, long idle_timeout)
    : cfg_(cfg), report_(slot), canceller_(std::move(cancel), client_fd, upstream_fd), gate_(gate), trail_(trail),
      query_timeout_(query_timeout), idle_timeout_(idle_timeout)
{
    if (slot)
        seen_seq_ = ipc::cancel_seq_of(slot->gen_cancel.load(std::memory_order_acquire));
}

void SessionControl::set_cap(const std::string& setting, long value, const policy::Policy& p)
{
    const long cap = caps_.override_cap(setting, value, p);
    log_info("override: %s = %ld%s", setting.c_str(), cap, value < 0 ? " (the policy's)" : "");
    if (trail_)
        trail_->write(audit::Event::Override, setting + "=" + std::to_string(cap));
}

bool SessionControl::inspect_client(char type)
{
    return (gate_ && PolicyGate::checks(type)) || (trail_ && AuditTrail::follows(type)) ||
           (router_ && ReadRouter::inspects(type));
}

std::optional<Bytes> SessionControl::on_client_body(char type, protocol::ByteSpan body)
{
    // audit_failure = block: nothing runs that cannot be recorded, not even a
    // statement prepared before the trail failed (its Bind is refused).
    if (gate_ && trail_ && trail_->failed() && cfg_.audit_failure == "block" &&
        (PolicyGate::checks(type) || type == 'B')) {
        trail_->on_refused(type);
        protocol::ErrorFields e;
        e.severity = "ERROR";
        e.sqlstate = "58030";
        e.message = "pgwicket cannot write its audit trail, so it runs no statements";
        e.hint = "The statement was not sent to the server. Tell the pgwicket operator (audit_file).";
        return routed(type, gate_->refuse(type, body, e));
    }
    if (gate_ && PolicyGate::checks(type))
        if (auto replacement = gate_->check(type, body))
            return routed(type, std::move(*replacement));  // the denial callback recorded it
    if (trail_)
        trail_->on_client_body(type, body);
    if (router_ && ReadRouter::inspects(type))
        router_->on_client_text(type, body, false);
    return std::nullopt;
}

// A stand-in for a refused message goes to the primary (it fails there as it would
// anywhere; a standby unit must not depend on it).
Bytes SessionControl::routed(char type, Bytes replacement)
{
    if (router_ && ReadRouter::inspects(type) && replacement.size() >= 5)
        router_->on_client_text(type, protocol::ByteSpan(replacement).subspan(5), true);
    return replacement;
}

void SessionControl::on_client_message(char type, protocol::ByteSpan head)
{
    if (router_)
        router_->on_client_message(type, head);
    if (gate_)
        gate_->on_client_message(type);
    if (trail_)
        trail_->on_client_message(type);
    if (active_ || type == 'X')
        return;
    active_ = true;
    started_ = net::Clock::now();
    timeout_fired_ = timeout_reported_ = false;
    report_.publish(ipc::SlotState::Active);
}

void SessionControl::on_server_message(char type, std::uint64_t size)
{
    if (const char* cap = caps_.on_server_message(type, size)) {
        if (trail_)
            trail_->mark_truncated();
        canceller_.cancel(cap);
    }
    // Rows past a cap never reach the client: neither audited nor counted.
    if (trail_ && !caps_.drops(type))
        trail_->on_server_message(type, size);
}

std::optional<Bytes> SessionControl::on_server_body(char type, protocol::ByteSpan)
{
    // The CommandComplete of a cut result: all its rows were sent before the cancel landed.
    if (type == 'C')
        return caps_.end_of_cut(false, in_transaction_);
    return std::nullopt;
}

void SessionControl::on_ready_for_query(char status)
{
    caps_.on_ready_for_query();
    // The first call is the greeting's status, not an answer to a client message.
    if (gate_ && greeted_)
        gate_->on_ready_for_query();
    if (trail_ && greeted_) {
        trail_->on_ready_for_query();
        if (trail_->failed() && !audit_alarmed_) {
            audit_alarmed_ = true;
            log_error("AUDIT FAILURE: %s; %s", trail_->error().c_str(),
                      cfg_.audit_failure == "block" ? "refusing this session's statements from now on"
                                                    : "continuing without a complete audit trail (audit_failure = continue)");
        }
    }
    greeted_ = true;
    check_role();
    canceller_.on_ready_for_query();
    idle_since_ = net::Clock::now();
    in_transaction_ = status != 'I';
    if (active_)
        report_.query_done(std::uint64_t(
            std::chrono::duration_cast<std::chrono::microseconds>(net::Clock::now() - started_).count()));
    active_ = false;
    timeout_fired_ = timeout_reported_ = false;
    report_.publish(status == 'T'   ? ipc::SlotState::IdleInTransaction
                    : status == 'E' ? ipc::SlotState::IdleInFailedTransaction
                                    : ipc::SlotState::Idle);
}

void SessionControl::on_command_complete(std::string_view tag)
{
    // The record says what the client got: a cut result ends with the rows it was sent.
    if (trail_)
        trail_->on_command_complete(caps_.cutting() ? caps_.cut_tag() : std::string(tag));
    report_.statement_done(tag);
}

void SessionControl::check_role()
{
    if (!watch_table_ || role_changed_ || !health::role_changed(*watch_table_, watch_, &new_role_))
        return;
    role_changed_ = true;
    log_warning("upstream host %s is a %s now; ending the session (failover)", watch_.label.c_str(),
                health::role_name(new_role_));
    g_stop_requested = 1;
}

Bytes SessionControl::stop_message()
{
    if (role_changed_)
        return protocol::fatal("57P01",
                               "terminating connection because upstream host " + watch_.label + " is a " +
                                   health::role_name(new_role_) + " now",
                               "The upstream cluster failed over; connect again to reach a host of the right role.");
    if (idle_expired_)
        return protocol::fatal("57P05", "terminating connection due to idle-session timeout",
                               "The session's pgwicket policy closes sessions idle longer than "
                               "client_idle_timeout (" + std::to_string(idle_timeout_) + " s).");
    if (report_.slot() && report_.slot()->kill_requested.load(std::memory_order_acquire))
        return protocol::fatal("57P01", "terminating connection due to administrator command",
                               "An administrator ended this session with KILL in pgwicket's "
                               "admin console.");
    return RelayObserver::stop_message();
}

std::optional<Bytes> SessionControl::on_server_error(const protocol::ErrorFields& e)
{
    // The cap's own cancel: the client gets the rows sent and a WARNING (an ERROR 54000
    // inside a transaction), and so does the record, not the server's 57014.
    if (caps_.cutting() && e.sqlstate == "57014") {
        if (trail_) {
            if (in_transaction_)
                trail_->on_error("54000");
            else
                trail_->on_command_complete(caps_.cut_tag());
        }
        return caps_.end_of_cut(true, in_transaction_);
    }
    if (trail_)
        trail_->on_error(e.sqlstate);
    if (gate_)
        if (auto ours = gate_->on_server_error(e))
            return ours;  // a denial: counted as denied, not as an error
    report_.count(ipc::kStatementsError);
    if (!timeout_fired_ || timeout_reported_ || e.sqlstate != "57014")
        return std::nullopt;
    // The upstream says "due to user request"; the user did not ask: say why.
    // timeout_fired_ stays set until ReadyForQuery: the relay pauses at this
    // message, and the timeout must not fire again for the same query meanwhile.
    timeout_reported_ = true;
    protocol::ErrorFields ours = e;
    ours.message = "canceling statement due to query_timeout";
    ours.detail = "pgwicket cancelled the statement after it ran for " + std::to_string(query_timeout_) +
                  " s (query_timeout).";
    ours.hint = "Ask the pgwicket operator to raise query_timeout if the statement needs longer.";
    return protocol::error_response(ours);
}

int SessionControl::poll_timeout_ms()
{
    const int ms = poll_timeout_unwatched_ms();
    if (!watch_table_ || role_changed_)
        return ms;
    return ms < 0 || ms > 1000 ? 1000 : ms;
}

int SessionControl::poll_timeout_unwatched_ms()
{
    // A held statement: look again soon (the cancel child's exit also ends the wait,
    // through SIGCHLD).
    if (hold_client_input())
        return 1;
    if (!active_ && idle_timeout_ > 0 && !in_transaction_)
        return net::ms_until(idle_since_ + std::chrono::seconds(idle_timeout_));
    if (!active_ || query_timeout_ <= 0 || timeout_fired_)
        return -1;
    return net::ms_until(timeout_deadline());
}

void SessionControl::on_wake()
{
    canceller_.reap();
    check_role();
    if (g_reopen_log) {
        // The supervisor reloaded: reopen our log and audit files (logrotate moved them).
        g_reopen_log = 0;
        log::setup(config::log_settings(cfg_));
        if (trail_)
            trail_->reopen();
    }
    if (g_cancel_signal) {
        g_cancel_signal = 0;
        ipc::Slot* slot = report_.slot();
        std::uint32_t seq = slot ? ipc::cancel_seq_of(slot->gen_cancel.load(std::memory_order_acquire)) : seen_seq_;
        if (seq != seen_seq_) {
            seen_seq_ = seq;
            if (active_)
                canceller_.cancel("a cancel request");
        }
    }
    if (!active_ && idle_timeout_ > 0 && !in_transaction_ && !idle_expired_ &&
        net::Clock::now() >= idle_since_ + std::chrono::seconds(idle_timeout_)) {
        // Ends the relay through its stop path, with stop_message() saying why.
        idle_expired_ = true;
        log_info("session idle longer than client_idle_timeout (%ld s); closing it", idle_timeout_);
        g_stop_requested = 1;
    }
    if (active_ && !timeout_fired_ && query_timeout_ > 0 && net::Clock::now() >= timeout_deadline()) {
        timeout_fired_ = true;
        log_info("query ran longer than query_timeout (%ld s); cancelling it", query_timeout_);
        canceller_.cancel("query_timeout");
    }
}

} // namespace pgw::session
