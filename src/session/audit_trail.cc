// Matching completions to statements. The server answers in order: every statement of
// a Query and every Execute ends with one completion or an error; an error ends its
// sync point (the rest of the Query, or the extended batch up to Sync, never runs).
#include "session/audit_trail.hh"

#include "common/log.hh"
#include "policy/classify.hh"

#include <optional>

namespace pgw::session {
using protocol::cstring_at;
namespace {

constexpr size_t kMaxCachedTexts = 1024;

std::string trim(std::string_view s)
{
    size_t a = s.find_first_not_of(" \t\r\n");
    if (a == std::string_view::npos)
        return {};
    size_t b = s.find_last_not_of(" \t\r\n;");
    return std::string(s.substr(a, b - a + 1));
}

} // namespace

bool AuditTrail::write(audit::Event e, const std::string& detail)
{
    if (!sink_.enabled())
        return true;
    audit::Record r;
    r.event = e;
    r.detail = detail;
    bool ok = sink_.write(info_, r);
    failed_ |= !ok;
    written_ += ok;
    return ok;
}

const std::vector<AuditTrail::Text>& AuditTrail::texts(std::string_view sql)
{
    auto it = cache_.find(std::string(sql));
    if (it != cache_.end())
        return it->second;
    // Texts that differ only in numbers normalize alike, when every number became a
    // placeholder: such results are kept under the literal_key (marked by a leading NUL,
    // which no text from the client has), so that pgbench-like traffic, a new constant
    // every time, is normalized once per shape.
    std::optional<std::string> key = policy::literal_key(sql);
    if (key) {
        key->insert(key->begin(), '\0');
        if (auto k = cache_.find(*key); k != cache_.end())
            return k->second;
    }
    if (cache_.size() >= kMaxCachedTexts)
        cache_.clear();
    std::vector<Text> out;
    auto statements = policy::classify(sql);
    if (!statements) {
        // Literals cannot be told apart in text the parser refused: never write it out.
        out.push_back({full_text_ ? std::string(sql) : "<statement that does not parse, " + std::to_string(sql.size()) + " bytes>", ""});
    } else {
        for (const auto& s : *statements) {
            std::string_view piece = sql.substr(s.offset, s.length);
            Text t;
            auto fp = policy::fingerprint(piece);
            t.fingerprint = fp ? *fp : "";
            if (full_text_) {
                t.statement = trim(piece);
            } else {
                auto n = policy::normalize(piece);
                t.statement = n ? trim(*n) : "<statement that cannot be normalized>";
            }
            out.push_back(std::move(t));
        }
        if (out.empty())
            out.push_back({"", ""});  // an empty query string still gets EmptyQueryResponse
    }
    // Shared by shape only when no number is left in what is recorded (normalize
    // replaced them all) and the statements are the same for every number.
    bool shareable = key && statements && policy::shareable_by_literal_key(*statements);
    for (const Text& t : out)
        shareable = shareable && policy::literal_key(t.statement) == t.statement;
    return cache_.emplace(shareable ? *key : std::string(sql), std::move(out)).first->second;
}

void AuditTrail::on_client_message(char type)
{
    if (type == 'Q' || type == 'F' || type == 'S')
        ++sync_points_sent_;
}

void AuditTrail::on_client_body(char type, protocol::ByteSpan body)
{
    if (pending_.empty()) {
        started_ = Clock::now();
        rows_ = bytes_ = 0;
    }
    if (type == 'Q') {
        if (auto sql = cstring_at(body, 0))
            for (const auto& t : texts(*sql))
                pending_.push_back({sync_points_sent_, t.statement, t.fingerprint});
    } else if (type == 'P') {
        auto name = cstring_at(body, 0);
        auto sql = name ? cstring_at(body, name->size() + 1) : std::nullopt;
        if (sql) {
            const auto& t = texts(*sql);
            prepared_[std::string(*name)] = t.empty() ? Text{} : t.front();
        }
    } else if (type == 'B') {
        auto portal = cstring_at(body, 0);
        auto stmt = portal ? cstring_at(body, portal->size() + 1) : std::nullopt;
        if (stmt)
            portals_[std::string(*portal)] = std::string(*stmt);
    } else if (type == 'E') {
        auto portal = cstring_at(body, 0);
        Pending p{sync_points_sent_ + 1, "", ""};
        if (portal)
            if (auto it = portals_.find(std::string(*portal)); it != portals_.end())
                if (auto st = prepared_.find(it->second); st != prepared_.end()) {
                    p.statement = st->second.statement;
                    p.fingerprint = st->second.fingerprint;
                    p.placeholder = st->second.statement.empty() && st->second.fingerprint == "denied";
                }
        pending_.push_back(std::move(p));
    }
}

void AuditTrail::on_denied(char type, protocol::ByteSpan body, const std::string& policy, const std::string& kind,
                           const std::string& reason)
{
    audit::Record r;
    r.event = audit::Event::Denial;
    r.denied_by = policy;
    r.detail = kind + ": " + reason;
    std::optional<std::string_view> sql;
    if (type == 'Q')
        sql = cstring_at(body, 0);
    else if (type == 'P')
        if (auto name = cstring_at(body, 0))
            sql = cstring_at(body, name->size() + 1);
    if (sql) {
        const auto& t = texts(*sql);
        r.statement = t.empty() ? "" : t.front().statement;
        r.fingerprint = t.empty() ? "" : t.front().fingerprint;
        for (size_t i = 1; i < t.size(); ++i)
            r.statement += "; " + t[i].statement;
    }
    if (sink_.enabled()) {
        bool ok = sink_.write(info_, r);
        failed_ |= !ok;
        written_ += ok;
    }
    if (type == 'Q' || type == 'F') {
        // The server answers the stand-in with an error; that completion is not a statement.
        Pending p{sync_points_sent_, "", "", true};
        pending_.push_back(p);
    } else if (type == 'P') {
        if (auto name = cstring_at(body, 0))
            prepared_[std::string(*name)] = Text{"", "denied"};
    }
}

void AuditTrail::on_refused(char type)
{
    if (type == 'Q' || type == 'F')
        pending_.push_back({sync_points_sent_, "", "", true});
}

void AuditTrail::on_server_message(char type, std::uint64_t size)
{
    bytes_ += size;
    if (type == 'D')
        ++rows_;
    else if (type == 'I' || type == 's')
        complete(type == 's' ? "(portal suspended)" : "", "");
}

void AuditTrail::on_command_complete(std::string_view tag) { complete(std::string(tag), ""); }

void AuditTrail::on_error(const std::string& sqlstate)
{
    if (pending_.empty() || pending_.front().sync_point != sync_points_done_ + 1)
        return;  // an error outside any statement (a failed Parse/Bind before Execute is sent)
    std::uint64_t point = pending_.front().sync_point;
    complete("", sqlstate);
    // The rest of this sync point never runs.
    while (!pending_.empty() && pending_.front().sync_point == point)
        pending_.pop_front();
}

void AuditTrail::on_ready_for_query()
{
    ++sync_points_done_;
    while (!pending_.empty() && pending_.front().sync_point <= sync_points_done_)
        pending_.pop_front();
}

void AuditTrail::complete(const std::string& tag, const std::string& sqlstate)
{
    if (pending_.empty())
        return;
    Pending p = std::move(pending_.front());
    pending_.pop_front();
    const auto now = Clock::now();
    if (!p.placeholder) {
        audit::Record r;
        r.event = audit::Event::Statement;
        r.statement = std::move(p.statement);
        r.fingerprint = std::move(p.fingerprint);
        r.duration_ms = std::chrono::duration<double, std::milli>(now - started_).count();
        r.rows = rows_;
        r.bytes = bytes_;
        r.tag = tag;
        r.sqlstate = sqlstate;
        r.truncated = truncated_;
        if (log_statements_)
            log_info("statement: %s%s%s, %llu rows, %llu bytes, %.3f ms%s", tag.empty() ? "" : tag.c_str(),
                     sqlstate.empty() ? "" : "error ", sqlstate.c_str(), (unsigned long long)r.rows,
                     (unsigned long long)r.bytes, r.duration_ms, r.truncated ? ", truncated by a cap" : "");
        if (sink_.enabled()) {
            bool ok = sink_.write(info_, r);
            failed_ |= !ok;
            written_ += ok;
        }
    }
    started_ = now;
    rows_ = bytes_ = 0;
    truncated_ = false;
}

} // namespace pgw::session
