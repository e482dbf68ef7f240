// The session's policy check: classifies each Query, Parse and FunctionCall before it
// goes upstream and swaps a denied one for a statement that fails harmlessly, then
// puts the policy's error in place of the upstream's, so protocol and transaction
// state stay exactly as the server reports them.
#pragma once

#include "policy/classify.hh"
#include "policy/policy.hh"
#include "protocol/messages.hh"

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>

namespace pgw::session {

class PolicyGate {
public:
    // `p` may be null (no policy: only refuse() refuses). `on_denied(type, body, kind,
    // reason)` is told of every policy denial (for the log and audit).
    using DeniedFn = std::function<void(char, protocol::ByteSpan, const std::string&, const std::string&)>;
    // `on_override(setting, value)`: a session's SET (value >= 0) or RESET (-1) of
    // pgwicket.max_rows / pgwicket.max_bytes that the policy allows; it still goes upstream,
    // where PostgreSQL keeps it as a placeholder setting (so SHOW works too).
    using OverrideFn = std::function<void(const std::string&, long)>;
    // `cache`: the session's classifications (shared with its read router, if any).
    PolicyGate(const policy::Policy* p, policy::ClassifyCache& cache, DeniedFn on_denied,
               OverrideFn on_override = nullptr);

    // Query, Parse and FunctionCall are checked whole.
    static bool checks(char type) { return type == 'Q' || type == 'P' || type == 'F'; }
    // Every client message header (counts the points where the server answers
    // ReadyForQuery: Query, FunctionCall and Sync).
    void on_client_message(char type);
    // A checked message; a returned message goes upstream instead.
    std::optional<protocol::Bytes> check(char type, protocol::ByteSpan body);
    // Refuses a checked message for another reason (the audit trail cannot be written):
    // the client gets `error` in place of the server's answer.
    protocol::Bytes refuse(char type, protocol::ByteSpan body, const protocol::ErrorFields& error);
    // An upstream error; a returned message replaces it (the denial's own error).
    std::optional<protocol::Bytes> on_server_error(const protocol::ErrorFields& e);
    void on_ready_for_query();

    std::uint64_t denials() const { return denials_; }

private:
    std::optional<protocol::Bytes> deny(char type, protocol::ByteSpan body, const std::string& kind,
                                        const std::string& reason);

    const policy::Policy* policy_;
    std::string denied_text_;  // what goes upstream in place of a denied statement
    DeniedFn on_denied_;
    OverrideFn on_override_;
    policy::ClassifyCache& cache_;
    std::uint64_t sync_points_sent_ = 0;  // Query, FunctionCall, Sync sent upstream
    std::uint64_t sync_points_done_ = 0;  // ReadyForQuery received
    // The error to show for the denial answered at each sync point.
    std::map<std::uint64_t, protocol::Bytes> pending_;
    std::uint64_t denials_ = 0;
};

} // namespace pgw::session
