// pgwicket as a Unix daemon, with real processes and real signals: SIGHUP reload (good,
// bad and restart-only changes, log reopen), SIGTERM drain, SIGINT, sd_notify messages,
// systemd socket activation, the admin console and the Prometheus endpoint.
#include "harness.hh"

#include <boost/test/unit_test.hpp>

#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

using namespace pgw::it;

namespace {

std::string tmp_path(const std::string& name) { return env().tmpdir + "/" + name; }

// Error text and SQLSTATE of a failed connection or query.
std::string sqlstate_of(const PGresult* r)
{
    const char* s = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    return s ? s : "";
}

// A config like the harness writes, for the tests that rewrite it and send SIGHUP.
std::string rewrite_config(const Proxy& p, const std::string& extra_settings, const std::string& databases)
{
    std::string ini = read_file(p.config_path());
    // Keep everything up to [databases]; swap in our settings and entries.
    size_t at = ini.find("[databases]");
    std::string head = ini.substr(0, at);
    return head + extra_settings + "\n[databases]\n" + databases;
}

void hup(const Proxy& p) { kill(p.pid(), SIGHUP); }

bool log_has(const Proxy& p, const std::string& text, size_t from = 0)
{
    std::string log = read_file(p.log_path());
    return log.size() > from && log.find(text, from) != std::string::npos;
}

std::string upstream_entry(const std::string& name)
{
    return name + " = host=127.0.0.1 port=" + std::to_string(env().pg_port) + " dbname=postgres sslmode=disable\n";
}

// A datagram socket standing in for systemd's NOTIFY_SOCKET.
class NotifySocket {
public:
    NotifySocket()
    {
        path_ = tmp_path("notify-" + std::to_string(getpid()) + ".sock");
        ::unlink(path_.c_str());
        fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        sockaddr_un sun{};
        sun.sun_family = AF_UNIX;
        std::snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path_.c_str());
        if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&sun), sizeof sun) != 0)
            throw std::runtime_error("notify socket: " + std::string(std::strerror(errno)));
        ::chmod(path_.c_str(), 0777);
    }
    ~NotifySocket()
    {
        ::close(fd_);
        ::unlink(path_.c_str());
    }
    const std::string& path() const { return path_; }
    // Every datagram received so far (each is one sd_notify call), appended to `seen`.
    void drain()
    {
        char buf[4096];
        for (;;) {
            ssize_t n = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
            if (n <= 0)
                return;
            seen.emplace_back(buf, size_t(n));
        }
    }
    // Waits until a datagram containing `text` arrives after index `from`; returns its index or -1.
    int wait_for_message(const std::string& text, size_t from = 0, int timeout_ms = 10000)
    {
        int found = -1;
        wait_for(
            [&] {
                drain();
                for (size_t i = from; i < seen.size(); ++i)
                    if (seen[i].find(text) != std::string::npos) {
                        found = int(i);
                        return true;
                    }
                return false;
            },
            timeout_ms);
        return found;
    }
    std::vector<std::string> seen;

private:
    std::string path_;
    int fd_ = -1;
};

std::string all_messages(const NotifySocket& n)
{
    std::string out;
    for (const auto& m : n.seen)
        out += "[" + m + "] ";
    return out;
}

} // namespace

BOOST_AUTO_TEST_SUITE(daemon_ops)

