// Policy settings and the check. Deny wins over allow; read_only is checked last, with
// the classifier's own definition (is_read_only), so its reason names the exact cause.
#include "policy/policy.hh"

#include <array>
#include <cerrno>
#include <cstdlib>

namespace pgw::policy {
namespace {

const std::array<PolicySetting, 13> kSettings = {{
    {"read_only", "Boolean", "0", "1 allows only statements that read (see READ-ONLY in pgwicket.ini(5))"},
    {"allow", "Kinds", "", "if set, only these statement kinds may run (comma-separated kind names)"},
    {"deny", "Kinds", "", "statement kinds that may not run, even if allowed"},
    {"allow_copy", "Boolean", "1", "0 refuses COPY in both directions"},
    {"allow_listen", "Boolean", "1", "0 refuses LISTEN"},
    {"query_timeout", "Seconds", "", "cancel a query running longer than this; default: [pgwicket] query_timeout"},
    {"client_idle_timeout", "Seconds", "0", "close a session idle (outside a transaction) this long; 0: never"},
    {"statement_timeout", "Milliseconds", "0", "statement_timeout set on the upstream connection; 0: the server's"},
    {"idle_in_transaction_session_timeout", "Milliseconds", "0",
     "idle_in_transaction_session_timeout set on the upstream connection; 0: the server's"},
    {"read_only_functions", "Functions", "", "functions read_only treats as reading only, besides the built-in list"},
    {"max_rows", "Integer", "0", "rows a result may have before pgwicket cuts it and cancels the query; 0: no cap"},
    {"max_bytes", "Integer", "0", "bytes a result may have before pgwicket cuts it and cancels the query; 0: no cap"},
    {"allow_override", "Boolean", "0", "1 lets a session change its caps with SET pgwicket.max_rows / pgwicket.max_bytes"},
}};

std::vector<std::string> split(std::string_view text)
{
    std::vector<std::string> out;
    std::string cur;
    for (char c : std::string(text) + ",") {
        if (c == ',' || c == ' ' || c == '\t') {
            if (!cur.empty())
                out.push_back(cur);
            cur.clear();
        } else {
            cur.push_back(c);
        }
    }
    return out;
}

Status parse_bool(std::string_view v, bool& out)
{
    if (v == "1" || v == "on" || v == "true" || v == "yes") {
        out = true;
        return ok_status();
    }
    if (v == "0" || v == "off" || v == "false" || v == "no") {
        out = false;
        return ok_status();
    }
    return Error{"invalid value \"" + std::string(v) + "\" (expected 0 or 1)"};
}

Status parse_number(std::string_view v, long max, long& out)
{
    std::string s(v);
    char* end = nullptr;
    errno = 0;
    long n = std::strtol(s.c_str(), &end, 10);
    if (s.empty() || *end != '\0' || errno != 0 || n < 0 || n > max)
        return Error{"invalid value \"" + s + "\" (expected a whole number from 0 to " + std::to_string(max) + ")"};
    out = n;
    return ok_status();
}

// append: an indented continuation line adds to the list given on the lines before.
Status parse_kinds(std::string_view v, std::vector<Kind>& out, bool append)
{
    if (!append)
        out.clear();
    for (const auto& name : split(v)) {
        auto k = kind_from_name(name);
        if (!k) {
            std::string all;
            for (Kind kk : all_kinds())
                all += (all.empty() ? "" : ", ") + std::string(kind_name(kk));
            return Error{"unknown statement kind \"" + name + "\" (kinds: " + all + ")"};
        }
        out.push_back(*k);
    }
    return ok_status();
}

std::uint64_t mask_of(const std::vector<Kind>& list)
{
    std::uint64_t m = 0;
    for (Kind k : list)
        m |= std::uint64_t(1) << unsigned(k);
    return m;
}

// Why a list refuses s, whose kinds in `hit` are the offending ones: its own kind when
// that is among them, else the first nested one (in declaration order). `list`: "on the
// policy's deny list", "not on the policy's allow list".
std::string list_reason(const Statement& s, std::uint64_t hit, std::string_view list)
{
    if ((hit >> unsigned(s.kind)) & 1u)
        return "its kind is " + std::string(list);
    for (Kind k : all_kinds())
        if ((hit >> unsigned(k)) & 1u)
            return "it contains " + std::string(kind_name(k)) + ", which is " + std::string(list);
    return "its kind is " + std::string(list);
}

} // namespace

std::span<const PolicySetting> policy_settings() { return kSettings; }

std::vector<std::pair<std::string, std::string>> Policy::upstream_settings() const
{
    std::vector<std::pair<std::string, std::string>> out;
    if (statement_timeout > 0)
        out.emplace_back("statement_timeout", std::to_string(statement_timeout));
    if (idle_in_transaction_session_timeout > 0)
        out.emplace_back("idle_in_transaction_session_timeout", std::to_string(idle_in_transaction_session_timeout));
    return out;
}

Status set_policy_value(Policy& p, std::string_view name, std::string_view value, bool continues)
{
    constexpr long kDay = 86400, kDayMs = 86400000;
    if (name == "allow")
        return parse_kinds(value, p.allow, continues);
    if (name == "deny")
        return parse_kinds(value, p.deny, continues);
    if (name == "read_only_functions") {
        if (!continues)
            p.read_only_functions.clear();
        for (auto& f : split(value))
            p.read_only_functions.push_back(std::move(f));
        return ok_status();
    }
    if (continues)
        return Error{"only lists (allow, deny, read_only_functions) may continue on an indented line"};
    if (name == "read_only")
        return parse_bool(value, p.read_only);
    if (name == "allow_copy")
        return parse_bool(value, p.allow_copy);
    if (name == "allow_listen")
        return parse_bool(value, p.allow_listen);
    if (name == "query_timeout")
        return parse_number(value, kDay, p.query_timeout);
    if (name == "client_idle_timeout")
        return parse_number(value, kDay, p.client_idle_timeout);
    if (name == "statement_timeout")
        return parse_number(value, kDayMs, p.statement_timeout);
    if (name == "idle_in_transaction_session_timeout")
        return parse_number(value, kDayMs, p.idle_in_transaction_session_timeout);
    if (name == "max_rows")
        return parse_number(value, 2000000000, p.max_rows);
    if (name == "max_bytes")
        return parse_number(value, 1L << 40, p.max_bytes);
    if (name == "allow_override")
        return parse_bool(value, p.allow_override);
    std::string all;
    for (const auto& s : kSettings)
        all += (all.empty() ? "" : ", ") + std::string(s.name);
    return Error{"unknown policy setting \"" + std::string(name) + "\" (settings: " + all + ")"};
}

Status finish_policy(Policy& p)
{
    if (p.read_only_functions.empty())
        return ok_status();
    auto list = FunctionAllowlist::with_extra(p.read_only_functions);
    if (!list)
        return Error{"read_only_functions: " + list.error()};
    p.functions = std::move(*list);
    return ok_status();
}

Verdict check(const Policy& p, const std::vector<Statement>& statements)
{
    for (const auto& s : statements) {
        Verdict v;
        v.kind = std::string(kind_name(s.kind));
        // Deny: any kind in it is enough. Allow: every kind in it must be listed, so a
        // list of kinds that do not write lets nothing nested that writes through.
        if (std::uint64_t denied = s.kinds & mask_of(p.deny)) {
            v.allowed = false;
            v.reason = list_reason(s, denied, "on the policy's deny list");
        } else if (std::uint64_t missing = p.allow.empty() ? 0 : s.kinds & ~mask_of(p.allow)) {
            v.allowed = false;
            v.reason = list_reason(s, missing, "not on the policy's allow list");
        } else if (!p.allow_copy && (s.involves(Kind::CopyTo) || s.involves(Kind::CopyFrom))) {
            v.allowed = false;
            v.reason = "the policy does not allow COPY";
        } else if (!p.allow_listen && s.involves(Kind::Listen)) {
            v.allowed = false;
            v.reason = "the policy does not allow LISTEN";
        } else if (p.read_only) {
            std::string why = read_only_violation(s, p.functions);
            if (!why.empty()) {
                v.allowed = false;
                v.reason = "the policy is read-only and the statement " + why;
            }
        }
        if (!v.allowed)
            return v;
    }
    return Verdict{};
}

} // namespace pgw::policy
