// Scale-out behind a load balancer: three pgwicket instances (peers of each other) behind
// HAProxy in TCP mode, and the contrib configurations for HAProxy and Kubernetes.
#include "harness.hh"

#include <boost/test/unit_test.hpp>

#include <signal.h>
#include <unistd.h>

#include <array>
#include <memory>
#include <optional>
#include <string>
#include <vector>

using namespace pgw::it;

namespace {

constexpr const char* kHaproxy = "/usr/sbin/haproxy";

bool have_haproxy()
{
    if (::access(kHaproxy, X_OK) == 0)
        return true;
    BOOST_TEST_MESSAGE("skipped: " << kHaproxy << " is missing (apt-get install haproxy; contrib/install-deps.sh "
                                                  "installs it)");
    return false;
}

std::string contrib(const std::string& path) { return env().top_srcdir + "/contrib/" + path; }

// Three instances, peer_id 1 to 3, each listing the other two in [peers], each with a
// metrics endpoint for HAProxy's health check.
struct Trio {
    static constexpr int kSize = 3;
    std::array<int, kSize> port{}, metrics_port{};
    std::vector<std::unique_ptr<Proxy>> proxy;

    Trio()
    {
        for (int i = 0; i < kSize; ++i) {
            port[i] = free_port();
            metrics_port[i] = free_port();
        }
        for (int i = 0; i < kSize; ++i) {
            ProxyOptions o;
            o.port = port[i];
            // Long enough for the drained instance's session to finish in its own time.
            o.shutdown_timeout = 60;
            o.extra_settings = "peer_id = " + std::to_string(i + 1) + "\nmetrics_listen = 127.0.0.1:" +
                               std::to_string(metrics_port[i]) + "\n";
            o.extra_sections = "[peers]\n";
            for (int j = 0; j < kSize; ++j)
                if (j != i)
                    o.extra_sections += std::to_string(j + 1) + " = host=127.0.0.1 port=" + std::to_string(port[j]) + "\n";
            proxy.push_back(std::make_unique<Proxy>("pgwicket-lb-" + std::to_string(i + 1), o));
        }
    }

