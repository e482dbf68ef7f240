// The audit trail: one JSON object per line in audit_file (O_APPEND, reopened on
// SIGHUP) and/or a journald entry with structured fields, for session start and end,
// every statement, every denial. A record that cannot be written is never dropped
// silently: the caller blocks the session's statements or logs an alarm (audit_failure).
#pragma once

#include "common/unique_fd.hh"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pgw::audit {

enum class Event { SessionStart, SessionEnd, Statement, Denial, Override };
const char* event_name(Event e);

// The record schema's version, the "v" of every record. Records without one are version
// 1. A new version only adds fields: a reader of version n reads every later one.
inline constexpr int kSchemaVersion = 2;

// What every record of a session carries.
struct SessionInfo {
    std::uint64_t session_id = 0;
    std::string identity;
    std::string user;
    std::string client;  // address:port or [local]
    std::string application_name;
    std::string database;
    std::string upstream;  // "host=... port=..." without secrets
    std::string policy;
    // The server the session reached and its backend, to join with the server's log and
    // pgaudit (%h/%p in log_line_prefix); empty / 0 before the session has one.
    std::string upstream_host;
    std::uint32_t upstream_port = 0;
    std::uint32_t backend_pid = 0;
};

// What the classifier says of a statement; shared between the trail's cache and records.
struct StatementFacts {
    std::string_view audit_class;  // pgaudit's: READ, WRITE, FUNCTION, ROLE, DDL, MISC, MISC_SET
    std::string command;           // the command tag without counts: SELECT, CREATE TABLE
    std::vector<std::pair<std::string, std::string_view>> relations;  // name as written, read|write|ddl
};

// A bind parameter of an extended-protocol statement (audit_parameters = on).
struct Parameter {
    bool is_null = false;
    bool binary = false;    // format 1: written as base64
    std::string value;      // the first audit_parameter_max_size bytes
    std::uint64_t size = 0; // the whole value's
};

struct Record {
    Event event = Event::Statement;
    std::string statement;    // normalized (or full) text; empty for session events
    std::string fingerprint;  // libpg_query's, 16 hex digits; empty when it could not parse
    double duration_ms = 0;
    std::uint64_t rows = 0;
    std::uint64_t bytes = 0;  // sent to the client for this statement
    std::string tag;          // CommandComplete tag
    std::string sqlstate;     // of the error that ended it, if any
    bool truncated = false;   // cut by a row or byte cap (max_rows, max_bytes)
    std::string denied_by;    // the policy that refused it
    std::string detail;       // denial reason; session end reason
    std::shared_ptr<const StatementFacts> facts;  // null when the text did not parse
    // Bind parameters; null when audit_parameters is off or the statement had no Bind.
    std::shared_ptr<const std::vector<Parameter>> parameters;
};

// JSON text for one record (one line, no newline), with RFC 3339 UTC time.
std::string to_json(const SessionInfo& s, const Record& r);

class Sink {
public:
    // file: audit_file ("" for none); journald: also send to the journal.
    Sink(std::string file, bool journald) : path_(std::move(file)), journald_(journald) {}
    bool enabled() const { return !path_.empty() || journald_; }
    // Opens (or reopens, after logrotate moved the file) the file.
    bool open();
    // Writes one record; false when any sink failed (error() says why).
    bool write(const SessionInfo& s, const Record& r);
    const std::string& error() const { return error_; }

private:
    void drop_partial_line(size_t written);
    std::string path_;
    bool journald_;
    UniqueFd fd_;
    std::string error_;
};

} // namespace pgw::audit