BOOST_AUTO_TEST_CASE(sighup_reload_applies_rejects_and_names_restart_options)
{
    ProxyOptions o;
    o.wildcard = false;
    o.extra_databases = upstream_entry("db_a");
    Proxy p("pgwicket-reload", o);
    Conn before = connect_ok(p.conninfo("db_a"));
    BOOST_TEST(scalar(before.get(), "SELECT 1") == "1");
    Conn missing = connect(p.conninfo("db_b"));
    BOOST_TEST(PQstatus(missing.get()) == CONNECTION_BAD);

    // A good change plus a restart-only one.
    size_t mark = p.log_size();
    write_file(p.config_path(), rewrite_config(p, "unix_socket_mode = 0700\nquery_timeout = 9\n",
                                               upstream_entry("db_a") + upstream_entry("db_b")));
    hup(p);
    BOOST_TEST_REQUIRE(wait_for([&] { return log_has(p, "configuration reloaded", mark); }), p.log_tail());
    BOOST_TEST(log_has(p, "unix_socket_mode changed from \"0777\" to \"0700\", but it takes effect only after a restart", mark),
               p.log_tail());
    BOOST_TEST(log_has(p, "query_timeout changed from \"0\" to \"9\"", mark), p.log_tail());
    BOOST_TEST(log_has(p, "[databases] changed", mark), p.log_tail());
    Conn b = connect_ok(p.conninfo("db_b"));
    BOOST_TEST(scalar(b.get(), "SELECT 2") == "2");
    // The session from before the reload is untouched.
    BOOST_TEST(scalar(before.get(), "SELECT 3") == "3");

    // A broken file: the running configuration stays, the error names file and line.
    mark = p.log_size();
    std::string broken = rewrite_config(p, "query_timout = 5\n", upstream_entry("db_c"));
    write_file(p.config_path(), broken);
    hup(p);
    BOOST_TEST_REQUIRE(wait_for([&] { return log_has(p, "reload failed", mark); }), p.log_tail());
    BOOST_TEST(log_has(p, p.config_path() + ":", mark), p.log_tail());
    BOOST_TEST(log_has(p, "unknown option \"query_timout\"", mark), p.log_tail());
    Conn b2 = connect_ok(p.conninfo("db_b"));
    BOOST_TEST(scalar(b2.get(), "SELECT 4") == "4");
    Conn c = connect(p.conninfo("db_c"));
    BOOST_TEST(PQstatus(c.get()) == CONNECTION_BAD);
    BOOST_TEST(p.running());
    before.reset();
    b.reset();
    b2.reset();
    check_clean_stop(p);
}

BOOST_AUTO_TEST_CASE(sighup_reopens_logfile_in_supervisor_and_sessions)
{
    const std::string logfile = tmp_path("reopen.log");
    ::unlink(logfile.c_str());
    ::unlink((logfile + ".1").c_str());
    ProxyOptions o;
    o.extra_settings = "logfile = " + logfile + "\n";
    Proxy p("pgwicket-reopen", o);
    Conn old_session = connect_ok(p.conninfo("postgres", "postgres", "application_name=before_rotation"));
    BOOST_TEST(scalar(old_session.get(), "SELECT 1") == "1");
    BOOST_TEST_REQUIRE(::rename(logfile.c_str(), (logfile + ".1").c_str()) == 0);
    hup(p);
    BOOST_TEST_REQUIRE(wait_for([&] { return contains(read_file(logfile), "configuration reloaded"); }),
                       read_file(logfile + ".1"));
    Conn fresh = connect_ok(p.conninfo());
    BOOST_TEST(scalar(fresh.get(), "SELECT 1") == "1");
    fresh.reset();
    // The session from before the rotation reopens too: its end is logged in the new file.
    BOOST_TEST(scalar(old_session.get(), "SELECT 2") == "2");
    old_session.reset();
    BOOST_TEST(wait_for([&] {
                   std::string now = read_file(logfile);
                   size_t ends = 0;
                   for (size_t at = now.find("session ended"); at != std::string::npos;
                        at = now.find("session ended", at + 1))
                       ++ends;
                   return ends >= 2;
               }),
               "new log:\n" << read_file(logfile) << "\nold log:\n" << read_file(logfile + ".1"));
    check_clean_stop(p);
}

