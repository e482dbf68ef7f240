// A PostgreSQL 15 primary with streaming standbys for the replica tests (issue 12): made in the
// test folder on free ports by one test (or a suite's fixture), stopped when it goes away.
#pragma once

#include "harness.hh"

#include <boost/test/tree/observer.hpp>

#include <sys/types.h>

#include <string>
#include <vector>

namespace pgw::it {

// Node 0 is the primary as created, nodes 1..N its standbys (pg_basebackup -R -X stream, each
// with its own replication slot, so a stopped or paused standby never misses WAL). All nodes
// listen on 127.0.0.1 and have their sockets in folder(), trust every local connection
// (replication included), and run as the server user (postgres when the tests run as root).
// Small by design: shared_buffers 16MB, max_connections 50, fsync off. The first cluster of a
// run runs initdb, the later ones copy its result, so every primary of a run has the same
// system identifier.
//
// Every member that talks to a node throws std::runtime_error (with the node's log tail where
// it helps) when the node does not do what was asked: a test needs no checks of its own for
// the fixture's steps.
//
// For a suite: struct F : ReplicaCluster { F() : ReplicaCluster("mysuite") {} }; with
// BOOST_FIXTURE_TEST_SUITE makes one per test case; as a suite-level decorator
// (boost::unit_test::fixture<F>()), one for the whole suite.
class ReplicaCluster {
public:
    // Creates `name` (a plain file name) in env().tmpdir and starts the primary and `standbys`
    // standbys; returns once every standby streams and has replayed the primary's WAL
    // (including an empty table pgw_cluster_ready, made to prove it, in database postgres).
    // `extra_conf` is appended to every node's postgresql.conf (later lines win).
    explicit ReplicaCluster(const std::string& name, int standbys = 2,
                            const std::string& extra_conf = "");
    // Stops every node (-m immediate). Removes the folder, or, when an assertion failed while
    // the cluster lived or an exception is passing, keeps the logs and says where.
    ~ReplicaCluster();
    ReplicaCluster(const ReplicaCluster&) = delete;
    ReplicaCluster& operator=(const ReplicaCluster&) = delete;

    int size() const { return static_cast<int>(nodes_.size()); }
    // The node that was promoted last, 0 until then.
    int primary() const { return primary_; }
    int port(int node) const;
    const std::string& folder() const { return dir_; }
    std::string datadir(int node) const;
    std::string log_path(int node) const;
    std::string log_tail(int node, size_t lines = 40) const;

    // Direct libpq connection string: TCP, user postgres, TLS off, connect_timeout=10.
    std::string conninfo(int node, const std::string& db = "postgres",
                         const std::string& extra = "") const;
    // First value of the first row over a fresh direct connection ("" for none or NULL).
    std::string scalar(int node, const std::string& sql, const std::string& db = "postgres") const;
    void exec(int node, const std::string& sql, const std::string& db = "postgres") const;

    // pg_ctl -w stop -m mode ("smart", "fast", "immediate").
    void stop(int node, const char* mode = "fast");
    // pg_ctl -w start; a standby is back when it accepts connections, not when it streams.
    void start(int node);
    // SIGKILL to the postmaster and to every process it had, as a crash of the host would:
    // connections drop at once and start() works right after (no orphan holds the shared
    // memory). The node replays its WAL on the next start.
    void kill9(int node);
    // True when the node's postmaster is running.
    bool running(int node) const;
    // Postmaster pid from postmaster.pid, or -1.
    pid_t postmaster_pid(int node) const;

    // pg_ctl promote -w; the node is then the primary() for wait_replayed, lag_bytes and
    // write_wal's default. The other standbys still follow the old primary.
    void promote(int node);
    // pg_wal_replay_pause() / _resume(); both wait until the standby says it is so.
    void pause_replay(int node);
    void resume_replay(int node);
    bool in_recovery(int node) const;

    // pg_current_wal_flush_lsn() of the primary(), e.g. "0/3000148": with synchronous_commit
    // on (the default here; do not turn it off in extra_conf) every returned commit is below.
    std::string current_lsn() const;
    // Polls until the standby has replayed the primary's current_lsn() (taken once, at the
    // call), so it sees every commit made before; throws with the standby's receive/replay
    // positions after timeout_ms.
    void wait_replayed(int node, int timeout_ms = 60000);
    // Bytes of the primary's current WAL the standby has not replayed yet.
    long long lag_bytes(int node) const;
    // Inserts into the table pgw_wal_filler on `node` (default: the primary()) until at least
    // `megabytes` MiB of WAL have been written; returns the LSN after the last insert.
    std::string write_wal(int megabytes, int node = -1);

    // For a pgwicket [databases] entry: "127.0.0.1,127.0.0.1,..." and "p0,p1,..." in node
    // order.
    std::string hosts() const;
    std::string ports() const;

private:
    struct Node {
        int port = 0;
        std::string datadir;
        std::string log;
    };
    class FailureSeen : public boost::unit_test::test_observer {
    public:
        void assertion_result(boost::unit_test::assertion_result ar) override;
        void exception_caught(boost::execution_exception const&) override;
        void test_unit_aborted(boost::unit_test::test_unit const&) override;
        bool failed = false;
    };

    const Node& node(int n) const;
    void append_conf(int n, const std::string& lines) const;
    void pg_ctl_start(int n);
    void wait_streaming(int standbys, int timeout_ms);
    void shut_down_all();
    void remove_files(bool keep_logs);

    std::string name_;
    std::string dir_;
    std::vector<Node> nodes_;
    int primary_ = 0;
    int uncaught_at_start_ = 0;
    FailureSeen observer_;
};

}  // namespace pgw::it
