// The replica cluster behind cluster.hh: initdb (once per run), pg_basebackup and pg_ctl for a
// primary and its standbys, run as the server user, and the LSN polling the replica tests wait on.
#include "cluster.hh"

#include <boost/test/unit_test.hpp>

#include <pwd.h>
#include <signal.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>

namespace fs = std::filesystem;

namespace pgw::it {

namespace {

void must(const RunResult& r, const std::string& what)
{
    if (!r.ok())
        throw std::runtime_error(what + " failed (" + r.status() + "):\n" + tail(r.out, 30));
}

// The tests' libpq conninfo quotes nothing: keep names to what needs no quoting anywhere
// (file names, slot names, SQL identifiers).
bool plain_name(const std::string& s)
{
    if (s.empty() || s.size() > 40)
        return false;
    for (char c : s)
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    return true;
}

// The settings every node starts from. Standbys inherit them through pg_basebackup and get
// their own port appended after. wal_retrieve_retry_interval and wal_receiver_status_interval
// are short so a standby reconnects and reports (pg_stat_replication) within a second, which
// failover and health-check tests wait on.
std::string base_conf(const std::string& socket_dir, int port)
{
    std::ostringstream c;
    c << "\n# pgwicket integration tests: replica cluster\n"
      << "port = " << port << "\n"
      << "listen_addresses = '127.0.0.1'\n"
      << "unix_socket_directories = '" << socket_dir << "'\n"
      << "shared_buffers = 16MB\nmax_connections = 50\n"
      << "wal_level = replica\nmax_wal_senders = 10\nmax_replication_slots = 10\n"
      << "hot_standby = on\n"
      << "wal_receiver_status_interval = 1s\nwal_retrieve_retry_interval = 1s\n"
      << "min_wal_size = 32MB\nmax_wal_size = 256MB\n"
      // synchronous_commit stays on (cheap without fsync): a commit that returned is in the
      // WAL the walsender may send, so wait_replayed() after a write sees that write.
      << "fsync = off\nfull_page_writes = off\n"
      << "log_statement = all\n"
      << "log_line_prefix = '%m [%p] %q%u@%d %a '\n";
    return c.str();
}

const char* kHba = "# pgwicket integration tests: replica cluster\n"
                   "local   all          all                 trust\n"
                   "host    all          all   127.0.0.1/32  trust\n"
                   "local   replication  all                 trust\n"
                   "host    replication  all   127.0.0.1/32  trust\n";

// initdb takes half of a cluster's start (2 s of 4 on a small machine): the first cluster of
// the run makes an empty one, every cluster copies it. Removed at the end of the run even
// when the harness keeps the folder, as it is of no use for inspection.
std::string g_template;

const std::string& initdb_template()
{
    if (!g_template.empty())
        return g_template;
    Env& e = env();
    std::string dir = e.tmpdir + "/replica-initdb-template";
    RunResult r = run(as_server_user({e.bin("initdb"), "-D", dir, "--auth=trust", "-U", "postgres",
                                      "--no-locale", "-E", "UTF8", "--no-sync"}),
                      {.input = "", .env = client_env(), .timeout_s = 120, .pty = false});
    if (!r.ok()) {
        std::error_code ec;
        fs::remove_all(dir, ec);  // so the next cluster tries again
        must(r, "initdb");
    }
    g_template = dir;
    return g_template;
}

struct TemplateCleanup {
    void setup() {}
    void teardown()
    {
        std::error_code ec;
        if (!g_template.empty())
            fs::remove_all(g_template, ec);
        g_template.clear();
    }
};

}  // namespace

BOOST_TEST_GLOBAL_FIXTURE(TemplateCleanup);

void ReplicaCluster::FailureSeen::assertion_result(boost::unit_test::assertion_result ar)
{
    if (ar == boost::unit_test::AR_FAILED)
        failed = true;
}
void ReplicaCluster::FailureSeen::exception_caught(boost::execution_exception const&)
{
    failed = true;
}
void ReplicaCluster::FailureSeen::test_unit_aborted(boost::unit_test::test_unit const&)
{
    failed = true;
}

ReplicaCluster::ReplicaCluster(const std::string& name, int standbys, const std::string& extra_conf)
    : name_(name), uncaught_at_start_(std::uncaught_exceptions())
{
    if (!plain_name(name))
        throw std::invalid_argument("replica cluster name must be [a-z0-9_-]{1,40}: " + name);
    if (standbys < 0 || standbys > 8)
        throw std::invalid_argument("replica cluster: 0 to 8 standbys");
    auto started_at = std::chrono::steady_clock::now();
    Env& e = env();
    dir_ = e.tmpdir + "/" + name;
    // The folder is the server user's, so initdb, pg_basebackup and pg_ctl's -l can write in it.
    if (::mkdir(dir_.c_str(), 0755) != 0)
        throw std::runtime_error("mkdir " + dir_ + ": " + strerror(errno));
    ::chmod(dir_.c_str(), 0755);
    if (geteuid() == 0) {
        passwd* pw = getpwnam("postgres");
        if (!pw || ::chown(dir_.c_str(), pw->pw_uid, pw->pw_gid) != 0) {
            std::error_code ec;
            fs::remove_all(dir_, ec);
            throw std::runtime_error("cannot hand " + dir_ + " to the postgres user");
        }
    }
    for (int n = 0; n <= standbys; ++n) {
        Node node;
        node.port = free_port();
        node.datadir = dir_ + "/node" + std::to_string(n);
        node.log = dir_ + "/node" + std::to_string(n) + ".log";
        nodes_.push_back(node);
    }
    boost::unit_test::framework::register_observer(observer_);
    try {
        must(run(as_server_user({"cp", "-a", initdb_template(), nodes_[0].datadir})),
             "copying the initdb template");
        // The files exist (the server user's); rewriting keeps their owner and mode.
        write_file(nodes_[0].datadir + "/pg_hba.conf", kHba);
        append_conf(0, base_conf(dir_, nodes_[0].port) + extra_conf + "\n");
        pg_ctl_start(0);
        for (int n = 1; n <= standbys; ++n) {
            // -C -S: a slot per standby, so the primary keeps what a stopped one still needs.
            must(run(as_server_user({e.bin("pg_basebackup"), "-h", "127.0.0.1", "-p",
                                     std::to_string(nodes_[0].port), "-U", "postgres", "-D",
                                     nodes_[n].datadir, "-R", "-X", "stream", "-C", "-S",
                                     "standby" + std::to_string(n), "--checkpoint=fast",
                                     "--no-sync"}),
                     {.input = "", .env = client_env(), .timeout_s = 120, .pty = false}),
                 "pg_basebackup of node " + std::to_string(n));
            append_conf(n, "port = " + std::to_string(nodes_[n].port) + "\n");
            pg_ctl_start(n);
        }
        // A table made after the backups proves replay, not just the copied files.
        exec(0, "CREATE TABLE pgw_cluster_ready (n int)");
        wait_streaming(standbys, 60000);
        for (int n = 1; n <= standbys; ++n) {
            wait_replayed(n);
            if (scalar(n, "SELECT count(*) FROM pgw_cluster_ready") != "0")
                throw std::runtime_error("node " + std::to_string(n) + " replayed, but oddly");
        }
    } catch (const std::exception& ex) {
        std::ostringstream why;
        why << "replica cluster " << name << " did not start: " << ex.what();
        for (int n = 0; n < size(); ++n)
            if (fs::exists(nodes_[n].log))
                why << "\n---- " << nodes_[n].log << " ----\n"
                    << tail(read_file(nodes_[n].log), 15);
        shut_down_all();
        remove_files(true);
        boost::unit_test::framework::deregister_observer(observer_);
        throw std::runtime_error(why.str());
    }
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                  std::chrono::steady_clock::now() - started_at)
                  .count();
    BOOST_TEST_MESSAGE("replica cluster " << name << ": ports " << ports()
                                          << " (primary first), ready in " << ms << " ms");
}

