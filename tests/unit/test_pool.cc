// Unit tests for the pool's pieces that need no processes: the supervisor's registry
// (moves, connects, limits, the reserve, waits in order, timeouts, workers that die),
// the session context that travels with a moved client, route keys, the SHOW SERVERS
// rows in the shared table, and the pool gauges.
#include "admin/stats.hh"
#include "common/unique_fd.hh"
#include "ipc/fdpass.hh"
#include "pool/context.hh"
#include "pool/held.hh"
#include "pool/registry.hh"

#include <boost/test/unit_test.hpp>

#include <sys/socket.h>
#include <unistd.h>

#include <optional>
#include <set>
#include <string>

using namespace pgw;
using pool::Action;

namespace {

using Clock = pool::Registry::Clock;
using namespace std::chrono_literals;

pool::Limits limits(long size, long reserve = 0, long max_db = 0)
{
    pool::Limits l;
    l.database = "orders";
    l.pool_size = size;
    l.reserve_pool_size = reserve;
    l.max_db_connections = max_db;
    l.reserve_pool_timeout = 5s;
    l.query_wait_timeout = 30s;
    return l;
}

std::string text(const std::vector<Action>& actions)
{
    std::string out;
    for (const auto& a : actions) {
        const char* k = a.kind == Action::Move      ? "move"
                        : a.kind == Action::Connect ? "connect"
                        : a.kind == Action::Retire  ? "retire"
                                                    : "timeout";
        out += std::string(out.empty() ? "" : " ") + k + ":" + std::to_string(a.worker) + "/" + std::to_string(a.warm);
    }
    return out;
}

} // namespace

BOOST_AUTO_TEST_SUITE(pool_registry)

BOOST_AUTO_TEST_CASE(connect_then_warm_then_move)
{
    pool::Registry r;
    const auto t = Clock::now();
    BOOST_CHECK_EQUAL(text(r.request(10, "R", limits(2), true, t)), "connect:10/0");
    std::vector<Action> acts;
    BOOST_CHECK(r.warm(10, "R", acts, t));
    BOOST_CHECK_EQUAL(text(acts), "");
    BOOST_CHECK(r.is_warm(10));
    // A plaintext client moves to the warm worker; the next one connects (room for 2).
    BOOST_CHECK_EQUAL(text(r.request(11, "R", limits(2), true, t)), "move:11/10");
    BOOST_CHECK(!r.is_warm(10));
    BOOST_CHECK_EQUAL(text(r.request(12, "R", limits(2), true, t)), "connect:12/0");
    // Full: the next waits, and gets the first connection that goes warm.
    BOOST_CHECK_EQUAL(text(r.request(13, "R", limits(2), true, t)), "");
    acts.clear();
    BOOST_CHECK(r.warm(12, "R", acts, t));
    BOOST_CHECK_EQUAL(text(acts), "move:13/12");
    // A worker that never connected for a route cannot go warm on it.
    BOOST_CHECK(!r.warm(99, "R", acts, t));
    BOOST_CHECK(!r.warm(10, "other", acts, t));
}

BOOST_AUTO_TEST_CASE(tls_client_on_a_full_route_replaces_a_warm_connection)
{
    pool::Registry r;
    const auto t = Clock::now();
    r.request(10, "R", limits(1), true, t);
    std::vector<Action> acts;
    r.warm(10, "R", acts, t);
    // A TLS client cannot move; the warm connection makes way for its own.
    BOOST_CHECK_EQUAL(text(r.request(11, "R", limits(1), false, t)), "retire:0/10 connect:11/0");
    BOOST_CHECK(!r.is_warm(10));
    BOOST_CHECK_EQUAL(r.stats(t).at(0).open, 1u);
}

BOOST_AUTO_TEST_CASE(dead_workers_free_their_places_and_queue_entries)
{
    pool::Registry r;
    const auto t = Clock::now();
    r.request(10, "R", limits(1), true, t);
    BOOST_CHECK_EQUAL(text(r.request(11, "R", limits(1), true, t)), "");
    BOOST_CHECK_EQUAL(text(r.request(12, "R", limits(1), true, t)), "");
    // 11 dies while waiting: it leaves the queue; 10 dies holding: 12 may connect.
    BOOST_CHECK_EQUAL(text(r.gone(11, t)), "");
    BOOST_CHECK_EQUAL(text(r.gone(10, t)), "connect:12/0");
    BOOST_CHECK_EQUAL(r.stats(t).at(0).open, 1u);
    BOOST_CHECK_EQUAL(r.stats(t).at(0).waiting, 0u);
}