BOOST_AUTO_TEST_CASE(sigterm_drains_refuses_new_and_keeps_cancel_working)
{
    ProxyOptions o;
    o.shutdown_timeout = 30;
    Proxy p("pgwicket-drain", o);
    Conn running = connect_ok(p.conninfo());
    Conn sleeper = connect_ok(p.conninfo());
    BOOST_TEST_REQUIRE(PQsendQuery(running.get(), "SELECT pg_sleep(1.5), 'finished'") == 1);
    BOOST_TEST_REQUIRE(PQsendQuery(sleeper.get(), "SELECT pg_sleep(60)") == 1);
    sleep_ms(300);
    kill(p.pid(), SIGTERM);
    BOOST_TEST_REQUIRE(wait_for([&] { return log_has(p, "draining 2 sessions"); }), p.log_tail());

    // New sessions are told why, with PostgreSQL's own code for it.
    Conn refused = connect(p.conninfo());
    std::string msg = PQerrorMessage(refused.get());
    BOOST_TEST(PQstatus(refused.get()) == CONNECTION_BAD);
    BOOST_TEST(contains(msg, "pgwicket is shutting down"), msg);

    // Ctrl-C still reaches a draining session.
    PGcancel* cancel = PQgetCancel(sleeper.get());
    char err[256];
    BOOST_TEST(PQcancel(cancel, err, sizeof err) == 1, err);
    PQfreeCancel(cancel);
    Result r(PQgetResult(sleeper.get()));
    BOOST_TEST(sqlstate_of(r.get()) == "57014", PQresultErrorMessage(r.get()));
    while (PGresult* rest = PQgetResult(sleeper.get()))
        PQclear(rest);
    sleeper.reset();

    // The running statement completes.
    Result done(PQgetResult(running.get()));
    BOOST_TEST(PQresultStatus(done.get()) == PGRES_TUPLES_OK, PQresultErrorMessage(done.get()));
    if (PQresultStatus(done.get()) == PGRES_TUPLES_OK)
        BOOST_TEST(std::string(PQgetvalue(done.get(), 0, 1)) == "finished");
    while (PGresult* rest = PQgetResult(running.get()))
        PQclear(rest);
    BOOST_TEST(p.running(), "pgwicket must wait for its last session");
    running.reset();
    BOOST_TEST(wait_for([&] { return !p.running(); }, 10000), p.log_tail());
    BOOST_TEST(p.stop() == "had already ended: exit 0", p.log_tail());
    BOOST_TEST(p.crash_findings().empty(), p.crash_findings());
}

BOOST_AUTO_TEST_CASE(shutdown_timeout_ends_sessions_with_57P01)
{
    ProxyOptions o;
    o.shutdown_timeout = 1;
    Proxy p("pgwicket-drain-timeout", o);
    Conn idle = connect_ok(p.conninfo());
    BOOST_TEST(scalar(idle.get(), "SELECT 1") == "1");
    const auto t0 = std::chrono::steady_clock::now();
    kill(p.pid(), SIGTERM);
    BOOST_TEST_REQUIRE(wait_for([&] { return !p.running(); }, 10000), p.log_tail());
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    BOOST_TEST(secs >= 0.9, "stopped after " << secs << " s, before shutdown_timeout");
    BOOST_TEST(log_has(p, "shutdown_timeout passed: ending 1 session"), p.log_tail());
    Result r(PQexec(idle.get(), "SELECT 1"));
    std::string msg = PQerrorMessage(idle.get());
    BOOST_TEST(contains(msg, "terminating connection due to pgwicket shutdown"), msg);
    BOOST_TEST(p.stop() == "had already ended: exit 0");
}

