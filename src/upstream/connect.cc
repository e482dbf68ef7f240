// Building libpq parameters from the [databases] entry and the client's startup
// packet, and a non-blocking connect bounded by server_connect_timeout.
#include "upstream/connect.hh"

#include <poll.h>
#include <signal.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <set>

namespace pgw::upstream {

void put(Params& p, const std::string& key, const std::string& value)
{
    for (auto& [k, v] : p)
        if (k == key) {
            v = value;
            return;
        }
    p.emplace_back(key, value);
}

const std::string* get(const Params& p, const std::string& key)
{
    for (const auto& [k, v] : p)
        if (k == key)
            return &v;
    return nullptr;
}

namespace {

std::string first_line(std::string s)
{
    while (!s.empty() && (s.back() == '\n' || s.back() == ' '))
        s.pop_back();
    for (auto& ch : s)
        if (ch == '\n' || ch == '\t')
            ch = ' ';
    return s;
}

// Where a connection attempt stood when it timed out, for the message.
const char* stage_name(ConnStatusType st)
{
    switch (st) {
    case CONNECTION_STARTED:
        return "waiting for the TCP connection";
    case CONNECTION_MADE:
        return "sending the startup packet";
    case CONNECTION_SSL_STARTUP:
        return "in the TLS handshake";
    case CONNECTION_AWAITING_RESPONSE:
        return "waiting for the server's answer to the login";
    case CONNECTION_AUTH_OK:
        return "waiting for the server to finish starting the session";
    default:
        return "while connecting";
    }
}

} // namespace

std::string escape_option_value(const std::string& v)
{
    std::string out;
    for (char ch : v) {
        if (ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\\')
            out.push_back('\\');
        out.push_back(ch);
    }
    return out;
}

std::string application_name_base(const std::string& app_prefix, const ClientInfo& client)
{
    // The audit identity travels in application_name, so the server's own logs and
    // pg_stat_activity name the person: "<prefix> <identity>@<address> <client's name>".
    std::string app = app_prefix;
    if (!app.empty())
        app += " ";
    if (!client.identity.empty())
        app += client.identity + "@";
    return app + client.host;
}

Result<Params> build_params(const config::DatabaseEntry& entry, const ClientInfo& client,
                            const std::string& app_prefix)
{
    char* err = nullptr;
    PQconninfoOption* opts = PQconninfoParse(entry.conninfo.c_str(), &err);
    if (!opts) {
        std::string msg = err ? first_line(err) : "out of memory";
        PQfreemem(err);
        return Error{"invalid connection string for database \"" + entry.name + "\": " + msg};
    }
    Params p;
    for (PQconninfoOption* o = opts; o->keyword; ++o)
        if (o->val && *o->val)
            p.emplace_back(o->keyword, o->val);
    PQconninfoFree(opts);

    if (!get(p, "dbname"))
        put(p, "dbname", client.database);
    if (!client.role.empty())
        put(p, "user", client.role);
    else if (!get(p, "user"))
        put(p, "user", client.user);

    std::string app = application_name_base(app_prefix, client);
    std::string options = get(p, "options") ? *get(p, "options") : std::string();

    // Startup parameters that libpq has a keyword for go there; every other one is
    // a GUC the server accepts as -c name=value in `options`, exactly as if sent.
    static const std::set<std::string> handled = {"user", "database", "replication"};
    if (client.startup) {
        for (const auto& [name, value] : client.startup->params) {
            if (handled.count(name))
                continue;
            if (name == "application_name") {
                if (!value.empty())
                    app += " " + value;
            } else if (name == "client_encoding") {
                put(p, "client_encoding", value);
            } else if (name == "options") {
                if (!value.empty())
                    options += (options.empty() ? "" : " ") + value;
            } else {
                options += (options.empty() ? "" : " ") + std::string("-c ") +
                           escape_option_value(name + "=" + value);
            }
        }
    }
    put(p, "application_name", app);
    // After the client's own: the policy's settings win.
    for (const auto& [name, value] : client.settings)
        options += (options.empty() ? "" : " ") + std::string("-c ") + escape_option_value(name + "=" + value);
    if (!options.empty())
        put(p, "options", options);
    // The relay reads and writes libpq's socket itself, which it can only do on a
    // plain or TLS stream: GSSAPI encryption must stay off.
    put(p, "gssencmode", "disable");
    // read_routing: the session's own connection is the primary's (its reads go to a
    // standby connection of its own), and a pooled route is keyed on that; sessions and
    // min_pool_size prefills must agree.
    if (entry.replicas.read_routing)
        put(p, "target_session_attrs", "primary");
    return p;
}

std::string describe(const Params& params)
{
    std::string out;
    for (const char* key : {"service", "host", "hostaddr", "port", "dbname", "user"}) {
        const std::string* v = get(params, key);
        if (!v)
            continue;
        if (!out.empty())
            out += " ";
        out += std::string(key) + "=" + *v;
    }
    return out;
}

bool parse_server_error(const std::string& text, std::string& sqlstate, std::string& message)
{
    // libpq writes "<severity>:  <SQLSTATE>: <message>" per server error when the
    // verbosity is VERBOSE; the last such line is the one that ended the attempt.
    bool found = false;
    size_t pos = 0;
    while (pos < text.size()) {
        size_t eol = text.find('\n', pos);
        std::string line = text.substr(pos, eol == std::string::npos ? std::string::npos : eol - pos);
        pos = eol == std::string::npos ? text.size() : eol + 1;
        for (const char* sev : {"FATAL:  ", "ERROR:  ", "PANIC:  "}) {
            size_t at = line.find(sev);
            if (at == std::string::npos)
                continue;
            std::string rest = line.substr(at + std::strlen(sev));
            if (rest.size() > 7 && rest[5] == ':' && rest[6] == ' ') {
                sqlstate = rest.substr(0, 5);
                message = rest.substr(7);
                found = true;
            }
            break;
        }
    }
    return found;
}

namespace {

// The watchdog's last words, read by its signal handler (write(2) and _exit are safe there).
std::vector<std::byte> g_last_words;
volatile std::sig_atomic_t g_last_words_fd = -1;
volatile std::sig_atomic_t g_watchdog_exit = 1;

extern "C" void watchdog_fired(int)
{
    if (g_last_words_fd >= 0 && !g_last_words.empty()) {
        ssize_t n = ::write(g_last_words_fd, g_last_words.data(), g_last_words.size());
        (void)n;
    }
    _exit(g_watchdog_exit);
}

} // namespace

void set_watchdog_last_words(int fd, std::vector<std::byte> words, int exit_code)
{
    g_last_words_fd = -1;  // not used half-written
    g_last_words = std::move(words);
    g_watchdog_exit = exit_code;
    g_last_words_fd = fd;
}

PollWatchdog::PollWatchdog(net::Clock::time_point deadline)
{
    struct ::sigaction sa {};
    sa.sa_handler = watchdog_fired;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGALRM, &sa, &old_);
    const long us = std::max<long>(1000, long(std::chrono::duration_cast<std::chrono::microseconds>(
                                                  deadline - net::Clock::now())
                                                  .count()));
    itimerval t{};
    t.it_value.tv_sec = us / 1000000;
    t.it_value.tv_usec = us % 1000000;
    ::setitimer(ITIMER_REAL, &t, nullptr);
}

PollWatchdog::~PollWatchdog()
{
    itimerval off{};
    ::setitimer(ITIMER_REAL, &off, nullptr);
    ::sigaction(SIGALRM, &old_, nullptr);
}

bool host_refused(const ConnectFailure& f)
{
    // libpq's own words for a certificate check it made ("certificate verify failed",
    // "server certificate for ... does not match host name", "could not read root
    // certificate file"): the entry's trust, not the host's health.
    return f.server_sqlstate.empty() && f.message.find("certificate") == std::string::npos;
}

Result<PgConnPtr> connect(const Params& params, net::Clock::time_point deadline,
                          ConnectFailure* failure)
{
    // Our own deadline is looked at between libpq's steps; this one ends a step that
    // never returns.
    PollWatchdog watchdog(deadline + std::chrono::seconds(2));
    auto fail = [failure](PGconn* c, std::string text) -> Result<PgConnPtr> {
        std::string raw = c ? std::string(PQerrorMessage(c)) : text;
        if (c)
            text = first_line(raw);
        failure->server_sqlstate.clear();
        failure->message = text;
        std::string code, msg;
        if (c && parse_server_error(raw, code, msg)) {
            failure->server_sqlstate = code;
            failure->message = msg;
        }
        return Error{failure->message};
    };
    std::vector<const char*> keys, values;
    for (const auto& [k, v] : params) {
        keys.push_back(k.c_str());
        values.push_back(v.c_str());
    }
    keys.push_back(nullptr);
    values.push_back(nullptr);

    PgConnPtr conn(PQconnectStartParams(keys.data(), values.data(), 0));
    if (!conn)
        return fail(nullptr, "out of memory");
    if (PQstatus(conn.get()) == CONNECTION_BAD)
        return fail(conn.get(), "");
    // VERBOSE makes libpq keep the server's SQLSTATE in a failed login's message.
    PQsetErrorVerbosity(conn.get(), PQERRORS_VERBOSE);

    PostgresPollingStatusType st = PGRES_POLLING_WRITING;
    for (;;) {
        if (st == PGRES_POLLING_OK)
            return conn;
        if (st == PGRES_POLLING_FAILED)
            return fail(conn.get(), "");
        int ms = net::ms_until(deadline);
        if (ms == 0)
            return fail(nullptr, std::string("timed out (server_connect_timeout) ") + stage_name(PQstatus(conn.get())));
        pollfd pfd{PQsocket(conn.get()), short(st == PGRES_POLLING_READING ? POLLIN : POLLOUT), 0};
        int pr = ::poll(&pfd, 1, ms);
        if (pr < 0 && errno != EINTR)
            return fail(nullptr, std::string("poll: ") + std::strerror(errno));
        if (pr == 0)
            continue;  // the deadline check above reports it
        st = PQconnectPoll(conn.get());
    }
}

const std::vector<const char*>& reported_parameters()
{
    static const std::vector<const char*> names = {
        "application_name", "client_encoding", "DateStyle", "default_transaction_read_only",
        "in_hot_standby", "integer_datetimes", "IntervalStyle", "is_superuser",
        "scram_iterations", "search_path", "server_encoding", "server_version",
        "session_authorization", "standard_conforming_strings", "TimeZone"};
    return names;
}

} // namespace pgw::upstream
