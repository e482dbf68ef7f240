// Unit tests for multi-host entries (src/health/hosts.cc, the replica keys of
// src/config/pool_keys.cc): the host list as libpq reads it, the host rows' sequence
// lock, and which hosts a session tries for each target_session_attrs.
#include "config/config.hh"
#include "config/pool_keys.hh"
#include "health/hosts.hh"
#include "ipc/session_table.hh"

#include <boost/test/unit_test.hpp>

#include <memory>
#include <string>
#include <vector>

namespace cfg = pgw::config;
namespace health = pgw::health;
namespace ipc = pgw::ipc;

namespace {

health::Candidate host(ipc::HostState state, ipc::HostRole role, std::uint64_t lag_bytes = 0, std::int64_t lag_ms = 0)
{
    health::Candidate c;
    c.listed = true;
    c.view.state = state;
    c.view.role = role;
    c.view.lag_bytes = lag_bytes;
    c.view.lag_ms = lag_ms;
    return c;
}

const auto kUp = ipc::HostState::Up;
const auto kDown = ipc::HostState::Down;
const auto kPrimary = ipc::HostRole::Primary;
const auto kStandby = ipc::HostRole::Standby;

std::vector<std::size_t> order(const std::vector<health::Candidate>& hosts, health::Target t,
                               cfg::ReplicaSettings r = {}, std::uint64_t counter = 0)
{
    return health::choose_hosts(hosts, t, r, 1000, counter, 0).order;
}

using V = std::vector<std::size_t>;

} // namespace

BOOST_AUTO_TEST_SUITE(hosts)

BOOST_AUTO_TEST_CASE(host_lists_as_libpq_reads_them)
{
    auto h = health::hosts_of({{"host", "a,b,c"}, {"port", "5432,5433,5434"}});
    BOOST_TEST_REQUIRE(h.size() == 3u);
    BOOST_TEST(h[1].host == "b");
    BOOST_TEST(h[2].port == "5434");
    // One port for every host; none means 5432.
    h = health::hosts_of({{"host", "a,b"}, {"port", "6000"}});
    BOOST_TEST(h[1].port == "6000");
    h = health::hosts_of({{"host", "a,b"}});
    BOOST_TEST(h[0].port == "5432");
    // hostaddr beside host: both kept; hostaddr alone names the host.
    h = health::hosts_of({{"hostaddr", "10.0.0.1,10.0.0.2"}});
    BOOST_TEST(h[1].host == "10.0.0.2");
    BOOST_TEST(health::hosts_of({{"dbname", "x"}}).empty());
}

BOOST_AUTO_TEST_CASE(each_target_gets_the_hosts_of_its_role)
{
    const std::vector<health::Candidate> hosts = {host(kUp, kPrimary), host(kUp, kStandby), host(kUp, kStandby)};
    cfg::ReplicaSettings in_order;
    in_order.load_balance = cfg::LoadBalance::InOrder;
    BOOST_TEST(order(hosts, health::Target::Primary, in_order) == (V{0}));
    BOOST_TEST(order(hosts, health::Target::ReadWrite, in_order) == (V{0}));
    BOOST_TEST(order(hosts, health::Target::Standby, in_order) == (V{1, 2}));
    BOOST_TEST(order(hosts, health::Target::ReadOnly, in_order) == (V{1, 2}));
    BOOST_TEST(order(hosts, health::Target::PreferStandby, in_order) == (V{1, 2, 0}));
    BOOST_TEST(order(hosts, health::Target::Any, in_order) == (V{0, 1, 2}));
}

BOOST_AUTO_TEST_CASE(round_robin_turns_within_the_role)
{
    const std::vector<health::Candidate> hosts = {host(kUp, kPrimary), host(kUp, kStandby), host(kUp, kStandby)};
    BOOST_TEST(order(hosts, health::Target::Standby, {}, 0) == (V{1, 2}));
    BOOST_TEST(order(hosts, health::Target::Standby, {}, 1) == (V{2, 1}));
    BOOST_TEST(order(hosts, health::Target::Standby, {}, 2) == (V{1, 2}));
    // prefer-standby: the primary stays last whatever the turn.
    BOOST_TEST(order(hosts, health::Target::PreferStandby, {}, 1) == (V{2, 1, 0}));
}

