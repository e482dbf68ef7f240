// The session's audit trail: follows Query/Parse/Bind/Execute from the client and the
// completions from the server (CommandComplete, EmptyQueryResponse, PortalSuspended,
// ErrorResponse) to write one record per statement, with rows, bytes and duration.
#pragma once

#include "audit/audit.hh"
#include "protocol/bytes.hh"

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace pgw::session {

class AuditTrail {
public:
    // full_text: audit_statement_text = full (literals kept). log_statements: also a
    // line per statement in the normal log. parameter_max_size: audit_parameters = on,
    // bind parameters recorded up to this many bytes each (-1: off).
    AuditTrail(audit::Sink& sink, audit::SessionInfo info, bool full_text, bool log_statements,
               long parameter_max_size = -1)
        : sink_(sink), info_(std::move(info)), full_text_(full_text), log_statements_(log_statements),
          parameter_max_size_(parameter_max_size)
    {
    }
    audit::SessionInfo& info() { return info_; }

    // Session events; false when the record could not be written (see error()).
    bool write(audit::Event e, const std::string& detail = {});

    static bool follows(char type) { return type == 'Q' || type == 'P' || type == 'B' || type == 'E'; }
    void on_client_message(char type);  // every header: counts sync points
    void on_client_body(char type, protocol::ByteSpan body);
    // A message the policy refused: writes the denial record.
    void on_denied(char type, protocol::ByteSpan body, const std::string& policy, const std::string& kind,
                   const std::string& reason);
    // A message refused for another reason (audit failure): completes silently.
    void on_refused(char type);
    // Every server message header with its size: rows, bytes, completions without a tag.
    void on_server_message(char type, std::uint64_t size);
    void on_command_complete(std::string_view tag);
    void on_error(const std::string& sqlstate);
    void on_ready_for_query();

    // The statement in flight had its result cut by a cap.
    void mark_truncated() { truncated_ = true; }
    // After logrotate moved the file (SIGHUP): records go to a new one.
    void reopen() { sink_.open(); }
    // A record could not be written since the last reset.
    bool failed() const { return failed_; }
    const std::string& error() const { return sink_.error(); }
    std::uint64_t written() const { return written_; }

private:
    using Clock = std::chrono::steady_clock;
    using Facts = std::shared_ptr<const audit::StatementFacts>;
    using Parameters = std::shared_ptr<const std::vector<audit::Parameter>>;
    struct Pending {
        std::uint64_t sync_point;
        std::string statement;
        std::string fingerprint;
        bool placeholder = false;  // a denied message's stand-in: completes silently
        Facts facts = nullptr;
        Parameters parameters = nullptr;
    };
    struct Text {
        std::string statement;
        std::string fingerprint;
        Facts facts = nullptr;
    };
    struct Portal {
        std::string statement;  // its prepared statement's name
        Parameters parameters;
    };
    // The statements of a query string, normalized unless full_text_ (cached by text).
    const std::vector<Text>& texts(std::string_view sql);
    void complete(const std::string& tag, const std::string& sqlstate);

    audit::Sink& sink_;
    audit::SessionInfo info_;
    bool full_text_;
    bool log_statements_;
    long parameter_max_size_;
    std::deque<Pending> pending_;
    std::map<std::string, Text> prepared_;  // statement name -> text
    std::map<std::string, Portal> portals_;
    std::unordered_map<std::string, std::vector<Text>> cache_;
    std::uint64_t sync_points_sent_ = 0;
    std::uint64_t sync_points_done_ = 0;
    std::uint64_t rows_ = 0;
    std::uint64_t bytes_ = 0;
    Clock::time_point started_ = Clock::now();
    bool failed_ = false;
    bool truncated_ = false;
    std::uint64_t written_ = 0;
};

} // namespace pgw::session