    std::string metrics(int i, const std::string& path = "/metrics") const
    {
        return http_get("http://127.0.0.1:" + std::to_string(metrics_port[i]) + path).out;
    }
    // A counter summed over the three instances.
    double sum(const std::string& series) const
    {
        double total = 0;
        for (int i = 0; i < kSize; ++i)
            total += metric(metrics(i), series);
        return total;
    }
    // The instance whose worker holds this session's upstream connection, or -1.
    int instance_of(PGconn* c) const
    {
        const unsigned upstream_port = unsigned(std::stoul(scalar(c, "SELECT inet_client_port()")));
        for (int i = 0; i < kSize; ++i)
            if (child_with_socket(proxy[i]->pid(), upstream_port, unsigned(env().pg_port)) > 0)
                return i;
        return -1;
    }
};

// HAProxy as the contrib example sets it up (round robin, /healthz on the metrics port),
// with quick checks so the test need not wait seconds for a state change.
class Haproxy {
public:
    explicit Haproxy(const Trio& t) : port_(free_port())
    {
        const std::string dir = env().tmpdir;
        std::string cfg = "global\n    maxconn 512\n"
                          "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 5m\n"
                          "    timeout server 5m\n    timeout check 2s\n"
                          "frontend postgres\n    bind 127.0.0.1:" +
                          std::to_string(port_) +
                          "\n    default_backend pgwicket\n"
                          "backend pgwicket\n    balance roundrobin\n    option httpchk GET /healthz\n"
                          "    http-check expect status 200\n    default-server inter 250ms fall 1 rise 1\n";
        for (int i = 0; i < Trio::kSize; ++i)
            cfg += "    server pgwicket" + std::to_string(i + 1) + " 127.0.0.1:" + std::to_string(t.port[i]) +
                   " check port " + std::to_string(t.metrics_port[i]) + "\n";
        write_file(dir + "/haproxy-lb.cfg", cfg);
        log_path_ = dir + "/haproxy-lb.log";
        // -db: stay in the foreground, state changes ("Server pgwicket/pgwicket1 is DOWN") on stderr.
        process_.emplace(std::vector<std::string>{kHaproxy, "-db", "-f", dir + "/haproxy-lb.cfg"}, log_path_);
        if (!wait_for([&] { return !process_->running() || tcp_accepts(port_); }, 10000) || !process_->running())
            throw std::runtime_error("haproxy did not start:\n" + process_->log_tail());
    }
    int port() const { return port_; }
    std::string log() const { return read_file(log_path_); }
    std::string conninfo(const std::string& db = "postgres", const std::string& extra = "") const
    {
        return "host=127.0.0.1 port=" + std::to_string(port_) + " dbname=" + db + " user=postgres sslmode=disable " +
               "application_name=" + kAppName + " " + extra;
    }

private:
    int port_;
    std::string log_path_;
    std::optional<Daemon> process_;
};

// Waits until the query of `c` is running on the server (the pid in the session's cancel key
// is the backend's own).
bool wait_running(PGconn* c)
{
    const std::string pid = std::to_string(PQbackendPID(c));
    return wait_for([&] { return direct_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = " + pid +
                                               " AND state = 'active' AND wait_event = 'PgSleep'") == "1"; },
                    30000);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(load_balancer)

// What an operator deploys: contrib/haproxy (HAProxy's own check, and each instance's
// config) and contrib/kubernetes (every document parses, the pieces name each other, and
// each pod's rendered pgwicket.ini passes --check-config).
BOOST_AUTO_TEST_CASE(contrib_configurations_are_valid)
{
    for (int i = 1; i <= 3; ++i) {
        RunResult r = run({env().pgwicket_bin, "--check-config", "-c", contrib("haproxy/pgwicket-" + std::to_string(i) + ".ini")});
        BOOST_TEST(r.ok(), r.status() << "\n" << r.out);
    }
    if (have_haproxy()) {
        RunResult r = run({kHaproxy, "-c", "-f", contrib("haproxy/haproxy.cfg")});
        BOOST_TEST(r.ok(), r.status() << "\n" << r.out);
    }
    RunResult k = run({"/usr/bin/python3", contrib("kubernetes/check-manifests.py"), env().pgwicket_bin});
    BOOST_TEST(k.ok(), k.status() << "\n" << k.out);
    BOOST_TEST(contains(k.out, "pod 2: peer_id 3, 2 peers: configuration is valid"), k.out);
}

BOOST_AUTO_TEST_CASE(three_instances_behind_haproxy)
{
    if (!have_haproxy())
        return;
    Trio t;
    for (int i = 0; i < Trio::kSize; ++i) {
        const std::string h = t.metrics(i, "/healthz");
        BOOST_TEST(contains(h, "HTTP 200"), h);
    }
    Haproxy lb(t);

    // pgbench through HAProxy: six clients, spread over the three instances.
    direct_exec("DROP DATABASE IF EXISTS lbbench WITH (FORCE)");
    direct_exec("CREATE DATABASE lbbench");
    RunOptions ro;
    ro.env = client_env({{"PGSSLMODE", "disable"}});
    RunResult init = run({env().bin("pgbench"), "-i", "-s", "1", "-q", env().direct("lbbench")}, ro);
    BOOST_TEST_REQUIRE(init.ok(), init.status() << "\n" << excerpt(init.out));
    RunResult bench = run({env().bin("pgbench"), "-c", "6", "-j", "2", "-t", "50", "-S", lb.conninfo("lbbench")}, ro);
    BOOST_TEST(bench.ok(), bench.status() << "\n" << excerpt(bench.out));
    BOOST_TEST(contains(bench.out, "number of transactions actually processed: 300/300"), excerpt(bench.out));
    for (int i = 0; i < Trio::kSize; ++i)
        BOOST_TEST(metric(t.metrics(i), "pgwicket_connections_accepted_total") >= 1, "instance " << i + 1);

    // Cancels through HAProxy: libpq's CancelRequest is a new connection, which HAProxy may
    // send to another instance than the session's; that one forwards it to its peers. Go on
    // until two have crossed over (round robin makes that the usual case); every cancel must work.
    const double routed_before = t.sum("pgwicket_cancel_requests_total{outcome=\"routed\"}");
    int cancels = 0, across = 0;
    while (cancels < 8 && across < 2) {
        Conn c = connect_ok(lb.conninfo());
        const int home = t.instance_of(c.get());
        BOOST_TEST_REQUIRE(home >= 0, "session on no instance");
        const double routed_home = metric(t.metrics(home), "pgwicket_cancel_requests_total{outcome=\"routed\"}");
        std::array<double, Trio::kSize> accepted{};
        for (int i = 0; i < Trio::kSize; ++i)
            accepted[i] = metric(t.metrics(i), "pgwicket_connections_accepted_total");
        BOOST_TEST_REQUIRE(PQsendQuery(c.get(), "SELECT pg_sleep(60)") == 1);
        BOOST_TEST_REQUIRE(wait_running(c.get()));
        PGcancel* pc = PQgetCancel(c.get());
        char err[256] = "";
        BOOST_TEST(PQcancel(pc, err, sizeof err) == 1, err);
        PQfreeCancel(pc);
        std::string state;
        while (PGresult* r = PQgetResult(c.get())) {
            if (const char* code = PQresultErrorField(r, PG_DIAG_SQLSTATE))
                state = code;
            PQclear(r);
        }
        BOOST_TEST(state == "57014", "cancel " << cancels + 1 << " (session on instance " << home + 1
                                                << ") did not cancel: " << PQerrorMessage(c.get()));
        ++cancels;
        // The supervisor counts a connection when it accepts it, so by the time PQcancel has
        // its answer, the instance HAProxy chose has counted the request. Only a forward
        // reaches the others.
        bool crossed = false;
        for (int i = 0; i < Trio::kSize; ++i)
            crossed |= i != home && metric(t.metrics(i), "pgwicket_connections_accepted_total") > accepted[i];
        across += crossed ? 1 : 0;
        std::string body;
        BOOST_TEST(wait_for([&] {
                       body = t.metrics(home);
                       return metric(body, "pgwicket_cancel_requests_total{outcome=\"routed\"}") == routed_home + 1;
                   },
                   30000),
                   "the session's instance did not route the cancel\n" << excerpt(body));
    }
    BOOST_TEST_MESSAGE("load_balancer: " << cancels << " cancels through HAProxy, " << across
                                         << " of them landed on another instance than their session; all cancelled");
    BOOST_TEST(across >= 1, "no cancel landed on another instance than its session in " << cancels);

    // The three instances' counters summed: every cancel routed once in the group, every
    // pgbench statement counted once (finished sessions fold in when their workers are reaped).
    BOOST_TEST(wait_for([&] {
                   return t.sum("pgwicket_cancel_requests_total{outcome=\"routed\"}") == routed_before + cancels &&
                          t.sum("pgwicket_statements_total{class=\"read\",outcome=\"ok\"}") >= 300;
               },
               30000),
               "routed " << t.sum("pgwicket_cancel_requests_total{outcome=\"routed\"}") - routed_before << " of "
                         << cancels << ", reads " << t.sum("pgwicket_statements_total{class=\"read\",outcome=\"ok\"}"));
    BOOST_TEST(t.sum("pgwicket_cancel_requests_total{outcome=\"forwarded\"}") >= across);
    BOOST_TEST_MESSAGE("load_balancer: summed over 3 instances: "
                       << t.sum("pgwicket_connections_accepted_total") << " connections accepted, "
                       << t.sum("pgwicket_statements_total{class=\"read\",outcome=\"ok\"}") << " reads, "
                       << t.sum("pgwicket_cancel_requests_total{outcome=\"forwarded\"}") << " cancels forwarded");

    // Drain instance 1: its /healthz says 503, HAProxy takes it out of rotation, and its
    // session runs on to the end while new sessions go to the other two.
    Conn stays;
    for (int tries = 0; tries < 6 && !stays; ++tries) {
        Conn c = connect_ok(lb.conninfo());
        if (t.instance_of(c.get()) == 0)
            stays = std::move(c);
    }
    BOOST_TEST_REQUIRE(bool(stays), "no session reached instance 1 in six tries");
    BOOST_TEST_REQUIRE(::kill(t.proxy[0]->pid(), SIGTERM) == 0);
    BOOST_TEST(wait_for([&] { return contains(t.metrics(0, "/healthz"), "HTTP 503"); }, 30000), t.metrics(0, "/healthz"));
    BOOST_TEST_REQUIRE(wait_for([&] { return contains(lb.log(), "pgwicket1 is DOWN"); }, 30000), tail(lb.log(), 10));
    const double accepted_draining = metric(t.metrics(0), "pgwicket_connections_accepted_total");
    for (int i = 0; i < 6; ++i) {
        Conn c = connect_ok(lb.conninfo());
        BOOST_TEST(t.instance_of(c.get()) != 0);
    }
    BOOST_TEST(metric(t.metrics(0), "pgwicket_connections_accepted_total") == accepted_draining,
               "HAProxy still sent sessions to the draining instance");
    BOOST_TEST(scalar(stays.get(), "SELECT 'still here'") == "still here");
    BOOST_TEST(t.proxy[0]->running(), "the drain did not wait for its session");
    stays.reset();
    BOOST_TEST(wait_for([&] { return !t.proxy[0]->running(); }, 30000), t.proxy[0]->log_tail());
    BOOST_TEST(t.proxy[0]->stop() == "had already ended: exit 0", t.proxy[0]->log_tail());

    BOOST_TEST(t.proxy[0]->crash_findings().empty(), t.proxy[0]->crash_findings());
    for (int i = 1; i < Trio::kSize; ++i)
        check_clean_stop(*t.proxy[i]);
}

BOOST_AUTO_TEST_SUITE_END()