BOOST_AUTO_TEST_CASE(reserve_after_reserve_pool_timeout_and_max_db_connections)
{
    pool::Registry r;
    const auto t = Clock::now();
    r.request(10, "R", limits(1, 1), true, t);
    BOOST_CHECK_EQUAL(text(r.request(11, "R", limits(1, 1), true, t)), "");
    BOOST_CHECK(r.next_deadline(t) == t + 5s);
    BOOST_CHECK_EQUAL(text(r.expire(t + 4s)), "");
    BOOST_CHECK_EQUAL(text(r.expire(t + 5s)), "connect:11/0");
    // max_db_connections counts every route of the entry.
    pool::Registry d;
    BOOST_CHECK_EQUAL(text(d.request(20, "A", limits(5, 0, 2), true, t)), "connect:20/0");
    BOOST_CHECK_EQUAL(text(d.request(21, "B", limits(5, 0, 2), true, t)), "connect:21/0");
    BOOST_CHECK_EQUAL(text(d.request(22, "C", limits(5, 0, 2), true, t)), "");
    BOOST_CHECK_EQUAL(text(d.gone(20, t)), "connect:22/0");
}

BOOST_AUTO_TEST_CASE(waiting_clients_time_out_in_order_and_leaving_is_answered_once)
{
    pool::Registry r;
    const auto t = Clock::now();
    r.request(10, "R", limits(1), true, t);
    r.request(11, "R", limits(1), true, t);
    r.request(12, "R", limits(1), true, t + 10s);
    BOOST_CHECK_EQUAL(text(r.expire(t + 30s)), "timeout:11/0");
    BOOST_CHECK_EQUAL(text(r.expire(t + 40s)), "timeout:12/0");
    std::vector<Action> acts;
    r.warm(10, "R", acts, t);
    BOOST_CHECK(r.leaving(10, acts, t));
    BOOST_CHECK(!r.leaving(10, acts, t));
    BOOST_CHECK(r.stats(t).empty() || r.stats(t).at(0).open == 0);
    // A client already on its way: the warm worker may not leave.
    r.request(30, "S", limits(1), true, t);
    r.warm(30, "S", acts, t);
    BOOST_CHECK_EQUAL(text(r.request(31, "S", limits(1), true, t)), "move:31/30");
    BOOST_CHECK(!r.leaving(30, acts, t));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(pool_context)

BOOST_AUTO_TEST_CASE(round_trip_and_malformed)
{
    pool::SessionContext c;
    c.route = "orders/app/orders/0123";
    c.entry = "orders";
    c.user = "alice";
    c.database = "orders";
    c.identity = "alice@example.com";
    c.method = 3;
    c.secret_length = 32;
    c.protocol_minor = 2;
    c.relayed_by = 4242;
    c.groups = {"dba", "ops"};
    c.startup = {{"user", "alice"}, {"application_name", "psql"}};
    const std::string bytes = pool::encode(c);
    auto d = pool::decode_context(bytes);
    BOOST_REQUIRE(d);
    BOOST_CHECK_EQUAL(d->route, c.route);
    BOOST_CHECK_EQUAL(d->identity, c.identity);
    BOOST_CHECK_EQUAL(d->secret_length, 32u);
    BOOST_CHECK_EQUAL(d->protocol_minor, 2);
    BOOST_CHECK_EQUAL(d->relayed_by, 4242u);
    BOOST_CHECK(d->groups == c.groups);
    BOOST_CHECK(d->startup == c.startup);
    for (size_t cut = 0; cut < bytes.size(); ++cut)
        BOOST_CHECK(!pool::decode_context(bytes.substr(0, cut)));
    BOOST_CHECK(!pool::decode_context(bytes + "x"));
}

BOOST_AUTO_TEST_CASE(route_keys_ignore_application_name_and_hide_passwords)
{
    upstream::Params a = {{"host", "h"}, {"user", "app"}, {"dbname", "orders"}, {"password", "hunter2"},
                          {"application_name", "one"}};
    upstream::Params b = {{"dbname", "orders"}, {"application_name", "two"}, {"host", "h"}, {"user", "app"},
                          {"password", "hunter2"}};
    upstream::Params c = a;
    c.emplace_back("options", "-c search_path=x");
    BOOST_CHECK_EQUAL(pool::route_key("orders", a), pool::route_key("orders", b));
    BOOST_CHECK_NE(pool::route_key("orders", a), pool::route_key("orders", c));
    BOOST_CHECK_NE(pool::route_key("orders", a), pool::route_key("other", a));
    BOOST_CHECK(pool::route_key("orders", a).find("hunter2") == std::string::npos);
    BOOST_CHECK_EQUAL(pool::route_label(pool::route_key("orders", a)), "orders/app/orders");
}

BOOST_AUTO_TEST_SUITE_END()

// The SHOW SERVERS rows: claimed by CAS on the owner's pid, one row per claim, none
// when all are taken; cleared by their owner (through the lease) or, for a reaped
// worker, by the supervisor, without touching other workers' rows.
BOOST_AUTO_TEST_SUITE(pool_server_rows)

ipc::SessionTable make_table()
{
    auto t = ipc::SessionTable::create(4, 0);
    BOOST_TEST_REQUIRE(t.ok(), "SessionTable::create failed: " << (t.ok() ? "" : t.error()));
    return std::move(*t);
}

std::size_t rows_of(const ipc::SessionTable& t, pid_t owner)
{
    std::size_t n = 0;
    for (const auto& r : t.header()->servers)
        n += r.owner_pid.load() == owner;
    return n;
}

BOOST_AUTO_TEST_CASE(claims_are_distinct_until_full_and_reaping_frees_only_the_dead)
{
    auto t = make_table();
    std::set<ipc::ServerRow*> seen;
    for (std::uint32_t i = 0; i < ipc::kServerRows; ++i) {
        ipc::ServerRow* r = t.claim_server_row(i % 2 ? 1001 : 1002);
        BOOST_TEST_REQUIRE(r != nullptr, "row " << i << " of " << ipc::kServerRows);
        BOOST_TEST(r->state.load() == std::uint32_t(ipc::ServerState::Unset));
        seen.insert(r);
    }
    BOOST_TEST(seen.size() == std::size_t(ipc::kServerRows));
    BOOST_TEST(t.claim_server_row(1003) == nullptr, "a full table must say so");

    t.header()->servers[0].state.store(std::uint32_t(ipc::ServerState::Warm));
    t.release_servers_of(1002);
    BOOST_TEST(rows_of(t, 1002) == 0u);
    BOOST_TEST(rows_of(t, 1001) == std::size_t(ipc::kServerRows / 2));
    BOOST_TEST(t.header()->servers[0].state.load() == std::uint32_t(ipc::ServerState::Unset),
               "a freed row must not keep its last state");
    BOOST_TEST(t.claim_server_row(1003) != nullptr);

    // Only the owner's release frees a row.
    ipc::ServerRow& mine = t.header()->servers[1];
    BOOST_TEST_REQUIRE(mine.owner_pid.load() == 1001);
    ipc::SessionTable::release_server_row(mine, 1002);
    BOOST_TEST(mine.owner_pid.load() == 1001);
    ipc::SessionTable::release_server_row(mine, 1001);
    BOOST_TEST(mine.owner_pid.load() == 0);
}

BOOST_AUTO_TEST_CASE(a_lease_frees_its_row_once_wherever_it_moved)
{
    auto t = make_table();
    const pid_t me = ::getpid();
    {
        pool::ServerRowLease outer;
        {
            pool::ServerRowLease first(t.claim_server_row(me));
            BOOST_TEST_REQUIRE(bool(first));
            pool::ServerRowLease second(std::move(first));
            BOOST_TEST(!first);
            outer = std::move(second);
        }
        BOOST_TEST(rows_of(t, me) == 1u, "a moved-from lease must not free the row");
        // Assigning over a lease frees the row it had.
        outer = pool::ServerRowLease(t.claim_server_row(me));
        BOOST_TEST(rows_of(t, me) == 1u);
    }
    BOOST_TEST(rows_of(t, me) == 0u);

    // HeldUpstream carries its lease through std::optional moves.
    std::optional<pool::HeldUpstream> held;
    {
        pool::HeldUpstream h;
        h.row = pool::ServerRowLease(t.claim_server_row(me));
        held = std::move(h);
    }
    BOOST_TEST(rows_of(t, me) == 1u);
    held.reset();
    BOOST_TEST(rows_of(t, me) == 0u);
}

BOOST_AUTO_TEST_CASE(pool_gauges_escape_their_label_and_sum_routes_of_one_name)
{
    auto t = make_table();
    auto* h = t.header();
    auto row = [&](std::uint32_t i, const std::string& name, std::uint32_t warm, std::uint32_t open,
                   std::uint32_t waiting, std::uint32_t size, std::int64_t wait_ms) {
        ipc::PoolRow& r = h->pools[i];
        r.route.set(name);
        r.warm.store(warm);
        r.open.store(open);
        r.waiting.store(waiting);
        r.pool_size.store(size);
        r.longest_wait_ms.store(wait_ms);
    };
    row(0, "odd\\\"name\n/u/db", 1, 3, 0, 5, 0);
    row(1, "plain/u/db", 2, 2, 1, 4, 1500);
    row(2, "plain/u/db", 0, 1, 2, 4, 2500);  // the same name, other startup settings
    h->pool_rows.store(3);
    const std::string text = admin::render_prometheus(admin::collect(t));
    auto has = [&](const std::string& line) { return text.find("\n" + line + "\n") != std::string::npos; };
    const std::string odd = "pool=\"odd\\\\\\\"name\\n/u/db\"";
    BOOST_TEST(has("pgwicket_pool_connections{" + odd + ",state=\"warm\"} 1"), text);
    BOOST_TEST(has("pgwicket_pool_connections{" + odd + ",state=\"active\"} 2"), text);
    BOOST_TEST(has("pgwicket_pool_size{" + odd + "} 5"), text);
    BOOST_TEST(has("pgwicket_pool_connections{pool=\"plain/u/db\",state=\"warm\"} 2"), text);
    BOOST_TEST(has("pgwicket_pool_connections{pool=\"plain/u/db\",state=\"active\"} 1"), text);
    BOOST_TEST(has("pgwicket_pool_waiting_clients{pool=\"plain/u/db\"} 3"), text);
    BOOST_TEST(has("pgwicket_pool_longest_wait_seconds{pool=\"plain/u/db\"} 2.5"), text);
    BOOST_TEST(has("pgwicket_pool_size{pool=\"plain/u/db\"} 8"), text);

    BOOST_TEST(admin::label_value("caf\xc3\xa9") == "caf\xc3\xa9");
    BOOST_TEST(admin::label_value("cut\xc3") == "cut\xef\xbf\xbd", "a sequence cut short");
    BOOST_TEST(admin::label_value("\xff\xc0\x80") == "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
    BOOST_TEST(admin::label_value("\xed\xa0\x80").find("\xed") == std::string::npos, "a surrogate");
}

BOOST_AUTO_TEST_SUITE_END()

// A worker that exits with the supervisor's message (a Retire at shutdown) unread resets
// the channel: the supervisor reads that as the channel closed, like an exit with nothing
// pending, not as a bad message from the worker.
BOOST_AUTO_TEST_CASE(a_peer_gone_with_our_message_unread_is_a_closed_channel)
{
    int sv[2];
    BOOST_TEST_REQUIRE(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0);
    UniqueFd supervisor(sv[0]);
    BOOST_TEST_REQUIRE(ipc::send_message(sv[0], ipc::HandoffType::Retire).ok());
    close(sv[1]);
    auto got = ipc::receive_handoff(supervisor.get());
    BOOST_TEST_REQUIRE(!got.ok());
    BOOST_TEST(got.error() == "channel closed");
}
