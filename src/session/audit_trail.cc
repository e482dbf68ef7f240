// Matching completions to statements. The server answers in order: every statement of
// a Query and every Execute ends with one completion or an error; an error ends its
// sync point (the rest of the Query, or the extended batch up to Sync, never runs).
#include "session/audit_trail.hh"

#include "common/log.hh"
#include "policy/classify.hh"

#include <algorithm>
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

std::shared_ptr<const audit::StatementFacts> facts_of(const policy::Statement& st)
{
    auto f = std::make_shared<audit::StatementFacts>();
    f->audit_class = policy::audit_class_name(st.audit_class);
    f->command = st.command;
    f->relations.reserve(st.relations.size());
    for (const auto& r : st.relations)
        f->relations.emplace_back(r.name, policy::access_name(r.access));
    return f;
}

// A denial of a multi-statement Query: the first statement's class and command, every
// statement's relations.
std::shared_ptr<const audit::StatementFacts> merged_facts(const std::vector<std::shared_ptr<const audit::StatementFacts>>& all)
{
    if (all.size() == 1 || !all.front())
        return all.front();
    auto f = std::make_shared<audit::StatementFacts>(*all.front());
    for (size_t i = 1; i < all.size(); ++i)
        if (all[i])
            for (const auto& r : all[i]->relations)
                if (std::find(f->relations.begin(), f->relations.end(), r) == f->relations.end())
                    f->relations.push_back(r);
    return f;
}

// A Bind's parameters, each cut to max_size bytes; nullptr when the message is malformed
// (the server refuses it; the Execute's record then has none).
std::shared_ptr<const std::vector<audit::Parameter>> bind_parameters(protocol::ByteSpan body, size_t max_size)
{
    protocol::Reader in(body);
    if (!in.cstring() || !in.cstring())
        return nullptr;
    auto n_formats = in.u16();
    if (!n_formats)
        return nullptr;
    std::vector<std::uint16_t> formats;
    for (unsigned i = 0; i < *n_formats; ++i) {
        auto f = in.u16();
        if (!f)
            return nullptr;
        formats.push_back(*f);
    }
    auto n = in.u16();
    if (!n)
        return nullptr;
    auto out = std::make_shared<std::vector<audit::Parameter>>();
    out->reserve(*n);
    for (unsigned i = 0; i < *n; ++i) {
        auto len = in.i32();
        if (!len)
            return nullptr;
        audit::Parameter p;
        p.binary = (formats.size() == 1 ? formats[0] : i < formats.size() ? formats[i] : 0) == 1;
        if (*len < 0) {
            p.is_null = true;
        } else {
            auto bytes = in.bytes(size_t(*len));
            if (!bytes)
                return nullptr;
            p.size = bytes->size();
            p.value.assign(reinterpret_cast<const char*>(bytes->data()), std::min(bytes->size(), max_size));
        }
        out->push_back(std::move(p));
    }
    return out;
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
            t.facts = facts_of(s);
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
                pending_.push_back({sync_points_sent_, t.statement, t.fingerprint, false, t.facts});
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
            portals_[std::string(*portal)] = {std::string(*stmt), parameter_max_size_ < 0
                                                                      ? nullptr
                                                                      : bind_parameters(body, size_t(parameter_max_size_))};
    } else if (type == 'E') {
        auto portal = cstring_at(body, 0);
        Pending p{sync_points_sent_ + 1, "", ""};
        if (portal)
            if (auto it = portals_.find(std::string(*portal)); it != portals_.end())
                if (auto st = prepared_.find(it->second.statement); st != prepared_.end()) {
                    p.statement = st->second.statement;
                    p.fingerprint = st->second.fingerprint;
                    p.placeholder = st->second.statement.empty() && st->second.fingerprint == "denied";
                    p.facts = st->second.facts;
                    p.parameters = it->second.parameters;
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
        std::vector<Facts> all;
        for (size_t i = 0; i < t.size(); ++i) {
            if (i > 0)
                r.statement += "; " + t[i].statement;
            all.push_back(t[i].facts);
        }
        if (!all.empty())
            r.facts = merged_facts(all);
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
        r.facts = std::move(p.facts);
        r.parameters = std::move(p.parameters);
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