ReplicaCluster::~ReplicaCluster()
{
    bool failed = observer_.failed || std::uncaught_exceptions() > uncaught_at_start_;
    boost::unit_test::framework::deregister_observer(observer_);
    try {
        shut_down_all();
        remove_files(failed);
    } catch (const std::exception& ex) {
        std::cerr << "replica cluster " << name_ << ": teardown: " << ex.what() << "\n";
    }
}

const ReplicaCluster::Node& ReplicaCluster::node(int n) const
{
    if (n < 0 || n >= size())
        throw std::out_of_range("replica cluster " + name_ + " has no node " + std::to_string(n));
    return nodes_[static_cast<size_t>(n)];
}

int ReplicaCluster::port(int n) const { return node(n).port; }
std::string ReplicaCluster::datadir(int n) const { return node(n).datadir; }
std::string ReplicaCluster::log_path(int n) const { return node(n).log; }
std::string ReplicaCluster::log_tail(int n, size_t lines) const
{
    return tail(read_file(node(n).log), lines);
}

std::string ReplicaCluster::conninfo(int n, const std::string& db, const std::string& extra) const
{
    return "host=127.0.0.1 port=" + std::to_string(port(n)) + " dbname=" + db +
           " user=postgres sslmode=disable connect_timeout=10 " + extra;
}