BOOST_AUTO_TEST_CASE(second_sigterm_and_sigint_end_sessions_at_once)
{
    for (int second : {SIGTERM, SIGINT}) {
        BOOST_TEST_CONTEXT("then " << strsignal(second))
        {
            ProxyOptions o;
            o.shutdown_timeout = 600;
            Proxy p(second == SIGTERM ? "pgwicket-term-twice" : "pgwicket-term-int", o);
            Conn busy = connect_ok(p.conninfo());
            const std::string backend = scalar(busy.get(), "SELECT pg_backend_pid()");
            BOOST_TEST_REQUIRE(PQsendQuery(busy.get(), "SELECT pg_sleep(60)") == 1);
            BOOST_TEST_REQUIRE(wait_for([&] {
                return direct_scalar("SELECT state FROM pg_stat_activity WHERE pid = " + backend) == "active";
            }));
            kill(p.pid(), SIGTERM);
            BOOST_TEST_REQUIRE(wait_for([&] { return log_has(p, "draining 1 session"); }), p.log_tail());
            const auto t0 = std::chrono::steady_clock::now();
            kill(p.pid(), second);
            BOOST_TEST(wait_for([&] { return !p.running(); }, 10000), p.log_tail());
            const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            BOOST_TEST(secs < 5, "took " << secs << " s");
            Result r(PQgetResult(busy.get()));
            std::string msg = PQerrorMessage(busy.get());
            BOOST_TEST(sqlstate_of(r.get()) == "57P01", msg);
            BOOST_TEST(contains(msg, "pgwicket shutdown"), msg);
            // The query it was running is cancelled, not left to run its 60 s on a
            // backend nobody reads.
            BOOST_TEST(wait_for([&] { return !backend_alive(backend); }), "backend " << backend << " lives on");
            BOOST_TEST(log_has(p, "cancelling the upstream query after shutdown"), p.log_tail());
            BOOST_TEST(p.stop() == "had already ended: exit 0");
        }
    }
    // SIGINT alone is a fast shutdown.
    Proxy p("pgwicket-int", ProxyOptions{});
    Conn idle = connect_ok(p.conninfo());
    BOOST_TEST(scalar(idle.get(), "SELECT 1") == "1");
    kill(p.pid(), SIGINT);
    BOOST_TEST(wait_for([&] { return !p.running(); }, 5000), p.log_tail());
    Result r(PQexec(idle.get(), "SELECT 1"));
    BOOST_TEST(contains(PQerrorMessage(idle.get()), "pgwicket shutdown"), PQerrorMessage(idle.get()));
}

BOOST_AUTO_TEST_CASE(sd_notify_ready_status_reload_watchdog_stopping)
{
    NotifySocket n;
    ProxyOptions o;
    o.env = {{"NOTIFY_SOCKET", n.path()}, {"WATCHDOG_USEC", "200000"}};
    Proxy p("pgwicket-notify", o);
    int ready = n.wait_for_message("READY=1");
    BOOST_TEST_REQUIRE(ready >= 0, all_messages(n));
    BOOST_TEST(contains(n.seen[size_t(ready)], "MAINPID=" + std::to_string(p.pid())), all_messages(n));
    BOOST_TEST(n.wait_for_message("STATUS=0 sessions") >= 0, all_messages(n));
    // WatchdogSec/2: several pings in a second.
    int first_ping = n.wait_for_message("WATCHDOG=1");
    BOOST_TEST(first_ping >= 0, all_messages(n));
    BOOST_TEST(n.wait_for_message("WATCHDOG=1", size_t(first_ping + 1), 2000) > first_ping, all_messages(n));

    Conn c = connect_ok(p.conninfo());
    BOOST_TEST(scalar(c.get(), "SELECT 1") == "1");
    BOOST_TEST(n.wait_for_message("STATUS=1 session (0 starting, 0 active, 1 idle", 0, 5000) >= 0, all_messages(n));

    n.drain();
    size_t mark = n.seen.size();
    hup(p);
    int reloading = n.wait_for_message("RELOADING=1", mark);
    BOOST_TEST_REQUIRE(reloading >= 0, all_messages(n));
    BOOST_TEST(contains(n.seen[size_t(reloading)], "MONOTONIC_USEC="), all_messages(n));
    int reready = n.wait_for_message("READY=1", size_t(reloading + 1));
    BOOST_TEST(reready > reloading, all_messages(n));
    // The status no longer says "reloading".
    BOOST_TEST(n.wait_for_message("STATUS=1 session", size_t(reloading + 1)) > reloading, all_messages(n));

    c.reset();
    n.drain();
    mark = n.seen.size();
    kill(p.pid(), SIGTERM);
    BOOST_TEST(n.wait_for_message("STOPPING=1", mark) >= 0, all_messages(n));
    BOOST_TEST(wait_for([&] { return !p.running(); }), p.log_tail());
    BOOST_TEST(p.stop() == "had already ended: exit 0");
}

