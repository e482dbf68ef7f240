// Read routing's verdict. A statement may run on a standby only when nothing in it can
// write or depend on the host: a plain query the read-only policy would allow. Pinning is
// about the session's future: what later statements could see only on the host that ran
// this one.
#include "policy/route.hh"

#include <array>
#include <string_view>

namespace pgw::policy {
namespace {

// Functions whose effect stays with the session on the host that ran them.
bool pinning_function(std::string_view fn)
{
    if (fn.starts_with("pg_catalog."))
        fn.remove_prefix(11);
    static constexpr std::array<std::string_view, 7> exact = {
        "set_config", "nextval", "setval", "currval", "lastval", "lo_open", "dblink_connect",
    };
    for (std::string_view e : exact)
        if (fn == e)
            return true;
    return fn.starts_with("pg_advisory") || fn.starts_with("pg_try_advisory") || fn.starts_with("lo_") ||
           fn.starts_with("dblink");
}

// Statements that change rows or the schema but leave nothing behind in the session
// (the write is visible to every later session on the primary; reads that follow it
// stay on the primary for read_after_write_delay).
bool leaves_no_session_state(Kind k)
{
    switch (k) {
    case Kind::Select:
    case Kind::SelectForUpdate:
    case Kind::SelectForShare:
    case Kind::Insert:
    case Kind::Update:
    case Kind::Delete:
    case Kind::Merge:
    case Kind::Truncate:
    case Kind::CopyTo:
    case Kind::CopyFrom:
    case Kind::Transaction:
    case Kind::Show:
    case Kind::Explain:
    case Kind::ExplainAnalyze:
    case Kind::Notify:
    case Kind::Vacuum:
    case Kind::Analyze:
    case Kind::Checkpoint:
    case Kind::Reindex:
    case Kind::Cluster:
    case Kind::Grant:
    case Kind::Revoke:
        return true;
    default:
        return false;
    }
}

// A query that means the same on any host of the cluster: SELECT, EXPLAIN (without
// ANALYZE) of one, COPY of a table or of one to the client.
bool plain_query(const Statement& s)
{
    switch (s.kind) {
    case Kind::Select:
        return true;
    case Kind::Explain:
        return s.inner == Kind::Select;
    case Kind::CopyTo:
        return s.inner == Kind::Select || s.inner == Kind::CopyTo;
    default:
        return false;
    }
}

void judge(const std::vector<Statement>& statements, const FunctionAllowlist& allow, RouteVerdict& v)
{
    for (const Statement& s : statements) {
        // SELECT INTO, data-modifying WITH, row locks: involves() sees them anywhere.
        const bool nested_write = s.involves(Kind::SelectInto) || s.involves(Kind::Insert) ||
                                  s.involves(Kind::Update) || s.involves(Kind::Delete) || s.involves(Kind::Merge) ||
                                  s.involves(Kind::SelectForUpdate) || s.involves(Kind::SelectForShare);
        if (!leaves_no_session_state(s.kind) || s.involves(Kind::SelectInto)) {
            v.pins = true;
            if (v.why.empty())
                v.why = std::string(kind_name(s.kind)) + " keeps state in the session";
        }
        for (const std::string& fn : s.functions)
            if (pinning_function(fn)) {
                v.pins = true;
                if (v.why.empty())
                    v.why = "calls " + fn + "()";
            }
        if (!v.standby)
            continue;
        if (!plain_query(s) || nested_write) {
            v.standby = false;
            if (v.why.empty())
                v.why = std::string(kind_name(s.kind)) + (nested_write ? " that modifies rows or locks them" : "");
            continue;
        }
        if (std::string r = read_only_violation(s, allow); !r.empty()) {
            v.standby = false;
            if (v.why.empty())
                v.why = r;
        }
    }
}

} // namespace

RouteVerdict route_verdict(const Classified& c, const FunctionAllowlist& allow)
{
    RouteVerdict v;
    v.standby = true;
    bool parsed = false;
    if (c.primary.ok()) {
        parsed = true;
        judge(c.primary.value(), allow, v);
    }
    for (const Reading& r : c.others)
        if (r.statements.ok()) {
            parsed = true;
            judge(r.statements.value(), allow, v);
        }
    if (!parsed) {
        v.standby = false;
        v.why = "pgwicket could not parse it";
    }
    return v;
}

} // namespace pgw::policy