std::string ReplicaCluster::scalar(int n, const std::string& sql, const std::string& db) const
{
    Conn c = connect_ok(conninfo(n, db));
    return pgw::it::scalar(c.get(), sql);
}

void ReplicaCluster::exec(int n, const std::string& sql, const std::string& db) const
{
    (void)scalar(n, sql, db);
}

void ReplicaCluster::append_conf(int n, const std::string& lines) const
{
    std::ofstream conf(node(n).datadir + "/postgresql.conf", std::ios::app);
    conf << lines;
    conf.close();
    if (!conf)
        throw std::runtime_error("cannot append to " + node(n).datadir + "/postgresql.conf");
}

void ReplicaCluster::pg_ctl_start(int n)
{
    const Node& nd = node(n);
    RunResult r = run(as_server_user(
        {env().bin("pg_ctl"), "-D", nd.datadir, "-l", nd.log, "-w", "-t", "60", "start"}));
    if (!r.ok())
        throw std::runtime_error("pg_ctl start of node " + std::to_string(n) + " failed (" +
                                 r.status() + "):\n" + tail(r.out, 10) + "\n---- log ----\n" +
                                 log_tail(n, 20));
}

void ReplicaCluster::start(int n) { pg_ctl_start(n); }

void ReplicaCluster::stop(int n, const char* mode)
{
    const Node& nd = node(n);
    RunResult r = run(as_server_user(
        {env().bin("pg_ctl"), "-D", nd.datadir, "-m", mode, "-w", "-t", "60", "stop"}));
    if (!r.ok())
        throw std::runtime_error("pg_ctl stop -m " + std::string(mode) + " of node " +
                                 std::to_string(n) + " failed (" + r.status() + "):\n" +
                                 tail(r.out, 10) + "\n---- log ----\n" + log_tail(n, 20));
}

pid_t ReplicaCluster::postmaster_pid(int n) const
{
    std::istringstream in(read_file(node(n).datadir + "/postmaster.pid"));
    long pid = -1;
    if (!(in >> pid) || pid <= 0)
        return -1;
    return static_cast<pid_t>(pid);
}

bool ReplicaCluster::running(int n) const
{
    pid_t pid = postmaster_pid(n);
    return pid > 0 && process_alive(pid);
}

