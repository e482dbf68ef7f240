// Admin console: a tiny simple-query server. Each command checks its privilege
// (commands.hh says which need admin_users); extended-protocol messages are refused.
#include "admin/console.hh"

#include "admin/commands.hh"
#include "admin/stats.hh"
#include "common/log.hh"
#include "common/net.hh"
#include "config/options.hh"
#include "health/hosts.hh"
#include "protocol/bytes.hh"
#include "protocol/messages.hh"
#include "session/exit_codes.hh"
#include "session/session.hh"

#include <libpq-fe.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <ctime>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace pgw::admin {
namespace {

using namespace std::chrono_literals;
using protocol::Bytes;
using Row = std::vector<std::optional<std::string>>;

// The console's queries are short; anything larger is not a console command.
constexpr std::uint32_t kMaxMessage = 64 * 1024;

std::string upper_words(std::string_view text)
{
    // Collapses blanks and upper-cases, so "show   sessions" matches "SHOW SESSIONS".
    std::string out;
    bool blank = false;
    for (char ch : text) {
        if (ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r') {
            blank = !out.empty();
            continue;
        }
        if (blank)
            out.push_back(' ');
        blank = false;
        out.push_back(ch >= 'a' && ch <= 'z' ? char(ch - 'a' + 'A') : ch);
    }
    return out;
}

std::string iso_time(std::int64_t ms)
{
    if (ms <= 0)
        return "";
    time_t secs = time_t(ms / 1000);
    struct tm tm {};
    gmtime_r(&secs, &tm);
    char buf[40];
    std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S+00", &tm);
    return buf;
}

// A connection string with its password replaced, for SHOW DATABASES.
std::string without_password(const std::string& conninfo)
{
    char* err = nullptr;
    PQconninfoOption* opts = PQconninfoParse(conninfo.c_str(), &err);
    PQfreemem(err);
    if (!opts)
        return "(unparsable)";
    std::string out;
    for (PQconninfoOption* o = opts; o->keyword; ++o) {
        if (!o->val || !*o->val)
            continue;
        if (!out.empty())
            out += " ";
        out += o->keyword;
        out += "=";
        out += std::string(o->keyword) == "password" ? "********" : o->val;
    }
    PQconninfoFree(opts);
    return out;
}

class Console {
public:
    explicit Console(const ConsoleSession& s) : s_(s) {}
    int run();

private:
    bool send(const Bytes& b) { return s_.conn.write_all(b.data(), b.size(), net::Clock::now() + 10s); }
    void error(const char* sqlstate, const std::string& message, const std::string& hint = {})
    {
        protocol::ErrorFields e;
        e.severity = "ERROR";
        e.sqlstate = sqlstate;
        e.message = message;
        e.hint = hint;
        out_.raw(protocol::error_response(e));
    }
    void result(const std::vector<std::string>& columns, const std::vector<Row>& rows, const std::string& tag)
    {
        out_.raw(protocol::row_description(columns));
        for (const auto& r : rows)
            out_.raw(protocol::data_row(r));
        out_.raw(protocol::command_complete(tag + " " + std::to_string(rows.size())));
    }
    // Runs one command; false when it failed (the rest of the query string is skipped).
    bool execute(const std::string& text);
    void show_sessions();
    void show_stats();
    void show_databases();
    void show_pools();
    void show_servers();
    void show_hosts();
    void show_config();
    void show_help();
    bool kill_session(const std::string& arg);
    bool signal_supervisor(int sig, const char* what);

