// The replica cluster fixture itself (cluster.hh): roles, replay, a paused standby that lags
// while the other catches up, and a promotion after the primary stops. No pgwicket involved.
#include "cluster.hh"

#include <boost/test/unit_test.hpp>

using namespace pgw::it;

BOOST_AUTO_TEST_SUITE(replica_cluster)

BOOST_AUTO_TEST_CASE(primary_standbys_pause_and_promote)
{
    // extra_conf reaches every node (standbys copy the primary's postgresql.conf).
    ReplicaCluster c("rc_self", 2, "hot_standby_feedback = on");
    BOOST_TEST(c.size() == 3);
    BOOST_TEST(c.hosts() == "127.0.0.1,127.0.0.1,127.0.0.1");
    BOOST_TEST(c.ports() == std::to_string(c.port(0)) + "," + std::to_string(c.port(1)) + "," +
                                std::to_string(c.port(2)));
    BOOST_TEST(!c.in_recovery(0));
    BOOST_TEST(c.in_recovery(1));
    BOOST_TEST(c.in_recovery(2));
    BOOST_TEST(c.scalar(0, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") ==
               "2");
    BOOST_TEST(c.scalar(0, "SELECT count(*) FROM pg_replication_slots WHERE active") == "2");
    BOOST_TEST(c.scalar(2, "SHOW hot_standby_feedback") == "on");

    c.exec(0, "CREATE TABLE t (v text); INSERT INTO t VALUES ('one')");
    c.wait_replayed(1);
    c.wait_replayed(2);
    BOOST_TEST(c.scalar(1, "SELECT string_agg(v, ',') FROM t") == "one");
    BOOST_TEST(c.scalar(2, "SELECT string_agg(v, ',') FROM t") == "one");
    // A standby refuses writes: that is what pgwicket's role checks will rely on.
    BOOST_CHECK_THROW(c.exec(1, "INSERT INTO t VALUES ('nope')"), std::runtime_error);

    // Standby 2 stops replaying; standby 1 keeps up with a write it cannot see.
    c.pause_replay(2);
    c.exec(0, "INSERT INTO t VALUES ('two')");
    std::string lsn = c.write_wal(2);
    c.wait_replayed(1);
    BOOST_TEST(c.scalar(1, "SELECT string_agg(v, ',' ORDER BY v) FROM t") == "one,two");
    BOOST_TEST(c.scalar(2, "SELECT pg_last_wal_replay_lsn() < '" + lsn + "'::pg_lsn") == "t");
    BOOST_TEST(c.scalar(2, "SELECT string_agg(v, ',') FROM t") == "one");
    BOOST_TEST(c.lag_bytes(2) >= 2LL << 20);
    // Not 0: autovacuum and the bgwriter's snapshots may have written since.
    BOOST_TEST(c.lag_bytes(1) < 1LL << 20);
    c.resume_replay(2);
    c.wait_replayed(2);
    BOOST_TEST(c.scalar(2, "SELECT string_agg(v, ',' ORDER BY v) FROM t") == "one,two");
    BOOST_TEST(c.scalar(2, "SELECT count(*) > 0 FROM pgw_wal_filler") == "t");

    // Failover by hand: the primary goes, standby 1 is promoted and takes writes.
    c.stop(0);
    BOOST_TEST(!c.running(0));
    c.promote(1);
    BOOST_TEST(c.primary() == 1);
    BOOST_TEST(!c.in_recovery(1));
    c.exec(1, "INSERT INTO t VALUES ('three')");
    BOOST_TEST(c.scalar(1, "SELECT count(*) FROM t") == "3");

    // Standby 2 still follows the old primary (gone) but stops and starts as a standby.
    c.stop(2);
    BOOST_TEST(!c.running(2));
    c.start(2);
    BOOST_TEST(c.running(2));
    BOOST_TEST(c.in_recovery(2));
    BOOST_TEST(c.scalar(2, "SELECT count(*) FROM t") == "2");

    // A crash: the node is gone at once and comes back with start().
    c.kill9(2);
    BOOST_TEST(!c.running(2));
    BOOST_TEST(!tcp_accepts(c.port(2)));
    c.start(2);
    BOOST_TEST(c.in_recovery(2));
}

BOOST_AUTO_TEST_SUITE_END()
