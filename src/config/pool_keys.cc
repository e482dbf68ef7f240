// Finds the pool keys in a [databases] connection string with the tokenizer rules of
// libpq's conninfo_parse, so a key inside another key's quoted value is never taken.
#include "config/pool_keys.hh"

#include <cerrno>
#include <cstdlib>
#include <initializer_list>
#include <optional>
#include <string_view>
#include <vector>

namespace pgw::config {
namespace {

// libpq's isspace() in the C locale.
bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'; }

struct Token {
    std::string name;
    std::string value;  // quotes and backslash escapes resolved
    size_t begin = 0;   // the token's text in the original string: [begin, end)
    size_t end = 0;
};

// The same steps as libpq's conninfo_parse (fe-connect.c): a name ends at '=' or
// blank, blanks may surround '=', a value is either a run of non-blanks or a
// single-quoted string, and a backslash takes the next character as it is in both.
Result<std::vector<Token>> tokenize(const std::string& s)
{
    std::vector<Token> out;
    size_t i = 0;
    const size_t n = s.size();
    while (i < n) {
        if (is_space(s[i])) {
            ++i;
            continue;
        }
        Token t;
        t.begin = i;
        while (i < n && s[i] != '=' && !is_space(s[i]))
            t.name.push_back(s[i++]);
        while (i < n && is_space(s[i]))
            ++i;
        if (i == n || s[i] != '=')
            return Error{"missing \"=\" after \"" + t.name + "\" in connection info string"};
        ++i;
        while (i < n && is_space(s[i]))
            ++i;
        if (i < n && s[i] == '\'') {
            ++i;
            for (;;) {
                if (i == n)
                    return Error{"unterminated quoted string in connection info string"};
                if (s[i] == '\\') {
                    if (++i < n)
                        t.value.push_back(s[i++]);
                    continue;
                }
                if (s[i] == '\'') {
                    ++i;
                    break;
                }
                t.value.push_back(s[i++]);
            }
        } else {
            while (i < n && !is_space(s[i])) {
                if (s[i] == '\\') {
                    if (++i < n)
                        t.value.push_back(s[i++]);
                } else {
                    t.value.push_back(s[i++]);
                }
            }
        }
        t.end = i;
        out.push_back(std::move(t));
    }
    return out;
}

struct NumberKey {
    std::string_view name;
    long min, max;
    long PoolSettings::*field;
};

constexpr NumberKey kNumberKeys[] = {
    {"pool_size", 1, 10000, &PoolSettings::pool_size},
    {"min_pool_size", 0, 10000, &PoolSettings::min_pool_size},
    {"reserve_pool_size", 0, 10000, &PoolSettings::reserve_pool_size},
    {"max_db_connections", 0, 100000, &PoolSettings::max_db_connections},
};

const NumberKey* number_key(std::string_view name)
{
    for (const auto& k : kNumberKeys)
        if (k.name == name)
            return &k;
    return nullptr;
}

// libpq's test, on the string as it is (no blanks skipped).
bool is_uri(const std::string& s) { return s.rfind("postgresql://", 0) == 0 || s.rfind("postgres://", 0) == 0; }

bool is_pool_key(std::string_view name) { return name == "pool_mode" || number_key(name); }
bool is_replica_key(std::string_view name)
{
    return name == "load_balance" || name == "max_replica_lag" || name == "ban_time" || name == "read_routing" ||
           name == "read_after_write_delay";
}

// A whole number with an optional unit: `units` pairs suffixes with multipliers; the
// result is in the unit of multiplier 1. Empty when the text is not one.
std::optional<long> number_with_unit(const std::string& text,
                                     std::initializer_list<std::pair<std::string_view, long>> units)
{
    size_t end = 0;
    while (end < text.size() && text[end] >= '0' && text[end] <= '9')
        ++end;
    if (end == 0 || end > 12)
        return std::nullopt;
    const long n = std::stol(text.substr(0, end));
    const std::string_view unit = std::string_view(text).substr(end);
    for (const auto& [suffix, factor] : units)
        if (unit == suffix)
            return n * factor;
    return std::nullopt;
}

Status set_replica_key(ReplicaSettings& r, const std::string& name, const std::string& value)
{
    if (name == "load_balance") {
        if (value == "round-robin")
            r.load_balance = LoadBalance::RoundRobin;
        else if (value == "random")
            r.load_balance = LoadBalance::Random;
        else if (value == "in-order")
            r.load_balance = LoadBalance::InOrder;
        else if (value == "least-connections")
            r.load_balance = LoadBalance::LeastConnections;
        else
            return Error{"load_balance \"" + value +
                         "\" is not one of round-robin, random, in-order, least-connections"};
        return ok_status();
    }
    if (name == "read_routing") {
        if (value != "auto" && value != "off")
            return Error{"read_routing \"" + value + "\" is not one of auto, off"};
        r.read_routing = value == "auto";
        return ok_status();
    }
    if (name == "read_after_write_delay") {
        auto ms = number_with_unit(value, {{"ms", 1}, {"", 1000}, {"s", 1000}, {"min", 60000}});
        if (!ms || *ms > 3600 * 1000)
            return Error{"read_after_write_delay \"" + value + "\" is not a time from 0 to 1 h (e.g. 1s, 500ms, 0)"};
        r.read_after_write_ms = *ms;
        return ok_status();
    }
    if (name == "ban_time") {
        auto s = number_with_unit(value, {{"", 1}, {"s", 1}, {"min", 60}});
        if (!s || *s > 86400)
            return Error{"ban_time \"" + value + "\" is not a time from 0 to 86400 s (e.g. 15s, 1min)"};
        r.ban_time = *s;
        return ok_status();
    }
    // max_replica_lag: a size of WAL (kB, MB, GB; bare: bytes) or a time (ms, s, min).
    if (auto t = number_with_unit(value, {{"ms", 1}, {"s", 1000}, {"min", 60000}})) {
        r.max_lag_ms = *t;
        r.max_lag_bytes = -1;
        return ok_status();
    }
    if (auto b = number_with_unit(value, {{"", 1}, {"B", 1}, {"kB", 1024}, {"MB", 1024 * 1024}, {"GB", 1024L * 1024 * 1024}})) {
        r.max_lag_bytes = *b;
        r.max_lag_ms = -1;
        return ok_status();
    }
    return Error{"max_replica_lag \"" + value + "\" is neither a size (16MB, 512kB, bytes) nor a time (10s, 500ms, 1min)"};
}

Status set_number(PoolSettings& pool, const NumberKey& key, const std::string& value)
{
    const std::string name(key.name);
    size_t digits = value.size() > 0 && (value[0] == '-' || value[0] == '+') ? 1 : 0;
    if (digits == value.size() || value.find_first_not_of("0123456789", digits) != std::string::npos)
        return Error{name + " \"" + value + "\" is not a whole number"};
    errno = 0;
    const long v = std::strtol(value.c_str(), nullptr, 10);
    if (errno == ERANGE || v < key.min || v > key.max)
        return Error{name + " " + value + " is out of range (" + std::to_string(key.min) + " to " +
                     std::to_string(key.max) + ")"};
    pool.*(key.field) = v;
    return ok_status();
}

Status set_mode(PoolSettings& pool, const std::string& value)
{
    if (value == "session") {
        pool.pooled = true;
        return ok_status();
    }
    if (value == "transaction" || value == "statement")
        return Error{"pool_mode \"" + value + "\" is not supported yet (only session)"};
    return Error{"pool_mode \"" + value + "\" is not a pool mode (only session)"};
}

} // namespace

Result<SplitConninfo> split_pool_keys(const std::string& conninfo)
{
    // libpq reads these as a URI, whose parameters are no key=value tokens.
    if (is_uri(conninfo))
        return SplitConninfo{conninfo, {}, {}};
    auto tokens = tokenize(conninfo);
    if (!tokens)
        return Error{"invalid connection string: " + tokens.error()};

    SplitConninfo out;
    std::string first_size_key;  // the first sizing key, for "needs pool_mode"
    bool any = false;
    bool replica_keys = false;
    std::string target;  // target_session_attrs, as written
    for (const auto& t : *tokens) {
        if (is_replica_key(t.name)) {
            if (Status ok = set_replica_key(out.replicas, t.name, t.value); !ok)
                return Error{ok.error()};
            replica_keys = true;
            continue;
        }
        if (t.name == "target_session_attrs")
            target = t.value;
        if (!is_pool_key(t.name)) {
            // The token's own text, quoting and escapes untouched.
            if (!out.conninfo.empty())
                out.conninfo += " ";
            out.conninfo += conninfo.substr(t.begin, t.end - t.begin);
            continue;
        }
        any = true;
        // As libpq does for its keys, a later one overrides an earlier one.
        Status ok = t.name == "pool_mode" ? set_mode(out.pool, t.value)
                                          : set_number(out.pool, *number_key(t.name), t.value);
        if (!ok)
            return Error{ok.error()};
        if (t.name != "pool_mode" && first_size_key.empty())
            first_size_key = t.name;
    }
    if (!any && !replica_keys)
        return SplitConninfo{conninfo, {}, {}};
    // Cutting a leading pool key must not turn the rest into a URI for libpq: refuse
    // the stray name as libpq would have in the string as written.
    if (is_uri(out.conninfo)) {
        const std::string name = out.conninfo.substr(0, out.conninfo.find_first_of("= \t\n\v\f\r"));
        return Error{"invalid connection string: invalid connection option \"" + name + "\""};
    }
    if (any && !out.pool.pooled)
        return Error{first_size_key + " needs pool_mode=session"};
    if (out.replicas.read_routing && !target.empty() && target != "any" && target != "primary" && target != "read-write")
        return Error{"read_routing=auto sends writes to the primary: target_session_attrs=" + target +
                     " contradicts it (leave it out, or use primary)"};
    return out;
}

} // namespace pgw::config