    const ConsoleSession& s_;
    bool admin_ = false;
    protocol::Writer out_;
};

// A pid, or empty while there is none yet (a session still logging in).
std::string pid_text(std::uint32_t pid) { return pid ? std::to_string(pid) : std::string(); }

void Console::show_sessions()
{
    std::vector<Row> rows;
    for (std::uint32_t i = 0; i < s_.table.capacity(); ++i) {
        const ipc::Slot& sl = s_.table.slot(i);
        auto st = ipc::SlotState(sl.state.load(std::memory_order_acquire));
        if (st == ipc::SlotState::Free)
            continue;
        auto cnt = [&](ipc::Counter c) { return std::to_string(sl.counters.v[c].load(std::memory_order_relaxed)); };
        rows.push_back({std::to_string(sl.session_id.load(std::memory_order_relaxed)), ipc::slot_state_name(st),
                        iso_time(sl.state_since_ms.load(std::memory_order_relaxed)), sl.client_addr.get(),
                        sl.database.get(), sl.user.get(), sl.identity.get(), sl.application_name.get(),
                        std::to_string(sl.owner_pid.load(std::memory_order_relaxed)),
                        pid_text(sl.backend_pid.load(std::memory_order_relaxed)), cnt(ipc::kQueries),
                        cnt(ipc::kBytesFromClient), cnt(ipc::kBytesFromServer)});
    }
    result({"session", "state", "state_since", "client_addr", "database", "user", "identity", "application_name",
            "worker_pid", "backend_pid", "queries", "bytes_from_client", "bytes_from_server"},
           rows, "SHOW");
}

void Console::show_stats()
{
    std::vector<Row> rows;
    for (const auto& f : collect(s_.table))
        for (size_t i = 0; i < f.samples.size(); ++i) {
            char v[64];
            std::snprintf(v, sizeof v, "%.17g", f.samples[i].value);
            rows.push_back({f.name + f.suffixes[i], f.samples[i].labels, std::string(v)});
        }
    result({"metric", "labels", "value"}, rows, "SHOW");
}

void Console::show_databases()
{
    std::vector<Row> rows;
    for (const auto& d : s_.cfg.databases)
        rows.push_back({d.name, without_password(d.conninfo), s_.cfg.path + ":" + std::to_string(d.line)});
    result({"name", "upstream", "defined_at"}, rows, "SHOW");
}

void Console::show_pools()
{
    std::vector<Row> rows;
    const auto* h = s_.table.header();
    const std::uint32_t n = std::min(h->pool_rows.load(std::memory_order_acquire), ipc::kPoolRows);
    for (std::uint32_t i = 0; i < n; ++i) {
        const ipc::PoolRow& r = h->pools[i];
        const auto warm = r.warm.load(std::memory_order_relaxed), open = r.open.load(std::memory_order_relaxed);
        rows.push_back({r.route.get(), std::to_string(warm), std::to_string(open >= warm ? open - warm : 0),
                        std::to_string(r.waiting.load(std::memory_order_relaxed)),
                        std::to_string(double(r.longest_wait_ms.load(std::memory_order_relaxed)) / 1000.0),
                        std::to_string(r.pool_size.load(std::memory_order_relaxed))});
    }
    result({"pool", "warm", "active", "waiting", "longest_wait_s", "pool_size"}, rows, "SHOW");
}

void Console::show_hosts()
{
    std::vector<Row> rows;
    const auto* h = s_.table.header();
    const std::uint32_t n = std::min(h->host_rows.load(std::memory_order_acquire), ipc::kHostRows);
    const std::int64_t now = ipc::wall_clock_ms(), mono = health::monotonic_ms();
    const std::vector<std::uint32_t> sessions = health::sessions_by_host(s_.table);
    for (std::uint32_t i = 0; i < n; ++i) {
        const health::HostView v = health::read_host(*h, i);
        if (!v.listed)
            continue;  // no longer in the configuration
        char checked[32] = "", lag[32];
        if (v.checked_ms > 0)
            std::snprintf(checked, sizeof checked, "%.1f", double(now - v.checked_ms) / 1000.0);
        std::snprintf(lag, sizeof lag, "%.3f", double(v.lag_ms) / 1000.0);
        rows.push_back({v.host, std::to_string(v.port), health::state_name(v.state), health::role_name(v.role),
                        std::to_string(v.lag_bytes), lag, checked,
                        std::to_string(v.checks), std::to_string(v.failures), std::to_string(v.role_gen),
                        v.banned_until_ms > mono ? std::to_string((v.banned_until_ms - mono + 999) / 1000) : "0",
                        std::to_string(i < sessions.size() ? sessions[i] : 0), v.error});
    }
    result({"host", "port", "state", "role", "lag_bytes", "lag_s", "checked_s_ago", "checks", "failures",
            "role_changes", "banned_s", "sessions", "last_error"},
           rows, "SHOW");
}

void Console::show_servers()
{
    struct Server {
        std::string pool;
        ipc::ServerState state;
        std::uint32_t backend_pid;
        std::int32_t worker_pid;
        std::int64_t connected_ms, idle_since_ms, checked_ms;
        std::uint64_t sessions;
        bool tls;
    };
    std::vector<Server> servers;
    for (const ipc::ServerRow& r : s_.table.header()->servers) {
        const std::int32_t owner = r.owner_pid.load(std::memory_order_acquire);
        if (owner == 0)
            continue;
        const auto state = ipc::ServerState(r.state.load(std::memory_order_acquire));
        if (state == ipc::ServerState::Unset)
            continue;
        Server sv{r.pool.get(),
                  state,
                  r.backend_pid.load(std::memory_order_relaxed),
                  owner,
                  r.connected_ms.load(std::memory_order_relaxed),
                  r.idle_since_ms.load(std::memory_order_relaxed),
                  r.checked_ms.load(std::memory_order_relaxed),
                  r.sessions.load(std::memory_order_relaxed),
                  r.tls.load(std::memory_order_relaxed) != 0};
        // Released or taken over while we read: the values may be another owner's.
        if (r.owner_pid.load(std::memory_order_acquire) != owner)
            continue;
        servers.push_back(std::move(sv));
    }
    std::sort(servers.begin(), servers.end(), [](const Server& a, const Server& b) {
        return std::tie(a.pool, a.backend_pid) < std::tie(b.pool, b.backend_pid);
    });
    const std::int64_t now = ipc::wall_clock_ms();
    auto secs = [&](std::int64_t since_ms) {
        return std::to_string(since_ms > 0 && now > since_ms ? (now - since_ms) / 1000 : 0);
    };
    std::vector<Row> rows;
    for (const auto& sv : servers)
        rows.push_back({sv.pool, ipc::server_state_name(sv.state), pid_text(sv.backend_pid),
                        std::to_string(sv.worker_pid), secs(sv.connected_ms),
                        sv.state == ipc::ServerState::Active ? "0" : secs(sv.idle_since_ms), secs(sv.checked_ms),
                        std::to_string(sv.sessions), sv.tls ? "t" : "f"});
    result({"pool", "state", "backend_pid", "worker_pid", "age_s", "idle_s", "last_check_s", "sessions", "tls"}, rows,
           "SHOW");
}

void Console::show_config()
{
    std::vector<Row> rows;
    for (const auto& spec : config::options())
        rows.push_back({std::string(spec.name), config::option_value(s_.cfg, spec), std::string(spec.default_value),
                        spec.reload == config::ReloadClass::Reload ? "reload" : "restart"});
    result({"name", "value", "default", "changes_with"}, rows, "SHOW");
}

void Console::show_help()
{
    std::vector<Row> rows;
    for (const auto& c : commands())
        rows.push_back({std::string(c.name) + (c.argument.empty() ? "" : " <" + std::string(c.argument) + ">"),
                        c.admin_only ? "admin_users" : "stats_users", std::string(c.summary)});
    result({"command", "who", "description"}, rows, "SHOW");
}

bool Console::kill_session(const std::string& arg)
{
    char* end = nullptr;
    errno = 0;
    unsigned long long id = std::strtoull(arg.c_str(), &end, 10);
    if (arg.empty() || *end != '\0' || errno != 0 || id == 0) {
        error("22023", "KILL needs a session id, a number from SHOW SESSIONS; got \"" + arg + "\"");
        return false;
    }
    for (std::uint32_t i = 0; i < s_.table.capacity(); ++i) {
        ipc::Slot& sl = s_.table.slot(i);
        if (sl.session_id.load(std::memory_order_acquire) != id ||
            sl.state.load(std::memory_order_acquire) == std::uint32_t(ipc::SlotState::Free))
            continue;
        pid_t owner = sl.owner_pid.load(std::memory_order_acquire);
        sl.kill_requested.store(1, std::memory_order_release);
        if (owner <= 0 || ::kill(owner, SIGTERM) != 0) {
            error("55000", "session " + arg + " is ending already");
            return false;
        }
        log_info("KILL %llu: session ended by admin console user \"%s\"", id, s_.user.c_str());
        out_.raw(protocol::command_complete("KILL"));
        return true;
    }
    error("42704", "session " + arg + " does not exist", "SHOW SESSIONS lists the running sessions.");
    return false;
}

bool Console::signal_supervisor(int sig, const char* what)
{
    pid_t sup = s_.table.header()->supervisor_pid.load(std::memory_order_relaxed);
    if (sup <= 0 || ::kill(sup, sig) != 0) {
        error("58000", std::string("could not signal the supervisor for ") + what + ": " + std::strerror(errno));
        return false;
    }
    log_info("%s requested by admin console user \"%s\"", what, s_.user.c_str());
    out_.raw(protocol::command_complete(what));
    return true;
}

bool Console::execute(const std::string& raw)
{
    const std::string text = upper_words(raw);
    if (text.empty())
        return true;
    for (const auto& c : commands()) {
        std::string_view name = c.name;
        const bool takes_arg = !c.argument.empty();
        if (takes_arg ? text.compare(0, name.size(), name) != 0 ||
                            (text.size() > name.size() && text[name.size()] != ' ')
                      : text != name)
            continue;
        if (c.admin_only && !admin_) {
            error("42501", "permission denied for " + std::string(name),
                  "Only admin_users may run it; \"" + s_.user + "\" is in stats_users.");
            return false;
        }
        switch (c.id) {
        case CommandId::ShowSessions:
            show_sessions();
            return true;
        case CommandId::ShowStats:
            show_stats();
            return true;
        case CommandId::ShowDatabases:
            show_databases();
            return true;
        case CommandId::ShowPools:
            show_pools();
            return true;
        case CommandId::ShowServers:
            show_servers();
            return true;
        case CommandId::ShowHosts:
            show_hosts();
            return true;
        case CommandId::ShowConfig:
            show_config();
            return true;
        case CommandId::ShowVersion:
            result({"version"}, {Row{std::string("pgwicket ") + PGWICKET_VERSION}}, "SHOW");
            return true;
        case CommandId::ShowHelp:
            show_help();
            return true;
        case CommandId::Reload:
            return signal_supervisor(SIGHUP, "RELOAD");
        case CommandId::Kill:
            return kill_session(text.size() > name.size() ? text.substr(name.size() + 1) : "");
        case CommandId::Shutdown:
            return signal_supervisor(SIGTERM, "SHUTDOWN");
        }
    }
    error("42601", "unknown admin console command: " + text.substr(0, 200),
          "This is pgwicket's admin console, not a PostgreSQL database; SHOW HELP lists its commands.");
    return false;
}

int Console::run()
{
    admin_ = s_.cfg.is_admin_user(s_.user);
    if (!admin_ && !s_.cfg.is_stats_user(s_.user)) {
        if (s_.slot)
            s_.slot->counters.add(ipc::kAuthFailuresAdmin, 1);
        log_info("refused admin console login: \"%s\" is in neither admin_users nor stats_users", s_.user.c_str());
        send(protocol::fatal("28000", "user \"" + s_.user + "\" may not use the pgwicket admin console",
                             "Add the user to admin_users or stats_users in pgwicket.ini."));
        s_.conn.linger_close(net::Clock::now() + 1s);
        return session::kExitRefused;
    }
    log_info("admin console session (%s)", admin_ ? "admin_users" : "stats_users");
    protocol::Writer greet;
    greet.raw(protocol::authentication_ok());
    const std::pair<const char*, std::string> params[] = {
        {"server_version", "15.0 (pgwicket " PGWICKET_VERSION ")"},
        {"server_encoding", "UTF8"},
        {"client_encoding", "UTF8"},
        {"DateStyle", "ISO, MDY"},
        {"IntervalStyle", "postgres"},
        {"TimeZone", "UTC"},
        {"integer_datetimes", "on"},
        {"standard_conforming_strings", "on"},
        {"is_superuser", "off"},
        {"session_authorization", s_.user},
        {"application_name", s_.application_name},
    };
    for (const auto& [name, value] : params)
        greet.raw(protocol::parameter_status(name, value));
    // No backend here: the key's pid is this worker's own, a real process as drivers expect.
    auto secret = ipc::new_cancel_secret(s_.secret_length);
    if (!secret)
        return session::kExitInternal;
    const auto pid = std::uint32_t(::getpid());
    ipc::publish_cancel_key(s_.slot, pid, *secret);
    if (s_.slot)
        s_.slot->state.store(std::uint32_t(ipc::SlotState::Idle), std::memory_order_release);
    greet.raw(protocol::backend_key_data(pid, *secret));
    greet.raw(protocol::ready_for_query('I'));
    if (!send(greet.bytes()))
        return session::kExitOk;

    bool skipping_to_sync = false;  // after an extended-protocol message, until Sync
    for (;;) {
        // Wait for the next message, waking for SIGTERM (shutdown or KILL).
        // TLS may hold a whole message already read from the socket: poll would not see it.
        pollfd p{s_.conn.fd(), POLLIN, 0};
        int rc = s_.conn.ssl() && SSL_pending(s_.conn.ssl()) > 0 ? 1 : ::poll(&p, 1, 1000);
        if (session::g_reopen_log) {
            session::g_reopen_log = 0;
            log::setup(config::log_settings(s_.cfg));
        }
        if (session::g_stop_requested || session::g_drain_notice) {
            bool killed = s_.slot && s_.slot->kill_requested.load(std::memory_order_acquire);
            send(killed ? protocol::fatal("57P01", "terminating connection due to administrator command",
                                          "An administrator ended this session with KILL in pgwicket's "
                                          "admin console.")
                        : protocol::fatal("57P01", "terminating connection due to pgwicket shutdown",
                                          "Admin console sessions end when pgwicket starts to drain."));
            return session::kExitShutdown;
        }
        if (rc <= 0)
            continue;
        const auto deadline = net::Clock::now() + std::chrono::seconds(s_.cfg.client_login_timeout);
        unsigned char head[5];
        auto rs = s_.conn.read_exact(head, sizeof head, deadline);
        if (rs != net::ReadStatus::Ok)
            return session::kExitOk;
        const char type = char(head[0]);
        const std::uint32_t len = protocol::load_be32(reinterpret_cast<const std::byte*>(head + 1));
        if (len < 4 || len > kMaxMessage) {
            send(protocol::fatal("08P01", "invalid message length " + std::to_string(len) + " for the admin console"));
            return session::kExitClientError;
        }
        std::string body(len - 4, '\0');
        if (s_.conn.read_exact(body.data(), body.size(), deadline) != net::ReadStatus::Ok)
            return session::kExitClientError;
        out_ = protocol::Writer{};
        if (type == 'X')
            return session::kExitOk;
        if (type == 'Q') {
            skipping_to_sync = false;
            std::string sql(body.c_str());  // up to the terminating NUL
            // Commands hold no quotes, so a ';' always separates two of them.
            bool any = false;
            size_t start = 0;
            while (start <= sql.size()) {
                size_t end = sql.find(';', start);
                std::string one = sql.substr(start, end == std::string::npos ? std::string::npos : end - start);
                if (!upper_words(one).empty()) {
                    any = true;
                    if (!execute(one))
                        break;
                }
                if (end == std::string::npos)
                    break;
                start = end + 1;
            }
            if (!any)
                out_.raw(protocol::empty_query_response());
            out_.raw(protocol::ready_for_query('I'));
        } else if (type == 'S') {
            skipping_to_sync = false;
            out_.raw(protocol::ready_for_query('I'));
        } else if (type == 'H') {
            // Flush: nothing is pending.
        } else if (!skipping_to_sync) {
            skipping_to_sync = true;
            error("0A000", "the pgwicket admin console supports only the simple query protocol",
                  "Send commands as plain queries, for example with psql.");
        }
        if (!out_.bytes().empty() && !send(out_.bytes()))
            return session::kExitOk;
    }
}

} // namespace

int run_console(const ConsoleSession& s)
{
    Console c(s);
    return c.run();
}

} // namespace pgw::admin
