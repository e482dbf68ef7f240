// Named statement policies ([policy.NAME] sections): what a session may run, checked on
// the classifier's verdict before a statement reaches the upstream. One settings table
// drives the parser and the man page check.
#pragma once

#include "common/result.hh"
#include "policy/classify.hh"

#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace pgw::policy {

struct Policy {
    std::string name;
    std::string file;
    int line = 0;
    bool read_only = false;
    std::vector<Kind> allow;  // empty: every kind not denied
    std::vector<Kind> deny;
    bool allow_copy = true;
    bool allow_listen = true;
    long query_timeout = -1;  // seconds; -1: the [pgwicket] query_timeout
    long client_idle_timeout = 0;  // seconds a session may sit idle (not in a transaction); 0: no limit
    long statement_timeout = 0;    // ms, set on the upstream connection; 0: the server's own
    long idle_in_transaction_session_timeout = 0;  // ms, upstream; 0: the server's own
    long max_rows = 0;    // rows per result before it is cut; 0: no cap
    long max_bytes = 0;   // bytes per result before it is cut; 0: no cap
    bool allow_override = false;  // SET pgwicket.max_rows / pgwicket.max_bytes may raise them
    std::vector<std::string> read_only_functions;  // added to the built-in allowlist
    FunctionAllowlist functions = FunctionAllowlist::builtin();

    // Startup settings for the upstream ("statement_timeout", "5000"), from the above.
    std::vector<std::pair<std::string, std::string>> upstream_settings() const;
};

struct PolicySetting {
    std::string_view name;
    std::string_view type;     // for the man page: "Boolean", "Kinds", "Seconds", ...
    std::string_view default_value;
    std::string_view summary;
};

std::span<const PolicySetting> policy_settings();

// Applies one `name = value` line of a [policy.NAME] section; the error names the setting.
// continues: an indented line that adds to the previous line's list.
Status set_policy_value(Policy& p, std::string_view name, std::string_view value, bool continues = false);
// After the section is read (builds the function allowlist).
Status finish_policy(Policy& p);

struct Verdict {
    bool allowed = true;
    std::string kind;    // the offending statement's kind (kind_name), for messages and audit
    std::string reason;  // "read-only: modifies rows", "deny list", ...
};

// Whether every statement of a query string may run under p.
Verdict check(const Policy& p, const std::vector<Statement>& statements);

} // namespace pgw::policy
