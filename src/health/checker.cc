// One poll loop over one non-blocking libpq connection per host, kept across checks and
// made again after a failure; every step bounded by server_connect_timeout.
#include "health/checker.hh"

#include "common/log.hh"
#include "health/hosts.hh"
#include "upstream/connect.hh"

#include <libpq-fe.h>
#include <poll.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace pgw::health {
namespace {

using Clock = std::chrono::steady_clock;
using Params = std::vector<std::pair<std::string, std::string>>;

// Role, position (the primary's current WAL position, a standby's replay position, as
// bytes from 0/0), and a standby's replay delay behind what it has received.
constexpr const char* kCheckQuery =
    "SELECT pg_catalog.pg_is_in_recovery(), "
    "(CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn() "
    "ELSE pg_catalog.pg_current_wal_lsn() END) OPERATOR(pg_catalog.-) '0/0'::pg_catalog.pg_lsn, "
    "CASE WHEN NOT pg_catalog.pg_is_in_recovery() OR pg_catalog.pg_last_wal_receive_lsn() IS NOT DISTINCT FROM "
    "pg_catalog.pg_last_wal_replay_lsn() THEN 0 ELSE "
    "COALESCE(pg_catalog.round(pg_catalog.date_part('epoch', pg_catalog.now() OPERATOR(pg_catalog.-) "
    "pg_catalog.pg_last_xact_replay_timestamp()) OPERATOR(pg_catalog.*) 1000), 0) END";

std::int64_t realtime_ms()
{
    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    return std::int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

unsigned port_number(const HostAddress& a) { return unsigned(std::strtoul(a.port.c_str(), nullptr, 10)); }

bool checked_entry(const Params& p)
{
    if (hosts_of(p).size() > 1)
        return true;
    for (const auto& [k, v] : p)
        if (k == "target_session_attrs" && v != "any")
            return true;
    return false;
}

Params parse(const std::string& conninfo)
{
    Params p;
    char* err = nullptr;
    PQconninfoOption* opts = PQconninfoParse(conninfo.c_str(), &err);
    PQfreemem(err);
    if (!opts)
        return p;
    for (PQconninfoOption* o = opts; o->keyword; ++o)
        if (o->val && *o->val)
            p.emplace_back(o->keyword, o->val);
    PQconninfoFree(opts);
    return p;
}

std::string first_line(const char* s)
{
    std::string t = s ? s : "";
    if (auto nl = t.find('\n'); nl != std::string::npos)
        t.resize(nl);
    return t;
}

struct Probe {
    std::uint32_t row = 0;
    int group = 0;          // the entry it was first found in (its cluster, for lag)
    std::string label;      // host:port
    Params params;          // libpq parameters for this host alone
    PGconn* conn = nullptr;
    enum class Step { Idle, Connecting, Querying } step = Step::Idle;
    PostgresPollingStatusType want = PGRES_POLLING_WRITING;
    Clock::time_point deadline{}, next{};
    HostView view;
    std::uint64_t position = 0;  // bytes, see kCheckQuery
    bool answered = false;       // at least once since start

    ~Probe()
    {
        if (conn)
            PQfinish(conn);
    }
};

class Checker {
public:
    Checker(const config::Config& cfg, ipc::TableHeader& h) : cfg_(cfg), h_(h) {}

    void add_targets()
    {
        int group = 0;
        for (const auto& entry : cfg_.databases) {
            Params p = parse(entry.conninfo);
            if (!checked_entry(p))
                continue;
            ++group;
            for (const HostAddress& a : hosts_of(p)) {
                const unsigned port = port_number(a);
                if (std::any_of(probes_.begin(), probes_.end(),
                                [&](const auto& q) { return q->view.host == a.host && q->view.port == port; }))
                    continue;
                const int row = claim_host(h_, a.host, port);
                if (row < 0) {
                    log_warning("more than %u upstream hosts to check; %s:%u is not checked", ipc::kHostRows,
                                a.host.c_str(), port);
                    continue;
                }
                auto probe = std::make_unique<Probe>();
                probe->row = std::uint32_t(row);
                probe->group = group;
                probe->label = a.host + ":" + a.port;
                probe->view = read_host(h_, probe->row);  // a restarted checker goes on from here
                for (const auto& [k, v] : p) {
                    if (k == "host" || k == "hostaddr" || k == "port" || k == "target_session_attrs" ||
                        k == "load_balance_hosts" || k == "application_name" || k == "options")
                        continue;
                    probe->params.emplace_back(k, v);
                }
                probe->params.emplace_back("host", a.host);
                if (!a.hostaddr.empty())
                    probe->params.emplace_back("hostaddr", a.hostaddr);
                probe->params.emplace_back("port", a.port);
                probe->params.emplace_back("application_name", cfg_.application_name_prefix + " health check");
                if (std::none_of(p.begin(), p.end(), [](const auto& kv) { return kv.first == "dbname"; }))
                    probe->params.emplace_back("dbname", "postgres");
                probes_.push_back(std::move(probe));
            }
        }
    }

    int run()
    {
        log_info("checking %zu upstream host%s every %ld s", probes_.size(), probes_.size() == 1 ? "" : "s",
                 cfg_.server_check_period);
        for (;;) {
            const auto now = Clock::now();
            for (auto& p : probes_)
                if (p->step == Probe::Step::Idle && now >= p->next)
                    begin(*p, now);
            std::vector<pollfd> fds;
            std::vector<Probe*> polled;
            auto wake = now + std::chrono::seconds(cfg_.server_check_period);
            for (auto& p : probes_) {
                if (p->step == Probe::Step::Idle) {
                    wake = std::min(wake, p->next);
                    continue;
                }
                wake = std::min(wake, p->deadline);
                short events = p->step == Probe::Step::Connecting && p->want == PGRES_POLLING_WRITING ? POLLOUT : POLLIN;
                if (p->step == Probe::Step::Querying && PQflush(p->conn) == 1)
                    events |= POLLOUT;
                fds.push_back({PQsocket(p->conn), events, 0});
                polled.push_back(p.get());
            }
            const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(wake - Clock::now()).count();
            int n = ::poll(fds.data(), fds.size(), int(std::clamp<long long>(ms + 1, 0, 60000)));
            if (n < 0 && errno != EINTR) {
                log_error("poll: %s", std::strerror(errno));
                return 1;
            }
            const auto after = Clock::now();
            for (size_t i = 0; i < polled.size(); ++i) {
                Probe& p = *polled[i];
                if (fds[i].revents)
                    advance(p, after);
                else if (after >= p.deadline)
                    fail(p, "no answer within server_connect_timeout (" + std::to_string(cfg_.server_connect_timeout) +
                                " s)",
                         after);
            }
        }
    }

private:
    void begin(Probe& p, Clock::time_point now)
    {
        p.deadline = now + std::chrono::seconds(cfg_.server_connect_timeout);
        if (p.conn && PQstatus(p.conn) == CONNECTION_OK) {
            send_check(p, now);
            return;
        }
        if (p.conn)
            PQfinish(p.conn);
        std::vector<const char*> keys, values;
        for (const auto& [k, v] : p.params) {
            keys.push_back(k.c_str());
            values.push_back(v.c_str());
        }
        keys.push_back(nullptr);
        values.push_back(nullptr);
        p.conn = PQconnectStartParams(keys.data(), values.data(), 0);
        if (!p.conn || PQstatus(p.conn) == CONNECTION_BAD) {
            fail(p, p.conn ? first_line(PQerrorMessage(p.conn)) : "out of memory", now);
            return;
        }
        p.step = Probe::Step::Connecting;
        p.want = PGRES_POLLING_WRITING;
    }

    void send_check(Probe& p, Clock::time_point now)
    {
        PQsetnonblocking(p.conn, 1);
        if (!PQsendQuery(p.conn, kCheckQuery)) {
            fail(p, first_line(PQerrorMessage(p.conn)), now);
            return;
        }
        p.step = Probe::Step::Querying;
    }

    void advance(Probe& p, Clock::time_point now)
    {
        if (p.step == Probe::Step::Connecting) {
            {
                // A hostile host can keep libpq in one step for minutes (2^31 SCRAM
                // iterations): the checker then ends and is restarted (with backoff).
                upstream::PollWatchdog watchdog(now + std::chrono::seconds(cfg_.server_connect_timeout + 2));
                p.want = PQconnectPoll(p.conn);
            }
            if (p.want == PGRES_POLLING_FAILED)
                fail(p, first_line(PQerrorMessage(p.conn)), now);
            else if (p.want == PGRES_POLLING_OK)
                send_check(p, now);
            return;
        }
        if (PQflush(p.conn) < 0 || !PQconsumeInput(p.conn)) {
            fail(p, first_line(PQerrorMessage(p.conn)), now);
            return;
        }
        std::string error;
        bool got = false;
        bool in_recovery = false;
        std::uint64_t position = 0;
        std::int64_t lag_ms = 0;
        while (!PQisBusy(p.conn)) {
            PGresult* r = PQgetResult(p.conn);
            if (!r)
                break;
            if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) {
                got = true;
                in_recovery = std::string(PQgetvalue(r, 0, 0)) == "t";
                position = std::strtoull(PQgetvalue(r, 0, 1), nullptr, 10);
                lag_ms = std::strtoll(PQgetvalue(r, 0, 2), nullptr, 10);
            } else if (PQresultStatus(r) != PGRES_TUPLES_OK) {
                error = first_line(PQresultErrorMessage(r));
            }
            PQclear(r);
        }
        if (PQisBusy(p.conn))
            return;  // more to come
        if (!got) {
            fail(p, error.empty() ? "the check query returned nothing" : error, now);
            return;
        }
        answered(p, in_recovery ? ipc::HostRole::Standby : ipc::HostRole::Primary, position, lag_ms, now);
    }

    void answered(Probe& p, ipc::HostRole role, std::uint64_t position, std::int64_t lag_ms, Clock::time_point now)
    {
        p.step = Probe::Step::Idle;
        p.next = now + std::chrono::seconds(cfg_.server_check_period);
        HostView v = p.view;
        if (v.state != ipc::HostState::Up || v.role != role) {
            if (v.role != ipc::HostRole::Unknown && v.role != role) {
                ++v.role_gen;
                log_warning("upstream host %s is now a %s (was a %s)", p.label.c_str(), role_name(role),
                            role_name(v.role));
            } else if (v.state == ipc::HostState::Down) {
                log_info("upstream host %s is up again (%s)", p.label.c_str(), role_name(role));
            } else if (!p.answered) {
                log_info("upstream host %s is up (%s)", p.label.c_str(), role_name(role));
            }
        }
        p.answered = true;
        v.state = ipc::HostState::Up;
        v.role = role;
        v.lag_ms = role == ipc::HostRole::Standby ? lag_ms : 0;
        v.checked_ms = realtime_ms();
        ++v.checks;
        v.error.clear();
        p.position = position;
        p.view = v;
        update_lag(p.group);
    }

    // A standby's byte lag: how far its replay position is behind its entry's primary
    // (as last checked; so within one period's writes of the truth).
    void update_lag(int group)
    {
        std::uint64_t primary = 0;
        for (auto& q : probes_)
            if (q->group == group && q->view.state == ipc::HostState::Up && q->view.role == ipc::HostRole::Primary)
                primary = std::max(primary, q->position);
        for (auto& q : probes_) {
            if (q->group != group)
                continue;
            if (q->view.role == ipc::HostRole::Standby)
                q->view.lag_bytes = primary > q->position ? primary - q->position : 0;
            else
                q->view.lag_bytes = 0;
            write_host(h_, q->row, q->view);
        }
    }

    void fail(Probe& p, const std::string& why_in, Clock::time_point now)
    {
        // libpq says 'connection to server at "h" (a), port p failed: <why>': the row
        // names the host already, and SHOW HOSTS keeps 63 bytes of it.
        std::string why = why_in;
        if (auto at = why.rfind("failed: "); at != std::string::npos && why.rfind("connection to server", 0) == 0)
            why = why.substr(at + 8);
        if (p.conn) {
            PQfinish(p.conn);
            p.conn = nullptr;
        }
        p.step = Probe::Step::Idle;
        p.next = now + std::chrono::seconds(cfg_.server_check_period);
        if (p.view.state != ipc::HostState::Down)
            log_warning("upstream host %s is down: %s", p.label.c_str(), why.c_str());
        p.view.state = ipc::HostState::Down;
        p.view.error = why;
        p.view.checked_ms = realtime_ms();
        ++p.view.checks;
        ++p.view.failures;
        write_host(h_, p.row, p.view);
        update_lag(p.group);
    }

    const config::Config& cfg_;
    ipc::TableHeader& h_;
    std::vector<std::unique_ptr<Probe>> probes_;
};

} // namespace

std::vector<std::pair<std::string, unsigned>> checked_hosts(const config::Config& cfg)
{
    std::vector<std::pair<std::string, unsigned>> out;
    for (const auto& entry : cfg.databases) {
        Params p = parse(entry.conninfo);
        if (!checked_entry(p))
            continue;
        for (const HostAddress& a : hosts_of(p)) {
            std::pair<std::string, unsigned> key{a.host, port_number(a)};
            if (std::find(out.begin(), out.end(), key) == out.end())
                out.push_back(std::move(key));
        }
    }
    return out;
}

bool checker_wanted(const config::Config& cfg)
{
    return std::any_of(cfg.databases.begin(), cfg.databases.end(),
                       [](const config::DatabaseEntry& e) { return checked_entry(parse(e.conninfo)); });
}

int checker_main(const config::Config& cfg, const ipc::SessionTable& table)
{
    ipc::TableHeader& h = *table.header();
    h.checker_pid.store(int(getpid()), std::memory_order_relaxed);
    Checker c(cfg, h);
    c.add_targets();
    return c.run();
}

} // namespace pgw::health