BOOST_AUTO_TEST_CASE(systemd_socket_activation_tcp_unix_and_metrics)
{
    // systemd-socket-activate binds the sockets, then runs pgwicket with LISTEN_FDS,
    // as systemd does for a .socket unit.
    const int port = free_port();
    const int metrics_port = free_port();
    const std::string sockdir = tmp_path("activated");
    ::mkdir(sockdir.c_str(), 0755);
    const std::string unix_path = sockdir + "/.s.PGSQL." + std::to_string(port);
    ::unlink(unix_path.c_str());
    ProxyOptions o;
    // The config's listen_addr and listen_port name the same TCP socket, which pgwicket
    // could not bind a second time; its unix_socket_dir must stay empty.
    o.port = port;
    o.launcher = {"systemd-socket-activate",
                  "-l", "127.0.0.1:" + std::to_string(port),
                  "-l", unix_path,
                  "-l", "127.0.0.1:" + std::to_string(metrics_port),
                  "--fdname=pgwicket:pgwicket:metrics"};
    Proxy p("pgwicket-activated", o);
    BOOST_TEST_REQUIRE(wait_for([&] { return log_has(p, "socket(s) passed by systemd"); }), p.log_tail());
    BOOST_TEST(log_has(p, "listen_addr, listen_port and unix_socket_dir are ignored"), p.log_tail());

    Conn tcp = connect_ok(p.conninfo());
    BOOST_TEST(scalar(tcp.get(), "SELECT 'tcp'") == "tcp");
    Conn local = connect_ok("host=" + sockdir + " port=" + std::to_string(port) + " dbname=postgres user=postgres");
    BOOST_TEST(scalar(local.get(), "SELECT 'unix'") == "unix");
    struct stat st {};
    BOOST_TEST(::stat((p.unix_dir() + "/.s.PGSQL." + std::to_string(port)).c_str(), &st) != 0);

    RunResult m = http_get("http://127.0.0.1:" + std::to_string(metrics_port) + "/metrics");
    BOOST_TEST(m.ok(), m.status() << m.out);
    BOOST_TEST(contains(m.out, "HTTP 200"), m.out);
    BOOST_TEST(contains(m.out, "pgwicket_sessions{state=\"idle\"} 2"), excerpt(m.out));
    tcp.reset();
    local.reset();
    check_clean_stop(p);
    // systemd's socket is not ours to remove.
    BOOST_TEST(::stat(unix_path.c_str(), &st) == 0);
}

// syslog(3) writes datagrams to /dev/log. On a machine without a syslog daemon (CI's
// containers) and as root, the test binds its own socket there for the test's length.
BOOST_AUTO_TEST_CASE(syslog_sink)
{
    struct stat st {};
    if (geteuid() != 0 || ::lstat("/dev/log", &st) == 0) {
        BOOST_TEST_MESSAGE("syslog_sink: skipped (needs root and no /dev/log to stand in for syslogd)");
        return;
    }
    int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    std::snprintf(sun.sun_path, sizeof sun.sun_path, "/dev/log");
    BOOST_TEST_REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&sun), sizeof sun) == 0, std::strerror(errno));
    struct Cleanup {
        int fd;
        ~Cleanup()
        {
            ::close(fd);
            ::unlink("/dev/log");
        }
    } cleanup{fd};
    ProxyOptions o;
    o.extra_settings = "syslog = 1\nsyslog_ident = pgw-it\nsyslog_facility = local3\n";
    Proxy p("pgwicket-syslog", o);
    Conn c = connect_ok(p.conninfo());
    BOOST_TEST(scalar(c.get(), "SELECT 1") == "1");
    c.reset();
    std::string got;
    BOOST_TEST(wait_for([&] {
                   char buf[2048];
                   ssize_t n;
                   while ((n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT)) > 0)
                       got += std::string(buf, size_t(n)) + "\n";
                   return contains(got, "session ended");
               }),
               got);
    // <PRI> = facility local3 (19) * 8 + info (6) = 158; the ident and the worker's pid.
    BOOST_TEST(contains(got, "<158>"), got);
    BOOST_TEST(contains(got, "pgw-it["), got);
    BOOST_TEST(contains(got, "ready:"), got);
    // Nothing of it went to stderr (the harness's log file) instead.
    BOOST_TEST(!contains(read_file(p.log_path()), "session ended"), p.log_tail());
    check_clean_stop(p);
}

