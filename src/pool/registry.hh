// The supervisor's pool bookkeeping, without I/O: which workers hold an upstream
// connection of which route (warm or in a session), the limits, and the clients
// waiting in order. Each call returns what the supervisor must tell whom.
#pragma once

#include "common/net.hh"

#include <sys/types.h>

#include <cstdint>
#include <deque>
#include <iterator>
#include <map>
#include <string>
#include <vector>

namespace pgw::pool {

struct Limits {
    std::string database;  // the [databases] entry: max_db_connections counts across its routes
    long pool_size = 20;
    long reserve_pool_size = 0;
    long max_db_connections = 0;  // 0: no limit
    long min_pool_size = 0;       // connections kept open once the route has been used
    std::chrono::seconds reserve_pool_timeout{5};
    std::chrono::seconds query_wait_timeout{120};  // 0: wait forever
};

struct Action {
    enum Kind {
        Move,     // send `worker`'s client to warm worker `warm`
        Connect,  // `worker` connects upstream itself
        Retire,   // warm worker `warm` closes its upstream and exits
        Timeout,  // `worker` waited query_wait_timeout: it answers 53300
    } kind;
    pid_t worker = 0;
    pid_t warm = 0;
};

// Upper bounds (seconds) of the wait-time histogram's buckets; one more counts the rest.
inline constexpr double kWaitBuckets[] = {0.001, 0.01, 0.1, 1, 10, 60};
inline constexpr std::size_t kWaitBucketCount = std::size(kWaitBuckets) + 1;

// How long clients of a route waited for a connection (served or timed out), cumulative.
struct WaitHistogram {
    std::uint64_t buckets[kWaitBucketCount] = {};  // per bucket, not cumulative
    std::uint64_t count = 0;
    double sum_s = 0;
    void add(double seconds);
};

struct RouteStats {
    std::string route;
    std::string database;
    long pool_size = 0;
    std::size_t warm = 0;
    std::size_t open = 0;  // upstream connections, warm or in a session or being made
    std::size_t waiting = 0;
    double longest_wait_s = 0;
    WaitHistogram waits;
};

class Registry {
public:
    using Clock = net::Clock;

    // A worker that authenticated a client asks for `route`. `can_move`: its client
    // may go to a warm worker (plaintext). Nothing is returned while it must wait.
    std::vector<Action> request(pid_t worker, const std::string& route, const Limits& limits, bool can_move,
                                Clock::time_point now);
    // A worker holding an upstream of `route` has reset it and waits for a client.
    // False when it holds none of that route (the supervisor retires it).
    bool warm(pid_t worker, const std::string& route, std::vector<Action>& actions, Clock::time_point now);
    // A warm worker wants to go. True when it was warm (it may: Retire it); false when a
    // client is already on its way to it.
    bool leaving(pid_t worker, std::vector<Action>& actions, Clock::time_point now);
    // Takes every warm worker out (drain): returns Retire actions.
    std::vector<Action> retire_all_warm(Clock::time_point now);
    // Takes every warm worker out of its route's stack, still counted in the route (a
    // reload asks each to take the new configuration; it says Warm again, or leaves).
    // Returns them with their routes.
    std::vector<std::pair<pid_t, std::string>> take_all_warm();
    // A worker is gone (reaped), or gave up its upstream: its place is free.
    std::vector<Action> gone(pid_t worker, Clock::time_point now);
    // Clients whose query_wait_timeout has passed.
    std::vector<Action> expire(Clock::time_point now);
    // When the next waiting client times out or may use the reserve (for the loop's timeout).
    Clock::time_point next_deadline(Clock::time_point now) const;

    // Routes with fewer connections than their min_pool_size (and room for one more).
    std::vector<std::string> below_minimum(Clock::time_point now) const;
    // Makes `route` known with `limits` before any client asks for it (min_pool_size at
    // start), or gives a known one new limits.
    void declare(const std::string& route, const Limits& limits);
    // A route's minimum no longer applies (its entry is gone, or its settings changed).
    void forget_minimum(const std::string& route);
    // A worker opens a connection of `route` with no client (min_pool_size).
    void prefill(pid_t worker, const std::string& route);
    // Takes a warm worker of `route` for a connection whose route is not known yet (the
    // supervisor's guess); 0 when there is none. It stays counted in the route.
    pid_t take_warm(const std::string& route);
    bool is_warm(pid_t worker) const;
    // Whether the worker holds (or is opening) a connection of some route, and which.
    const std::string* held_route(pid_t worker) const;
    std::size_t warm_count() const;
    std::vector<RouteStats> stats(Clock::time_point now) const;

private:
    struct Waiter {
        pid_t worker;
        bool can_move;
        Clock::time_point since;
    };
    struct Route {
        Limits limits;
        std::vector<pid_t> warm;  // a stack: the most recently used connection first
        std::size_t open = 0;
        std::deque<Waiter> waiting;
        WaitHistogram waits;
    };

    bool room(const Route& r, Clock::time_point since, Clock::time_point now) const;
    void hold(pid_t worker, const std::string& route);
    void drop_holder(pid_t worker);
    // Gives waiting clients what has become free, route by route, first come first served.
    void serve(std::vector<Action>& actions, Clock::time_point now);
    bool serve_one(const std::string& name, Route& r, const Waiter& w, std::vector<Action>& actions,
                   Clock::time_point now);
    bool serve_now(const std::string& name, Route& r, const Waiter& w, std::vector<Action>& actions,
                   Clock::time_point now);

    std::map<std::string, Route> routes_;
    std::map<pid_t, std::string> holders_;  // workers counted in a route's open connections
    std::map<std::string, std::size_t> db_open_;
};

} // namespace pgw::pool
