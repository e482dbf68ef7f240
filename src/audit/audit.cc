// Audit records: JSON built by hand (a fixed set of fields, strings escaped per RFC
// 8259), written with one write(2) per line so concurrent workers never interleave.
#include "audit/audit.hh"

#include "auth/base64.hh"

#include <fcntl.h>
#include <sys/stat.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>

namespace pgw::audit {
namespace {

void put_string(std::string& out, const std::string& v)
{
    out.push_back('"');
    for (unsigned char c : v) {
        switch (c) {
        case '"':
            out += "\\\"";
            break;
        case '\\':
            out += "\\\\";
            break;
        case '\n':
            out += "\\n";
            break;
        case '\r':
            out += "\\r";
            break;
        case '\t':
            out += "\\t";
            break;
        default:
            if (c < 0x20) {
                char buf[8];
                std::snprintf(buf, sizeof buf, "\\u%04x", c);
                out += buf;
            } else {
                out.push_back(char(c));  // UTF-8 passes as is; invalid bytes too (see below)
            }
        }
    }
    out.push_back('"');
}

void field(std::string& out, const char* name, const std::string& v, bool null_if_empty = false)
{
    out += ",\"";
    out += name;
    out += "\":";
    if (null_if_empty && v.empty())
        out += "null";
    else
        put_string(out, v);
}

std::string now_rfc3339()
{
    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm {};
    gmtime_r(&ts.tv_sec, &tm);
    char buf[64];
    size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
    std::snprintf(buf + n, sizeof buf - n, ".%06ldZ", ts.tv_nsec / 1000);
    return buf;
}

// Invalid UTF-8 in a statement would make the line invalid JSON: replace such bytes.
std::string valid_utf8(const std::string& s)
{
    std::string out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size();) {
        unsigned char c = s[i];
        size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        bool ok = len > 0 && i + len <= s.size();
        for (size_t k = 1; ok && k < len; ++k)
            ok = (static_cast<unsigned char>(s[i + k]) >> 6) == 2;
        if (ok) {
            out.append(s, i, len);
            i += len;
        } else {
            out += "\xEF\xBF\xBD";
            ++i;
        }
    }
    return out;
}

// [{"name":...,"access":...}, ...]: in the record, and as one journald field.
std::string relations_json(const StatementFacts* f)
{
    std::string out = "[";
    if (f)
        for (size_t i = 0; i < f->relations.size(); ++i) {
            out += i ? ",{\"name\":" : "{\"name\":";
            put_string(out, valid_utf8(f->relations[i].first));
            field(out, "access", std::string(f->relations[i].second));
            out += "}";
        }
    return out + "]";
}

// null, or [null | {"text"|"base64":..., "size":n, "cut":bool}, ...].
std::string parameters_json(const std::vector<Parameter>* ps)
{
    if (!ps)
        return "null";
    std::string out = "[";
    for (size_t i = 0; i < ps->size(); ++i) {
        const Parameter& p = (*ps)[i];
        if (i)
            out += ",";
        if (p.is_null) {
            out += "null";
            continue;
        }
        if (p.binary) {
            out += "{\"base64\":";
            put_string(out, auth::base64_encode({reinterpret_cast<const std::uint8_t*>(p.value.data()), p.value.size()}));
        } else {
            out += "{\"text\":";
            put_string(out, valid_utf8(p.value));
        }
        out += ",\"size\":" + std::to_string(p.size);
        out += p.size > p.value.size() ? ",\"cut\":true}" : ",\"cut\":false}";
    }
    return out + "]";
}

} // namespace

const char* event_name(Event e)
{
    switch (e) {
    case Event::SessionStart:
        return "session_start";
    case Event::SessionEnd:
        return "session_end";
    case Event::Statement:
        return "statement";
    case Event::Denial:
        return "denial";
    case Event::Override:
        return "override";
    }
    return "?";
}

std::string to_json(const SessionInfo& s, const Record& r)
{
    std::string out = "{\"v\":" + std::to_string(kSchemaVersion) + ",\"time\":";
    put_string(out, now_rfc3339());
    field(out, "event", event_name(r.event));
    out += ",\"session\":" + std::to_string(s.session_id);
    field(out, "identity", s.identity);
    field(out, "user", s.user);
    field(out, "client", s.client);
    field(out, "application_name", valid_utf8(s.application_name));
    field(out, "database", s.database);
    field(out, "upstream", s.upstream);
    field(out, "policy", s.policy, true);
    field(out, "upstream_host", s.upstream_host, true);
    out += s.upstream_port ? ",\"upstream_port\":" + std::to_string(s.upstream_port) : ",\"upstream_port\":null";
    out += s.backend_pid ? ",\"backend_pid\":" + std::to_string(s.backend_pid) : ",\"backend_pid\":null";
    if (r.event == Event::Statement || r.event == Event::Denial) {
        field(out, "statement", valid_utf8(r.statement));
        field(out, "fingerprint", r.fingerprint, true);
        char num[64];
        std::snprintf(num, sizeof num, "%.3f", r.duration_ms);
        out += ",\"duration_ms\":";
        out += num;
        out += ",\"rows\":" + std::to_string(r.rows);
        out += ",\"bytes\":" + std::to_string(r.bytes);
        field(out, "tag", r.tag, true);
        field(out, "sqlstate", r.sqlstate, true);
        out += r.truncated ? ",\"truncated\":true" : ",\"truncated\":false";
        field(out, "denied_by", r.denied_by, true);
        field(out, "class", r.facts ? std::string(r.facts->audit_class) : "", true);
        field(out, "command", r.facts ? r.facts->command : "", true);
        out += ",\"relations\":" + relations_json(r.facts.get());
        out += ",\"parameters\":" + parameters_json(r.parameters.get());
    }
    if (!r.detail.empty())
        field(out, "detail", valid_utf8(r.detail));
    out += "}";
    return out;
}