BOOST_AUTO_TEST_CASE(least_connections_picks_the_host_with_fewest_sessions)
{
    std::vector<health::Candidate> hosts = {host(kUp, kPrimary), host(kUp, kStandby), host(kUp, kStandby),
                                            host(kUp, kStandby)};
    hosts[0].sessions = 0;  // the primary: another role, whatever its count
    hosts[1].sessions = 5;
    hosts[2].sessions = 1;
    hosts[3].sessions = 3;
    cfg::ReplicaSettings r;
    r.load_balance = cfg::LoadBalance::LeastConnections;
    BOOST_TEST(order(hosts, health::Target::Standby, r, 0) == (V{2, 3, 1}));
    BOOST_TEST(order(hosts, health::Target::Standby, r, 7) == (V{2, 3, 1}));
    // Equal counts take turns, as round-robin does.
    hosts[1].sessions = hosts[2].sessions = hosts[3].sessions = 2;
    BOOST_TEST(order(hosts, health::Target::Standby, r, 0) == (V{1, 2, 3}));
    BOOST_TEST(order(hosts, health::Target::Standby, r, 1) == (V{2, 3, 1}));
    // prefer-standby: the primary still comes after every fitting standby.
    hosts[0].sessions = 0;
    BOOST_TEST(order(hosts, health::Target::PreferStandby, r, 0).back() == 0u);
    auto parsed = cfg::split_pool_keys("host=a,b load_balance=least-connections");
    BOOST_TEST_REQUIRE(parsed.ok());
    BOOST_TEST((parsed->replicas.load_balance == cfg::LoadBalance::LeastConnections));
}

BOOST_AUTO_TEST_CASE(down_banned_and_lagging_hosts_are_passed_over_and_named)
{
    cfg::ReplicaSettings r;
    r.max_lag_bytes = 1024;
    std::vector<health::Candidate> hosts = {host(kUp, kPrimary), host(kDown, kStandby), host(kUp, kStandby, 4096)};
    auto c = health::choose_hosts(hosts, health::Target::Standby, r, 1000, 0, 0);
    BOOST_TEST(c.order.empty());
    BOOST_TEST(c.why_none.find("1 down") != std::string::npos, c.why_none);
    BOOST_TEST(c.why_none.find("1 lagging more than max_replica_lag") != std::string::npos, c.why_none);
    // prefer-standby falls back to the primary.
    BOOST_TEST(order(hosts, health::Target::PreferStandby, r) == (V{0}));
    // Within the limit again: used.
    hosts[2].view.lag_bytes = 100;
    BOOST_TEST(order(hosts, health::Target::Standby, r) == (V{2}));
    // A time limit.
    cfg::ReplicaSettings t;
    t.max_lag_ms = 5000;
    hosts[2].view.lag_ms = 6000;
    BOOST_TEST(order(hosts, health::Target::Standby, t).empty());
    // Any ignores lag (the primary and the lagging standby alike serve it).
    BOOST_TEST(order(hosts, health::Target::Any, t).size() == 2u);
    // A ban until after "now" (1000) passes a host over; an expired one does not.
    hosts[2].view.lag_ms = 0;
    hosts[2].view.banned_until_ms = 2000;
    c = health::choose_hosts(hosts, health::Target::Standby, t, 1000, 0, 0);
    BOOST_TEST(c.order.empty());
    BOOST_TEST(c.why_none.find("ban_time") != std::string::npos, c.why_none);
    hosts[2].view.banned_until_ms = 500;
    BOOST_TEST(order(hosts, health::Target::Standby, t) == (V{2}));
}

