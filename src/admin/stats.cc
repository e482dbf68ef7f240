// Turns a consistent snapshot of the session table into metric families.
// Label values are fixed words chosen here, never client text, so no escaping is needed.
#include "admin/stats.hh"

#include "session/exit_codes.hh"

#include <cstdio>
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

} // namespace

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