bool Sink::open()
{
    if (path_.empty())
        return true;
    UniqueFd fd(::open(path_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640));
    if (!fd.valid()) {
        error_ = "could not open audit_file \"" + path_ + "\": " + std::strerror(errno);
        return false;
    }
    fd_ = std::move(fd);
    return true;
}

// A record cut short (the disk filled up in the middle of it) would glue the next
// record, from any session, onto a broken line. With O_APPEND our offset is the end of
// what we wrote; when nobody has appended since, cut the file back to where the record
// began. (Another worker appending between the fstat and the ftruncate would lose its
// record; on a full disk its write fails anyway, and the failure is logged either way.)
void Sink::drop_partial_line(size_t written)
{
    off_t end = ::lseek(fd_.get(), 0, SEEK_CUR);
    struct stat st;
    if (end < off_t(written) || ::fstat(fd_.get(), &st) != 0 || st.st_size != end)
        return;
    if (::ftruncate(fd_.get(), end - off_t(written)) != 0)
        error_ += "; the partial record could not be removed: " + std::string(std::strerror(errno));
}

bool Sink::write(const SessionInfo& s, const Record& r)
{
    bool ok = true;
    if (!path_.empty()) {
        std::string line = to_json(s, r) + "\n";
        if (!fd_.valid() && !open()) {
            ok = false;
        } else {
            ssize_t n = ::write(fd_.get(), line.data(), line.size());
            if (n != ssize_t(line.size())) {
                error_ = "could not write to audit_file \"" + path_ + "\": " +
                         (n < 0 ? std::strerror(errno) : "short write (disk full?)");
                ok = false;
                if (n > 0)
                    drop_partial_line(size_t(n));
            }
        }
    }
    if (journald_) {
        // One MESSAGE_ID per event kind, so journalctl MESSAGE_ID=... selects them.
        static const char* ids[] = {"5d0d2e4b8f6a4a3e9a1c7b2f0e9d8c71", "5d0d2e4b8f6a4a3e9a1c7b2f0e9d8c72",
                                    "5d0d2e4b8f6a4a3e9a1c7b2f0e9d8c73", "5d0d2e4b8f6a4a3e9a1c7b2f0e9d8c74",
                                    "5d0d2e4b8f6a4a3e9a1c7b2f0e9d8c75"};
        int rc = sd_journal_send(
            "MESSAGE=pgwicket audit: %s C-%llu %s", event_name(r.event), (unsigned long long)s.session_id,
            r.statement.substr(0, 200).c_str(), "MESSAGE_ID=%s", ids[int(r.event)], "PRIORITY=6",
            "SYSLOG_IDENTIFIER=pgwicket-audit", "PGWICKET_EVENT=%s", event_name(r.event), "PGWICKET_SESSION=%llu",
            (unsigned long long)s.session_id, "PGWICKET_IDENTITY=%s", s.identity.c_str(), "PGWICKET_USER=%s",
            s.user.c_str(), "PGWICKET_CLIENT=%s", s.client.c_str(), "PGWICKET_DATABASE=%s", s.database.c_str(),
            "PGWICKET_STATEMENT=%s", r.statement.c_str(), "PGWICKET_FINGERPRINT=%s", r.fingerprint.c_str(),
            "PGWICKET_DURATION_MS=%.3f", r.duration_ms, "PGWICKET_ROWS=%llu", (unsigned long long)r.rows,
            "PGWICKET_TAG=%s", r.tag.c_str(), "PGWICKET_SQLSTATE=%s", r.sqlstate.c_str(), "PGWICKET_DENIED_BY=%s",
            r.denied_by.c_str(), "PGWICKET_BYTES=%llu", (unsigned long long)r.bytes, "PGWICKET_TRUNCATED=%d",
            int(r.truncated), "PGWICKET_APPLICATION_NAME=%s", s.application_name.c_str(), "PGWICKET_UPSTREAM=%s",
            s.upstream.c_str(), "PGWICKET_POLICY=%s", s.policy.c_str(), "PGWICKET_DETAIL=%s", r.detail.c_str(),
            "PGWICKET_VERSION=%d", kSchemaVersion, "PGWICKET_UPSTREAM_HOST=%s", s.upstream_host.c_str(),
            "PGWICKET_UPSTREAM_PORT=%u", unsigned(s.upstream_port), "PGWICKET_BACKEND_PID=%u",
            unsigned(s.backend_pid), "PGWICKET_CLASS=%s", r.facts ? std::string(r.facts->audit_class).c_str() : "",
            "PGWICKET_COMMAND=%s", r.facts ? r.facts->command.c_str() : "", "PGWICKET_RELATIONS=%s",
            relations_json(r.facts.get()).c_str(), "PGWICKET_PARAMETERS=%s",
            parameters_json(r.parameters.get()).c_str(), nullptr);
        if (rc < 0) {
            error_ = std::string("could not send the audit record to journald: ") + std::strerror(-rc);
            ok = false;
        }
    }
    return ok;
}

} // namespace pgw::audit