BOOST_AUTO_TEST_CASE(a_burst_at_max_client_conn_under_a_low_open_file_limit)
{
    // Started with a soft limit of 256 open files, the supervisor raises it to the hard
    // limit (and says so), or it could not hold a channel to each of the 300 workers of a
    // burst of 300 sessions, all started at once: max_client_conn exactly, none refused
    // (the listen backlog holds them while the supervisor forks). The 301st gets 53300.
    // Admin console sessions: no upstream backend needed.
    constexpr int kBurst = 300;
    rlimit rl{};
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_max < rlim_t(3 * kBurst) || access("/usr/bin/prlimit", X_OK) != 0) {
        BOOST_TEST_MESSAGE("skipped: needs /usr/bin/prlimit and a hard limit of " << 3 * kBurst << " open files");
        return;
    }
    if (rl.rlim_cur < rlim_t(3 * kBurst)) {  // we hold a descriptor per connection too
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    ProxyOptions o;
    o.max_client_conn = kBurst;
    o.extra_settings = "admin_users = postgres\n";
    o.launcher = {"/usr/bin/prlimit", "--nofile=256:" + std::to_string(std::min<rlim_t>(rl.rlim_max, 65536)), "--"};
    Proxy p("pgwicket-burst", o);
    BOOST_TEST(log_has(p, "raised the limit on open files (RLIMIT_NOFILE) from 256 to the hard limit"),
               p.log_tail());

    const std::string conninfo = p.conninfo("pgwicket", "postgres");
    std::vector<Conn> conns;
    for (int i = 0; i < kBurst; ++i)
        conns.emplace_back(PQconnectStart(conninfo.c_str()));
    std::vector<PostgresPollingStatusType> want(kBurst, PGRES_POLLING_WRITING);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    int pending = kBurst;
    while (pending > 0 && std::chrono::steady_clock::now() < deadline) {
        std::vector<pollfd> fds;
        std::vector<int> which;
        for (int i = 0; i < kBurst; ++i)
            if (want[i] == PGRES_POLLING_READING || want[i] == PGRES_POLLING_WRITING) {
                fds.push_back({PQsocket(conns[i].get()), short(want[i] == PGRES_POLLING_READING ? POLLIN : POLLOUT), 0});
                which.push_back(i);
            }
        if (::poll(fds.data(), fds.size(), 1000) <= 0)
            continue;
        for (size_t k = 0; k < fds.size(); ++k)
            if (fds[k].revents) {
                want[which[k]] = PQconnectPoll(conns[which[k]].get());
                pending -= want[which[k]] == PGRES_POLLING_OK || want[which[k]] == PGRES_POLLING_FAILED;
            }
    }
    int ok = 0;
    std::string first_error;
    for (const auto& c : conns) {
        ok += PQstatus(c.get()) == CONNECTION_OK;
        if (PQstatus(c.get()) != CONNECTION_OK && first_error.empty())
            first_error = PQerrorMessage(c.get());
    }
    BOOST_TEST(ok == kBurst, ok << " of " << kBurst << " connected; first error: " << first_error << p.log_tail());
    Conn extra = connect(conninfo);
    BOOST_TEST(contains(PQerrorMessage(extra.get()), "too many clients"), PQerrorMessage(extra.get()));
    conns.clear();
    check_clean_stop(p);
}

BOOST_AUTO_TEST_CASE(pidfile_written_and_removed)
{
    const std::string pidfile = tmp_path("pgwicket-pidfile.pid");
    ProxyOptions o;
    o.extra_settings = "pidfile = " + pidfile + "\n";
    Proxy p("pgwicket-pidfile", o);
    BOOST_TEST(read_file(pidfile) == std::to_string(p.pid()) + "\n");
    check_clean_stop(p);
    struct stat st {};
    BOOST_TEST(::stat(pidfile.c_str(), &st) != 0, "pidfile left behind");
}

BOOST_AUTO_TEST_SUITE_END()
