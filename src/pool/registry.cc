// Pool bookkeeping. A route's `open` counts every upstream connection that exists or
// is being made for it; pool_size (plus the reserve, for a client that has waited
// reserve_pool_timeout) and max_db_connections bound it.
#include "pool/registry.hh"

#include <algorithm>

namespace pgw::pool {

void WaitHistogram::add(double seconds)
{
    std::size_t b = 0;
    while (b < std::size(kWaitBuckets) && seconds > kWaitBuckets[b])
        ++b;
    ++buckets[b];
    ++count;
    sum_s += seconds;
}

bool Registry::room(const Route& r, Clock::time_point since, Clock::time_point now) const
{
    long cap = r.limits.pool_size;
    if (r.limits.reserve_pool_size > 0 && now - since >= r.limits.reserve_pool_timeout)
        cap += r.limits.reserve_pool_size;
    if (long(r.open) >= cap)
        return false;
    if (r.limits.max_db_connections > 0) {
        auto it = db_open_.find(r.limits.database);
        if (it != db_open_.end() && long(it->second) >= r.limits.max_db_connections)
            return false;
    }
    return true;
}

void Registry::hold(pid_t worker, const std::string& route)
{
    Route& r = routes_[route];
    ++r.open;
    ++db_open_[r.limits.database];
    holders_[worker] = route;
}

void Registry::drop_holder(pid_t worker)
{
    auto it = holders_.find(worker);
    if (it == holders_.end())
        return;
    Route& r = routes_[it->second];
    std::erase(r.warm, worker);
    if (r.open > 0)
        --r.open;
    auto db = db_open_.find(r.limits.database);
    if (db != db_open_.end() && db->second > 0 && --db->second == 0)
        db_open_.erase(db);
    holders_.erase(it);
}

bool Registry::serve_one(const std::string& name, Route& r, const Waiter& w, std::vector<Action>& actions,
                         Clock::time_point now)
{
    const bool served = serve_now(name, r, w, actions, now);
    if (served)
        r.waits.add(std::chrono::duration<double>(now - w.since).count());
    return served;
}

bool Registry::serve_now(const std::string& name, Route& r, const Waiter& w, std::vector<Action>& actions,
                         Clock::time_point now)
{
    if (w.can_move && !r.warm.empty()) {
        pid_t warm = r.warm.back();
        r.warm.pop_back();
        actions.push_back({Action::Move, w.worker, warm});
        return true;
    }
    if (room(r, w.since, now)) {
        // A worker that held another route's connection closes it to open this one.
        drop_holder(w.worker);
        hold(w.worker, name);
        actions.push_back({Action::Connect, w.worker, 0});
        return true;
    }
    if (!r.warm.empty()) {
        // A client that cannot move (TLS) and a full route: a warm connection makes way
        // for the one it will open.
        pid_t warm = r.warm.back();
        drop_holder(warm);
        actions.push_back({Action::Retire, 0, warm});
        drop_holder(w.worker);
        hold(w.worker, name);
        actions.push_back({Action::Connect, w.worker, 0});
        return true;
    }
    return false;
}

void Registry::serve(std::vector<Action>& actions, Clock::time_point now)
{
    for (auto& [name, r] : routes_)
        while (!r.waiting.empty() && serve_one(name, r, r.waiting.front(), actions, now))
            r.waiting.pop_front();
}

std::vector<Action> Registry::request(pid_t worker, const std::string& route, const Limits& limits, bool can_move,
                                      Clock::time_point now)
{
    std::vector<Action> actions;
    Route& r = routes_[route];
    r.limits = limits;  // the newest configuration's
    Waiter w{worker, can_move, now};
    // First come, first served: nobody overtakes a client already waiting.
    if (!r.waiting.empty() || !serve_one(route, r, w, actions, now))
        r.waiting.push_back(w);
    return actions;
}

bool Registry::warm(pid_t worker, const std::string& route, std::vector<Action>& actions, Clock::time_point now)
{
    auto it = holders_.find(worker);
    if (it == holders_.end() || it->second != route)
        return false;
    routes_[route].warm.push_back(worker);
    serve(actions, now);
    return true;
}

bool Registry::leaving(pid_t worker, std::vector<Action>& actions, Clock::time_point now)
{
    if (!is_warm(worker))
        return false;
    drop_holder(worker);
    serve(actions, now);
    return true;
}

std::vector<Action> Registry::retire_all_warm(Clock::time_point now)
{
    std::vector<Action> actions;
    std::vector<pid_t> all;
    for (const auto& [name, r] : routes_)
        all.insert(all.end(), r.warm.begin(), r.warm.end());
    for (pid_t w : all) {
        drop_holder(w);
        actions.push_back({Action::Retire, 0, w});
    }
    serve(actions, now);
    return actions;
}

std::vector<std::pair<pid_t, std::string>> Registry::take_all_warm()
{
    std::vector<std::pair<pid_t, std::string>> all;
    for (auto& [name, r] : routes_) {
        for (pid_t w : r.warm)
            all.emplace_back(w, name);
        r.warm.clear();
    }
    return all;
}

std::vector<Action> Registry::gone(pid_t worker, Clock::time_point now)
{
    std::vector<Action> actions;
    drop_holder(worker);
    for (auto& [name, r] : routes_)
        std::erase_if(r.waiting, [worker](const Waiter& w) { return w.worker == worker; });
    serve(actions, now);
    return actions;
}

std::vector<Action> Registry::expire(Clock::time_point now)
{
    std::vector<Action> actions;
    // The reserve may have opened for someone.
    serve(actions, now);
    // A queue is in the order of `since` (clients join at its end), so the timed-out
    // ones are at its front: no look at the others (thousands may wait).
    for (auto& [name, r] : routes_) {
        if (r.limits.query_wait_timeout.count() <= 0)
            continue;
        while (!r.waiting.empty() && now - r.waiting.front().since >= r.limits.query_wait_timeout) {
            const Waiter& w = r.waiting.front();
            r.waits.add(std::chrono::duration<double>(now - w.since).count());
            actions.push_back({Action::Timeout, w.worker, 0});
            r.waiting.pop_front();
        }
    }
    // Routes nobody uses any more are forgotten (those with a minimum are kept).
    std::erase_if(routes_, [](const auto& kv) {
        return kv.second.open == 0 && kv.second.waiting.empty() && kv.second.warm.empty() &&
               kv.second.limits.min_pool_size == 0;
    });
    return actions;
}

Registry::Clock::time_point Registry::next_deadline(Clock::time_point now) const
{
    // Called every round of the supervisor's loop: the queues are in the order of
    // `since`, so the front times out first, and the first client not yet allowed the
    // reserve is found by binary search.
    auto next = Clock::time_point::max();
    for (const auto& [name, r] : routes_) {
        if (r.waiting.empty())
            continue;
        if (r.limits.query_wait_timeout.count() > 0)
            next = std::min(next, r.waiting.front().since + r.limits.query_wait_timeout);
        if (r.limits.reserve_pool_size > 0) {
            auto first = std::partition_point(r.waiting.begin(), r.waiting.end(), [&](const Waiter& w) {
                return w.since + r.limits.reserve_pool_timeout <= now;
            });
            if (first != r.waiting.end())
                next = std::min(next, first->since + r.limits.reserve_pool_timeout);
        }
    }
    return next;
}

std::vector<std::string> Registry::below_minimum(Clock::time_point now) const
{
    std::vector<std::string> out;
    for (const auto& [name, r] : routes_)
        if (long(r.open) < r.limits.min_pool_size && room(r, now, now))
            out.push_back(name);
    return out;
}

void Registry::declare(const std::string& route, const Limits& limits) { routes_[route].limits = limits; }

void Registry::forget_minimum(const std::string& route)
{
    if (auto it = routes_.find(route); it != routes_.end())
        it->second.limits.min_pool_size = 0;
}

void Registry::prefill(pid_t worker, const std::string& route) { hold(worker, route); }

pid_t Registry::take_warm(const std::string& route)
{
    auto it = routes_.find(route);
    if (it == routes_.end() || it->second.warm.empty())
        return 0;
    pid_t w = it->second.warm.back();
    it->second.warm.pop_back();
    return w;
}

const std::string* Registry::held_route(pid_t worker) const
{
    auto it = holders_.find(worker);
    return it == holders_.end() ? nullptr : &it->second;
}

bool Registry::is_warm(pid_t worker) const
{
    auto it = holders_.find(worker);
    if (it == holders_.end())
        return false;
    const auto& warm = routes_.at(it->second).warm;
    return std::find(warm.begin(), warm.end(), worker) != warm.end();
}

std::size_t Registry::warm_count() const
{
    std::size_t n = 0;
    for (const auto& [name, r] : routes_)
        n += r.warm.size();
    return n;
}

std::vector<RouteStats> Registry::stats(Clock::time_point now) const
{
    std::vector<RouteStats> out;
    for (const auto& [name, r] : routes_) {
        RouteStats s;
        s.route = name;
        s.database = r.limits.database;
        s.pool_size = r.limits.pool_size;
        s.warm = r.warm.size();
        s.open = r.open;
        s.waiting = r.waiting.size();
        if (!r.waiting.empty())
            s.longest_wait_s = std::chrono::duration<double>(now - r.waiting.front().since).count();
        s.waits = r.waits;
        out.push_back(std::move(s));
    }
    return out;
}

} // namespace pgw::pool
