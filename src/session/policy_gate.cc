// How a denial works: the denied message is replaced by one carrying the text
// "pgwicket_denied_<16 random hex digits>", which the server rejects with a syntax
// error (42601) before anything runs. The server then behaves exactly as for any failed statement: it
// aborts a transaction in progress, skips extended-protocol messages until Sync, and
// sends ReadyForQuery with its real status. We replace its 42601 with our 42501, but
// only when the error quotes our token: when an earlier message of the same batch
// failed (with its own 42601, say), the server skipped ours and its error stays.
// The denied text never reaches the server.
#include "session/policy_gate.hh"

#include "common/log.hh"
#include "protocol/bytes.hh"

#include <openssl/rand.h>

#include <cstdlib>
#include <stdexcept>
#include <string_view>
#include <vector>

namespace pgw::session {
using protocol::cstring_at;
namespace {

// The text sent in place of a denied statement: an identifier no client can guess, so
// the server's "syntax error at or near ..." names it whatever the server's language.
std::string denied_text()
{
    unsigned char raw[8];
    if (RAND_bytes(raw, sizeof raw) != 1)
        throw std::runtime_error("RAND_bytes failed");
    std::string text = "pgwicket_denied_";
    static const char hex[] = "0123456789abcdef";
    for (unsigned char b : raw) {
        text.push_back(hex[b >> 4]);
        text.push_back(hex[b & 15]);
    }
    return text;
}

} // namespace

PolicyGate::PolicyGate(const policy::Policy* p, policy::ClassifyCache& cache, DeniedFn on_denied,
                       OverrideFn on_override)
    : policy_(p), denied_text_(denied_text()), on_denied_(std::move(on_denied)), on_override_(std::move(on_override)),
      cache_(cache)
{
}

void PolicyGate::on_client_message(char type)
{
    if (type == 'Q' || type == 'F' || type == 'S')
        ++sync_points_sent_;
}

std::optional<protocol::Bytes> PolicyGate::deny(char type, protocol::ByteSpan body, const std::string& kind,
                                                const std::string& reason)
{
    ++denials_;
    on_denied_(type, body, kind, reason);
    protocol::ErrorFields e;
    e.severity = "ERROR";
    e.sqlstate = "42501";
    e.message = "pgwicket policy \"" + policy_->name + "\" does not allow this statement (" + kind + "): " + reason;
    e.hint = "The statement was not sent to the server. Ask the pgwicket operator if you need it.";
    return refuse(type, body, e);
}

protocol::Bytes PolicyGate::refuse(char type, protocol::ByteSpan body, const protocol::ErrorFields& error)
{
    // Query and FunctionCall are answered at their own point; extended-protocol messages
    // at the next Sync.
    const bool simple = type == 'Q' || type == 'F';
    pending_[simple ? sync_points_sent_ : sync_points_sent_ + 1] = protocol::error_response(error);
    protocol::Writer w;
    if (!simple) {
        // A Parse keeps its statement name, so the client's later Bind/Describe fail as
        // they would; anything else (a Bind refused because audit failed) becomes a Parse
        // of the unnamed statement, which fails the same way.
        auto name = type == 'P' ? cstring_at(body, 0) : std::nullopt;
        w.begin('P');
        w.cstring(name ? *name : std::string_view());
        w.cstring(denied_text_);
        w.u16(0);
    } else {
        w.begin('Q');
        w.cstring(denied_text_);
    }
    w.finish();
    return w.take();
}

std::optional<protocol::Bytes> PolicyGate::check(char type, protocol::ByteSpan body)
{
    if (!policy_)
        return std::nullopt;
    if (type == 'F')
        return deny(type, body, "function_call",
                    "the fast-path FunctionCall message bypasses statement checks; call the function in a query");
    auto text = cstring_at(body, 0);
    if (text && type == 'P')
        text = cstring_at(body, text->size() + 1);  // after the statement name
    if (!text)
        return deny(type, body, "other", "the message is malformed");
    auto classified = cache_.get(*text);
    // Every reading that parses must be allowed (the server reads it one of these ways);
    // the first that parses stands for the statement below.
    const std::vector<policy::Statement>* statements = nullptr;
    if (classified->primary.ok()) {
        statements = &classified->primary.value();
        policy::Verdict v = policy::check(*policy_, *statements);
        if (!v.allowed)
            return deny(type, body, v.kind, v.reason);
    }
    for (const auto& reading : classified->others) {
        if (!reading.statements.ok())
            continue;
        if (!statements)
            statements = &reading.statements.value();
        policy::Verdict v = policy::check(*policy_, reading.statements.value());
        if (!v.allowed)
            return deny(type, body, v.kind, v.reason + " (as the server reads it with " + std::string(reading.how) + ")");
    }
    if (!statements)
        return deny(type, body, "other", "pgwicket could not parse it: " + classified->primary.error());
    // The caps' override: SET / RESET pgwicket.max_rows and pgwicket.max_bytes.
    std::vector<std::pair<std::string, long>> overrides;
    for (const auto& s : *statements) {
        if ((s.kind != policy::Kind::Set && s.kind != policy::Kind::Reset) ||
            (s.setting != "pgwicket.max_rows" && s.setting != "pgwicket.max_bytes" && s.setting != "all"))
            continue;
        if (s.setting == "all") {  // RESET ALL puts the policy's caps back
            overrides.emplace_back("pgwicket.max_rows", -1);
            overrides.emplace_back("pgwicket.max_bytes", -1);
            continue;
        }
        if (!policy_->allow_override)
            return deny(type, body, std::string(policy::kind_name(s.kind)),
                        "the policy does not allow changing " + s.setting + " (allow_override)");
        long value = -1;
        if (s.kind == policy::Kind::Set) {
            // The value is the last word: SET x = 100, SET x TO '100', SET x = DEFAULT.
            std::string piece(text->substr(s.offset, s.length));
            size_t end = piece.find_last_not_of(" \t\r\n;");
            size_t begin = piece.find_last_of(" \t=", end);
            std::string word = piece.substr(begin == std::string::npos ? 0 : begin + 1, end - begin);
            if (word.size() >= 2 && word.front() == '\'' && word.back() == '\'')
                word = word.substr(1, word.size() - 2);
            if (word != "default" && word != "DEFAULT") {
                char* stop = nullptr;
                value = std::strtol(word.c_str(), &stop, 10);
                if (word.empty() || *stop != '\0' || value < 0)
                    return deny(type, body, "set", s.setting + " takes a whole number (0: no cap)");
            }
        }
        overrides.emplace_back(s.setting, value);
    }
    if (on_override_)
        for (const auto& [setting, value] : overrides)
            on_override_(setting, value);
    return std::nullopt;
}

std::optional<protocol::Bytes> PolicyGate::on_server_error(const protocol::ErrorFields& e)
{
    // The error of the sync point being answered now; only the server's reply to our
    // replacement text (42601) is ours to replace.
    auto it = pending_.find(sync_points_done_ + 1);
    if (it == pending_.end() || e.sqlstate != "42601" || e.message.find(denied_text_) == std::string::npos)
        return std::nullopt;
    protocol::Bytes ours = std::move(it->second);
    pending_.erase(it);
    return ours;
}

void PolicyGate::on_ready_for_query()
{
    ++sync_points_done_;
    // A denial whose point has passed without our error (an earlier message of the
    // same batch failed first, so the server skipped ours) has nothing left to show.
    while (!pending_.empty() && pending_.begin()->first <= sync_points_done_)
        pending_.erase(pending_.begin());
}

} // namespace pgw::session