void ReplicaCluster::kill9(int n)
{
    pid_t pm = postmaster_pid(n);
    if (pm <= 0 || !process_alive(pm))
        throw std::runtime_error("kill9: node " + std::to_string(n) + " is not running");
    // Stopped, the postmaster cannot fork while its children are listed; killed first, it
    // cannot start crash recovery when they die.
    ::kill(pm, SIGSTOP);
    std::vector<pid_t> children = children_of(pm);
    ::kill(pm, SIGKILL);
    for (pid_t c : children)
        ::kill(c, SIGKILL);
    children.push_back(pm);
    auto all_dead = [&] {
        for (pid_t p : children)
            if (process_alive(p))
                return false;
        return true;
    };
    if (!wait_for(all_dead, 10000))
        throw std::runtime_error("kill9: processes of node " + std::to_string(n) +
                                 " still alive after SIGKILL");
    // Dead but not yet reaped by init (which can take a second or more here, and forever in a
    // container whose init never reaps), the old postmaster still answers kill(pid, 0), and
    // the next one refuses to start ("lock file already exists"). A host that crashed would
    // have no such process, nor its System V segment (which the next postmaster would remove,
    // but a node never started again would leak): all go.
    std::istringstream lock(read_file(node(n).datadir + "/postmaster.pid"));
    std::string line;
    for (int i = 1; i <= 7 && std::getline(lock, line); ++i) {
        unsigned long key = 0, shmid = 0;
        shmid_ds ds{};
        if (i == 7 && std::istringstream(line) >> key >> shmid &&
            ::shmctl(static_cast<int>(shmid), IPC_STAT, &ds) == 0 && ds.shm_nattch == 0)
            ::shmctl(static_cast<int>(shmid), IPC_RMID, nullptr);
    }
    std::error_code ec;
    fs::remove(node(n).datadir + "/postmaster.pid", ec);
    fs::remove(dir_ + "/.s.PGSQL." + std::to_string(node(n).port) + ".lock", ec);
}

void ReplicaCluster::promote(int n)
{
    const Node& nd = node(n);
    RunResult r =
        run(as_server_user({env().bin("pg_ctl"), "-D", nd.datadir, "-w", "-t", "60", "promote"}));
    if (!r.ok())
        throw std::runtime_error("pg_ctl promote of node " + std::to_string(n) + " failed (" +
                                 r.status() + "):\n" + tail(r.out, 10) + "\n---- log ----\n" +
                                 log_tail(n, 20));
    if (in_recovery(n))
        throw std::runtime_error("node " + std::to_string(n) + " still in recovery after promote");
    primary_ = n;
}

bool ReplicaCluster::in_recovery(int n) const
{
    return scalar(n, "SELECT pg_is_in_recovery()") == "t";
}

void ReplicaCluster::pause_replay(int n)
{
    exec(n, "SELECT pg_wal_replay_pause()");
    // The request is only a request: replay stops at its next record.
    if (!wait_for([&] { return scalar(n, "SELECT pg_get_wal_replay_pause_state()") == "paused"; },
                  30000))
        throw std::runtime_error("node " + std::to_string(n) + " did not pause replay");
}

void ReplicaCluster::resume_replay(int n)
{
    exec(n, "SELECT pg_wal_replay_resume()");
    if (!wait_for(
            [&] { return scalar(n, "SELECT pg_get_wal_replay_pause_state()") == "not paused"; },
            30000))
        throw std::runtime_error("node " + std::to_string(n) + " did not resume replay");
}

std::string ReplicaCluster::current_lsn() const
{
    // The flush position, not the insert position: only what is flushed is streamed, and a
    // standby may never reach an insert position that lies past a page header.
    return scalar(primary_, "SELECT pg_current_wal_flush_lsn()");
}