BOOST_AUTO_TEST_CASE(before_any_check_libpq_chooses)
{
    std::vector<health::Candidate> hosts(3);
    auto c = health::choose_hosts(hosts, health::Target::Primary, {}, 0, 0, 0);
    BOOST_TEST(c.unchecked);
    BOOST_TEST(c.order == (V{0, 1, 2}));
    // One host listed but never answered: the unknown ones come after the known good.
    hosts[1] = host(kUp, kPrimary);
    hosts[2].listed = true;  // state Unknown
    c = health::choose_hosts(hosts, health::Target::Primary, {}, 0, 0, 0);
    BOOST_TEST(!c.unchecked);
    BOOST_TEST(c.order == (V{1, 0, 2}));
}

BOOST_AUTO_TEST_CASE(rows_round_trip_and_plans_pick_one_host)
{
    auto header = std::make_unique<ipc::TableHeader>();
    ipc::TableHeader& h = *header;
    const int a = health::claim_host(h, "10.0.0.1", 5432);
    const int b = health::claim_host(h, "10.0.0.2", 5432);
    BOOST_TEST(a == 0);
    BOOST_TEST(b == 1);
    BOOST_TEST(health::claim_host(h, "10.0.0.1", 5432) == 0);
    BOOST_TEST(health::find_host(h, "10.0.0.2", 5433) == -1);
    health::HostView v;
    v.state = kUp;
    v.role = kPrimary;
    v.error = "none";
    health::write_host(h, 0, v);
    v.role = kStandby;
    v.lag_bytes = 77;
    health::write_host(h, 1, v);
    BOOST_TEST(health::read_host(h, 1).lag_bytes == 77u);
    BOOST_TEST(h.hosts[1].seq.load() == 2u);

    const health::Params params = {{"host", "10.0.0.1,10.0.0.2"}, {"port", "5432"}, {"dbname", "app"},
                                   {"target_session_attrs", "standby"}};
    auto plan = health::plan_connection(params, {}, h);
    BOOST_TEST_REQUIRE(plan.tries.size() == 1u);
    BOOST_TEST(plan.tries[0].row == 1);
    std::string hostv, tsa;
    for (const auto& [k, val] : plan.tries[0].params) {
        if (k == "host")
            hostv = val;
        if (k == "target_session_attrs")
            tsa = val;
    }
    BOOST_TEST(hostv == "10.0.0.2");
    BOOST_TEST(tsa == "standby");  // libpq checks the role again
    // Failover watch: a role change of the row is seen.
    auto w = health::watch_of(h, health::Target::Standby, "10.0.0.2", "5432");
    BOOST_TEST(w.row == 1);
    BOOST_TEST(!health::role_changed(h, w, nullptr));
    v.role = kPrimary;
    v.role_gen = 1;
    health::write_host(h, 1, v);
    ipc::HostRole now{};
    BOOST_TEST(health::role_changed(h, w, &now));
    BOOST_TEST((now == kPrimary));
    // A single-host entry without target_session_attrs goes as it is.
    plan = health::plan_connection({{"host", "x"}}, {}, h);
    BOOST_TEST(plan.tries.size() == 1u);
    BOOST_TEST(plan.tries[0].row == -1);
}

// A reload unlists the rows of hosts no entry checks now; claiming a row lists it again,
// with what the row had.
BOOST_AUTO_TEST_CASE(rows_of_hosts_a_reload_dropped_are_unlisted_and_come_back)
{
    auto header = std::make_unique<ipc::TableHeader>();
    ipc::TableHeader& h = *header;
    BOOST_TEST(health::claim_host(h, "pg1", 5432) == 0);
    BOOST_TEST(health::claim_host(h, "pg2", 5432) == 1);
    BOOST_TEST(health::read_host(h, 0).listed);
    health::HostView v;
    v.checks = 9;
    health::write_host(h, 1, v);
    health::list_hosts(h, {{"pg1", 5432}, {"pg2", 5433}});
    BOOST_TEST(health::read_host(h, 0).listed);
    BOOST_TEST(!health::read_host(h, 1).listed);  // pg2:5432 is not pg2:5433
    BOOST_TEST(health::find_host(h, "pg2", 5432) == 1);  // the row keeps its place
    health::list_hosts(h, {});
    BOOST_TEST(!health::read_host(h, 0).listed);
    BOOST_TEST(health::claim_host(h, "pg2", 5432) == 1);
    BOOST_TEST(health::read_host(h, 1).listed);
    BOOST_TEST(health::read_host(h, 1).checks == 9u);
    BOOST_TEST(!health::read_host(h, 0).listed);
}

