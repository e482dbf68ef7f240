// Turns a consistent snapshot of the session table into metric families.
// Label values are fixed words chosen here, except the pool names (entry/user/dbname),
// which go through label_value().
#include "admin/stats.hh"

#include "health/hosts.hh"
#include "pool/registry.hh"

#include "session/exit_codes.hh"

#include <algorithm>
#include <cstdio>
#include <map>
#include <utility>

namespace pgw::admin {
namespace {

using ipc::Counter;

Family family(const char* name, const char* type, const char* help)
{
    Family f;
    f.name = name;
    f.type = type;
    f.help = help;
    return f;
}

void add(Family& f, std::string labels, double v, std::string suffix = {})
{
    f.samples.push_back(Sample{std::move(labels), v});
    f.suffixes.push_back(std::move(suffix));
}

std::string number(double v)
{
    char buf[64];
    if (v == double(std::uint64_t(v)) && v < 1e18)
        std::snprintf(buf, sizeof buf, "%llu", (unsigned long long)v);
    else {
        // Fixed notation (a start time in %g would lose its seconds), trailing zeros cut.
        std::snprintf(buf, sizeof buf, "%.6f", v);
        std::string s = buf;
        while (s.back() == '0')
            s.pop_back();
        if (s.back() == '.')
            s.pop_back();
        return s;
    }
    return buf;
}

// The pools' gauges, one sample per pool name. Routes that differ only in their
// startup settings share a name (SHOW POOLS lists them apart): they are summed, and
// the longest wait is the longest of theirs, so that no series appears twice.
void add_pools(const ipc::TableHeader& h, std::vector<Family>& out)
{
    struct Totals {
        double warm = 0, active = 0, waiting = 0, longest_wait_s = 0, pool_size = 0;
        double wait_buckets[pool::kWaitBucketCount] = {}, wait_count = 0, wait_sum_s = 0;
    };
    std::map<std::string, Totals> pools;
    const std::uint32_t n = std::min(h.pool_rows.load(std::memory_order_acquire), ipc::kPoolRows);
    for (std::uint32_t i = 0; i < n; ++i) {
        const ipc::PoolRow& r = h.pools[i];
        const auto warm = r.warm.load(std::memory_order_relaxed), open = r.open.load(std::memory_order_relaxed);
        Totals& t = pools[r.route.get()];
        t.warm += warm;
        t.active += open >= warm ? open - warm : 0;
        t.waiting += r.waiting.load(std::memory_order_relaxed);
        t.longest_wait_s =
            std::max(t.longest_wait_s, double(r.longest_wait_ms.load(std::memory_order_relaxed)) / 1000.0);
        t.pool_size += r.pool_size.load(std::memory_order_relaxed);
        for (std::size_t b = 0; b < pool::kWaitBucketCount; ++b)
            t.wait_buckets[b] += double(r.wait_buckets[b].load(std::memory_order_relaxed));
        t.wait_count += double(r.wait_count.load(std::memory_order_relaxed));
        t.wait_sum_s += double(r.wait_sum_us.load(std::memory_order_relaxed)) / 1e6;
    }
    Family conns = family("pgwicket_pool_connections", "gauge",
                          "Pooled upstream connections by pool and state (warm: reset and waiting; active: in a "
                          "session or being opened).");
    Family waiting = family("pgwicket_pool_waiting_clients", "gauge", "Clients waiting for a connection of the pool.");
    Family longest = family("pgwicket_pool_longest_wait_seconds", "gauge",
                            "How long the pool's first waiting client has waited.");
    Family size = family("pgwicket_pool_size", "gauge", "The pool's pool_size.");
    Family waits = family("pgwicket_pool_wait_seconds", "histogram",
                          "How long pooled clients waited for a connection (served or refused), 0 when one was free.");
    for (const auto& [name, t] : pools) {
        const std::string pool = "pool=\"" + label_value(name) + "\"";
        add(conns, pool + ",state=\"warm\"", t.warm);
        add(conns, pool + ",state=\"active\"", t.active);
        add(waiting, pool, t.waiting);
        add(longest, pool, t.longest_wait_s);
        add(size, pool, t.pool_size);
        double cumulative = 0;
        for (std::size_t b = 0; b < pool::kWaitBucketCount; ++b) {
            cumulative += t.wait_buckets[b];
            const std::string le = b + 1 == pool::kWaitBucketCount ? "+Inf" : number(pool::kWaitBuckets[b]);
            add(waits, pool + ",le=\"" + le + "\"", cumulative, "_bucket");
        }
        add(waits, pool, t.wait_sum_s, "_sum");
        add(waits, pool, t.wait_count, "_count");
    }
    for (Family* f : {&conns, &waiting, &longest, &size, &waits})
        out.push_back(std::move(*f));
}

// The health checker's hosts: one sample per host:port.
void add_hosts(const ipc::SessionTable& t, std::vector<Family>& out)
{
    const ipc::TableHeader& h = *t.header();
    const std::vector<std::uint32_t> sessions = health::sessions_by_host(t);
    Family connected = family("pgwicket_host_sessions", "gauge",
                              "Sessions connected to the host now (their upstream or read-routing standby connection).");
    Family up = family("pgwicket_host_up", "gauge", "1 when the health checker's last check of the host succeeded.");
    Family primary = family("pgwicket_host_primary", "gauge", "1 when the host was a primary at its last check.");
    Family lag_bytes = family("pgwicket_host_replication_lag_bytes", "gauge",
                              "How far a standby's replay is behind its entry's primary, in bytes of WAL.");
    Family lag_s = family("pgwicket_host_replication_lag_seconds", "gauge",
                          "How long a standby's replay is behind what it has received.");
    Family changes = family("pgwicket_host_role_changes_total", "counter",
                            "Role changes (failovers) the health checker has seen for the host.");
    Family failures = family("pgwicket_host_check_failures_total", "counter", "Failed health checks of the host.");
    const std::uint32_t n = std::min(h.host_rows.load(std::memory_order_acquire), ipc::kHostRows);
    for (std::uint32_t i = 0; i < n; ++i) {
        const health::HostView v = health::read_host(h, i);
        if (!v.listed)
            continue;  // no longer in the configuration
        const std::string labels = "host=\"" + label_value(v.host) + "\",port=\"" + std::to_string(v.port) + "\"";
        add(up, labels, v.state == ipc::HostState::Up ? 1 : 0);
        add(primary, labels, v.role == ipc::HostRole::Primary ? 1 : 0);
        add(lag_bytes, labels, double(v.lag_bytes));
        add(lag_s, labels, double(v.lag_ms) / 1000.0);
        add(changes, labels, v.role_gen);
        add(failures, labels, double(v.failures));
        add(connected, labels, i < sessions.size() ? double(sessions[i]) : 0);
    }
    for (Family* f : {&up, &primary, &lag_bytes, &lag_s, &changes, &failures, &connected})
        out.push_back(std::move(*f));
}

// The key fetcher's families, present once it has run (signing keys fetched from the
// identity provider; none with jwt_jwks_file).
void add_jwks(const ipc::JwksStatus& j, std::vector<Family>& out)
{
    auto load = [](const auto& a) { return double(a.load(std::memory_order_relaxed)); };
    if (j.attempts.load(std::memory_order_acquire) == 0 && j.last_success_ms.load(std::memory_order_relaxed) == 0)
        return;
    Family fetches = family("pgwicket_jwks_fetches_total", "counter",
                            "Fetches of the identity provider's signing keys, by result.");
    add(fetches, "result=\"ok\"", load(j.fetched_ok));
    add(fetches, "result=\"failed\"", load(j.fetch_failed));
    out.push_back(std::move(fetches));
    Family refresh = family("pgwicket_jwks_refresh_requests_total", "counter",
                            "Early fetches asked for by logins with an unknown key id (or no keys).");
    add(refresh, "", load(j.refresh_requests));
    out.push_back(std::move(refresh));
    Family changes = family("pgwicket_jwks_key_changes_total", "counter",
                            "Fetched key sets whose key ids differ from the set before (key rotations).");
    add(changes, "", load(j.key_changes));
    out.push_back(std::move(changes));
    Family keys = family("pgwicket_jwks_keys", "gauge", "Usable signing keys in the cached set.");
    add(keys, "", load(j.keys));
    out.push_back(std::move(keys));
    Family success = family("pgwicket_jwks_last_success_time_seconds", "gauge",
                            "When the signing keys were last fetched, in seconds since the epoch.");
    add(success, "", load(j.last_success_ms) / 1000.0);
    out.push_back(std::move(success));
    Family expiry = family("pgwicket_jwks_expiry_time_seconds", "gauge",
                           "When the cached signing keys' lifetime ends, in seconds since the epoch; "
                           "jwt_jwks_max_stale later logins fail unless a fetch succeeds.");
    add(expiry, "", load(j.expires_ms) / 1000.0);
    out.push_back(std::move(expiry));
}

} // namespace

std::string label_value(std::string_view v)
{
    std::string out;
    out.reserve(v.size());
    for (size_t i = 0; i < v.size();) {
        const auto c = static_cast<unsigned char>(v[i]);
        if (c < 0x80) {
            if (c == '\\')
                out += "\\\\";
            else if (c == '"')
                out += "\\\"";
            else if (c == '\n')
                out += "\\n";
            else
                out.push_back(char(c));
            ++i;
            continue;
        }
        // The exposition format is UTF-8: a byte that starts no whole sequence (a name
        // cut at its 63rd byte, say) becomes U+FFFD rather than an unparsable scrape.
        const size_t len = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
        bool whole = len != 0 && i + len <= v.size();
        for (size_t k = 1; whole && k < len; ++k)
            whole = (static_cast<unsigned char>(v[i + k]) & 0xC0) == 0x80;
        if (whole && len == 3)  // no overlong forms, no surrogates
            whole = !(c == 0xE0 && static_cast<unsigned char>(v[i + 1]) < 0xA0) &&
                    !(c == 0xED && static_cast<unsigned char>(v[i + 1]) >= 0xA0);
        if (whole && len == 4)  // no overlong forms, nothing above U+10FFFF
            whole = !(c == 0xF0 && static_cast<unsigned char>(v[i + 1]) < 0x90) &&
                    !(c == 0xF4 && static_cast<unsigned char>(v[i + 1]) >= 0x90);
        if (whole) {
            out.append(v.substr(i, len));
            i += len;
        } else {
            out += "\xEF\xBF\xBD";
            ++i;
        }
    }
    return out;
}

std::vector<Family> collect(const ipc::SessionTable& table)
{
    const ipc::StatsSnapshot s = ipc::read_stats(table);
    const auto& sup = table.header()->supervisor;
    auto c = [&](Counter k) { return double(s.counters[k]); };
    auto load = [](const std::atomic<std::uint64_t>& a) { return double(a.load(std::memory_order_relaxed)); };
    std::vector<Family> out;

    Family start = family("pgwicket_start_time_seconds", "gauge", "When the supervisor started, in seconds since the epoch.");
    add(start, "", double(table.header()->started_ms.load(std::memory_order_relaxed)) / 1000.0);
    out.push_back(start);

    Family sessions = family("pgwicket_sessions", "gauge", "Client sessions by state.");
    const std::pair<ipc::SlotState, const char*> states[] = {
        {ipc::SlotState::Startup, "startup"},
        {ipc::SlotState::Idle, "idle"},
        {ipc::SlotState::Active, "active"},
        {ipc::SlotState::IdleInTransaction, "idle_in_transaction"},
        {ipc::SlotState::IdleInFailedTransaction, "idle_in_transaction_aborted"}};
    for (const auto& [st, label] : states)
        add(sessions, std::string("state=\"") + label + "\"", double(s.sessions_by_state[size_t(st)]));
    out.push_back(sessions);

    Family accepted = family("pgwicket_connections_accepted_total", "counter",
                             "Client connections accepted (sessions, cancel requests and refusals).");
    add(accepted, "", load(sup.accepted));
    out.push_back(accepted);

    Family refused = family("pgwicket_connections_refused_total", "counter",
                            "Client connections refused before a session started.");
    add(refused, "reason=\"max_client_conn\"", load(sup.refused_max_client_conn));
    add(refused, "reason=\"shutdown\"", load(sup.refused_shutdown));
    out.push_back(refused);

    // Families made only of worker counters: name, help, then label set and counter.
    struct Series {
        const char* labels;
        Counter counter;
    };
    struct CounterFamily {
        const char* name;
        const char* help;
        std::vector<Series> series;
    };
    const CounterFamily counter_families[] = {
        {"pgwicket_auth_failures_total",
         "Failed logins by where they failed.",
         {{"method=\"upstream\"", ipc::kAuthFailuresUpstream},
          {"method=\"admin\"", ipc::kAuthFailuresAdmin},
          {"method=\"scram-sha-256\"", ipc::kAuthFailuresScram},
          {"method=\"md5\"", ipc::kAuthFailuresMd5},
          {"method=\"jwt\"", ipc::kAuthFailuresJwt},
          {"method=\"reject\"", ipc::kAuthFailuresRejected}}},
        {"pgwicket_statements_total",
         "Statements by the class of their command tag, and statements that failed.",
         {{"class=\"read\",outcome=\"ok\"", ipc::kStatementsRead},
          {"class=\"write\",outcome=\"ok\"", ipc::kStatementsWrite},
          {"class=\"ddl\",outcome=\"ok\"", ipc::kStatementsDdl},
          {"class=\"utility\",outcome=\"ok\"", ipc::kStatementsUtility},
          {"class=\"unknown\",outcome=\"error\"", ipc::kStatementsError},
          {"class=\"unknown\",outcome=\"denied\"", ipc::kStatementsDenied}}},
        {"pgwicket_bytes_total",
         "Bytes relayed, by the side that sent them.",
         {{"direction=\"from_client\"", ipc::kBytesFromClient}, {"direction=\"from_server\"", ipc::kBytesFromServer}}},
        {"pgwicket_cancel_requests_total",
         "Cancel requests by outcome.",
         {{"outcome=\"routed\"", ipc::kCancelRouted},
          {"outcome=\"forwarded\"", ipc::kCancelForwarded},
          {"outcome=\"forward_failed\"", ipc::kCancelForwardFailed},
          {"outcome=\"not_active\"", ipc::kCancelNotActive},
          {"outcome=\"rejected\"", ipc::kCancelRejected}}},
        {"pgwicket_routed_units_total",
         "Units of statements of read_routing sessions, by the role of the host that ran them.",
         {{"role=\"primary\"", ipc::kRoutedPrimary}, {"role=\"standby\"", ipc::kRoutedStandby}}},
        {"pgwicket_upstream_connect_failures_total",
         "Upstream connections that failed or whose login the server refused.",
         {{"", ipc::kUpstreamConnectFailures}}},
    };
    for (const auto& cf : counter_families) {
        Family f = family(cf.name, "counter", cf.help);
        for (const auto& series : cf.series)
            add(f, series.labels, c(series.counter));
        out.push_back(std::move(f));
    }

    Family hist = family("pgwicket_query_duration_seconds", "histogram",
                         "Time from a client's first message to the server's ReadyForQuery.");
    double cumulative = 0;
    for (std::uint32_t b = ipc::kQueryBucketFirst; b <= ipc::kQueryBucketLast; ++b) {
        cumulative += c(Counter(b));
        std::string le = b == ipc::kQueryBucketLast
                             ? "+Inf"
                             : number(double(ipc::kQueryBucketMicros[b - ipc::kQueryBucketFirst]) / 1e6);
        add(hist, "le=\"" + le + "\"", cumulative, "_bucket");
    }
    add(hist, "", c(ipc::kQueryMicros) / 1e6, "_sum");
    add(hist, "", c(ipc::kQueries), "_count");
    out.push_back(hist);

    Family exits = family("pgwicket_worker_exits_total", "counter", "Worker processes reaped, by exit code.");
    for (int code = 0; code < 128; ++code) {
        double n = load(sup.exits_by_code[code]);
        bool named = std::string(session::exit_code_name(code)) != "unknown";
        if (n > 0 || named)
            add(exits, "code=\"" + std::to_string(code) + "\",reason=\"" + session::exit_code_name(code) + "\"", n);
    }
    add(exits, "code=\"signal\",reason=\"killed by a signal\"", load(sup.exits_by_signal));
    out.push_back(exits);

    Family reloads = family("pgwicket_reloads_total", "counter", "Configuration reloads by result.");
    add(reloads, "result=\"ok\"", load(sup.reloads));
    add(reloads, "result=\"failed\"", load(sup.reload_failures));
    out.push_back(reloads);

    add_pools(*table.header(), out);
    add_hosts(table, out);
    add_jwks(table.header()->jwks, out);
    return out;
}

std::string render_prometheus(const std::vector<Family>& families)
{
    std::string out;
    for (const auto& f : families) {
        out += "# HELP " + f.name + " " + f.help + "\n";
        out += "# TYPE " + f.name + " " + f.type + "\n";
        for (size_t i = 0; i < f.samples.size(); ++i) {
            out += f.name + f.suffixes[i];
            if (!f.samples[i].labels.empty())
                out += "{" + f.samples[i].labels + "}";
            out += " " + number(f.samples[i].value) + "\n";
        }
    }
    return out;
}

} // namespace pgw::admin