void ReplicaCluster::wait_replayed(int n, int timeout_ms)
{
    std::string target = current_lsn();
    std::string sql = "SELECT pg_last_wal_replay_lsn() >= '" + target + "'::pg_lsn";
    bool done = wait_for(
        [&] {
            try {
                return scalar(n, sql) == "t";
            } catch (const std::runtime_error&) {
                return false;  // restarting: keep polling
            }
        },
        timeout_ms);
    if (done)
        return;
    std::string where;
    try {
        where = scalar(n, "SELECT format('received %s, replayed %s, replay %s', "
                          "pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn(), "
                          "pg_get_wal_replay_pause_state())");
    } catch (const std::exception& ex) {
        where = ex.what();
    }
    throw std::runtime_error("node " + std::to_string(n) + " did not replay up to " + target +
                             " within " + std::to_string(timeout_ms) + " ms: " + where +
                             "\n---- log ----\n" + log_tail(n, 20));
}

long long ReplicaCluster::lag_bytes(int n) const
{
    std::string target = current_lsn();
    std::string lag = scalar(n, "SELECT pg_wal_lsn_diff('" + target +
                                    "'::pg_lsn, coalesce(pg_last_wal_replay_lsn(), '0/0'))");
    return std::stoll(lag);
}

std::string ReplicaCluster::write_wal(int megabytes, int n)
{
    if (n < 0)
        n = primary_;
    Conn c = connect_ok(conninfo(n));
    pgw::it::scalar(c.get(), "CREATE TABLE IF NOT EXISTS pgw_wal_filler (id bigserial, pad text)");
    std::string start = pgw::it::scalar(c.get(), "SELECT pg_current_wal_lsn()");
    const long long want = static_cast<long long>(megabytes) << 20;
    // ~1 MiB of WAL per insert: 1000 uncompressed (below the TOAST threshold) 1 kB rows.
    for (;;) {
        pgw::it::scalar(c.get(), "INSERT INTO pgw_wal_filler (pad) "
                                 "SELECT repeat(md5(g::text), 32) FROM generate_series(1, 1000) g");
        std::string done = pgw::it::scalar(
            c.get(), "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '" + start + "')");
        if (std::stoll(done) >= want)
            break;
    }
    return pgw::it::scalar(c.get(), "SELECT pg_current_wal_lsn()");
}

std::string ReplicaCluster::hosts() const
{
    std::string out;
    for (int n = 0; n < size(); ++n)
        out += (n ? "," : "") + std::string("127.0.0.1");
    return out;
}

std::string ReplicaCluster::ports() const
{
    std::string out;
    for (int n = 0; n < size(); ++n)
        out += (n ? "," : "") + std::to_string(nodes_[static_cast<size_t>(n)].port);
    return out;
}

void ReplicaCluster::wait_streaming(int standbys, int timeout_ms)
{
    std::string sql = "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'";
    if (!wait_for([&] { return scalar(0, sql) == std::to_string(standbys); }, timeout_ms))
        throw std::runtime_error("the primary sees " + scalar(0, sql) + " of " +
                                 std::to_string(standbys) + " standbys streaming");
}

void ReplicaCluster::shut_down_all()
{
    // Standbys first, so none logs the primary going away; immediate, as nothing is kept.
    for (int n = size() - 1; n >= 0; --n) {
        if (!running(n))
            continue;
        try {
            stop(n, "immediate");
        } catch (const std::exception& ex) {
            std::cerr << "replica cluster " << name_ << ": " << ex.what() << "\n";
            if (running(n))
                kill9(n);
        }
    }
}

void ReplicaCluster::remove_files(bool keep_logs)
{
    std::error_code ec;
    if (!keep_logs) {
        fs::remove_all(dir_, ec);
        return;
    }
    // As the harness does: logs are the evidence, the data folders only fill /tmp.
    for (const Node& nd : nodes_)
        fs::remove_all(nd.datadir, ec);
    std::cerr << "replica cluster " << name_ << ": kept the logs in " << dir_ << "\n";
}

}  // namespace pgw::it