BOOST_AUTO_TEST_CASE(replica_keys_are_cut_out_and_checked)
{
    auto s = cfg::split_pool_keys("host=a,b load_balance=random max_replica_lag=16MB ban_time=30s dbname=x");
    BOOST_TEST_REQUIRE(s.ok(), (s.ok() ? std::string() : s.error()));
    BOOST_TEST(s->conninfo == "host=a,b dbname=x");
    BOOST_TEST((s->replicas.load_balance == cfg::LoadBalance::Random));
    BOOST_TEST(s->replicas.max_lag_bytes == 16L * 1024 * 1024);
    BOOST_TEST(s->replicas.max_lag_ms == -1);
    BOOST_TEST(s->replicas.ban_time == 30);
    s = cfg::split_pool_keys("host=a,b max_replica_lag=10s");
    BOOST_TEST(s->replicas.max_lag_ms == 10000);
    s = cfg::split_pool_keys("host=a,b max_replica_lag=500ms ban_time=1min");
    BOOST_TEST(s->replicas.max_lag_ms == 500);
    BOOST_TEST(s->replicas.ban_time == 60);
    for (const char* bad : {"load_balance=least-busy", "load_balance=least_connections", "max_replica_lag=ten", "max_replica_lag=5 seconds",
                            "ban_time=-1", "ban_time=100000"}) {
        auto r = cfg::split_pool_keys(std::string("host=a,b ") + bad);
        BOOST_TEST(!r.ok(), bad);
    }
}

BOOST_AUTO_TEST_CASE(read_routing_keys_are_cut_out_and_checked)
{
    auto s = cfg::split_pool_keys("host=a,b read_routing=auto read_after_write_delay=250ms dbname=x");
    BOOST_TEST_REQUIRE(s.ok(), (s.ok() ? std::string() : s.error()));
    BOOST_TEST(s->conninfo == "host=a,b dbname=x");
    BOOST_TEST(s->replicas.read_routing);
    BOOST_TEST(s->replicas.read_after_write_ms == 250);
    s = cfg::split_pool_keys("host=a,b read_routing=auto target_session_attrs=primary read_after_write_delay=0");
    BOOST_TEST_REQUIRE(s.ok());
    BOOST_TEST(s->replicas.read_after_write_ms == 0);
    s = cfg::split_pool_keys("host=a,b read_routing=off");
    BOOST_TEST_REQUIRE(s.ok());
    BOOST_TEST(!s->replicas.read_routing);
    BOOST_TEST(cfg::split_pool_keys("host=a,b").value().replicas.read_after_write_ms == 1000);
    // Pooled entries route reads too (the pooled connection keeps its standby connection).
    s = cfg::split_pool_keys("host=a,b read_routing=auto pool_mode=session pool_size=3");
    BOOST_TEST_REQUIRE(s.ok());
    BOOST_TEST((s->replicas.read_routing && s->pool.pooled));
    const std::pair<const char*, const char*> bad[] = {
        {"read_routing=yes", "not one of auto, off"},
        {"read_after_write_delay=soon", "not a time"},
        {"read_routing=auto target_session_attrs=standby", "contradicts it"},
    };
    for (const auto& [keys, says] : bad) {
        auto r = cfg::split_pool_keys(std::string("host=a,b ") + keys);
        BOOST_TEST_REQUIRE(!r.ok(), keys);
        BOOST_TEST(r.error().find(says) != std::string::npos, keys << ": " << r.error());
    }
}

BOOST_AUTO_TEST_SUITE_END()
