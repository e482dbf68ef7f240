// Host rows under a sequence lock, and the pure choice of hosts for a connection.
#include "health/hosts.hh"

#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <numeric>

namespace pgw::health {
namespace {

std::vector<std::string> split_commas(const std::string& s)
{
    std::vector<std::string> out;
    size_t start = 0;
    for (;;) {
        size_t comma = s.find(',', start);
        out.push_back(s.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
        if (comma == std::string::npos)
            return out;
        start = comma + 1;
    }
}

const std::string* param(const std::vector<std::pair<std::string, std::string>>& p, const char* key)
{
    for (const auto& [k, v] : p)
        if (k == key)
            return &v;
    return nullptr;
}

// Round-robin turns the group by the counter; random draws a rotation and a stride.
void balance(std::vector<std::size_t>& group, config::LoadBalance how, std::uint64_t counter, std::uint64_t random,
             const std::vector<Candidate>& hosts)
{
    if (group.size() < 2 || how == config::LoadBalance::InOrder)
        return;
    const std::uint64_t turn = how == config::LoadBalance::Random ? random : counter;
    std::rotate(group.begin(), group.begin() + std::ptrdiff_t(turn % group.size()), group.end());
    if (how == config::LoadBalance::LeastConnections)
        std::stable_sort(group.begin(), group.end(),
                         [&hosts](std::size_t a, std::size_t b) { return hosts[a].sessions < hosts[b].sessions; });
}

} // namespace

std::vector<HostAddress> hosts_of(const std::vector<std::pair<std::string, std::string>>& params)
{
    const std::string* host = param(params, "host");
    const std::string* hostaddr = param(params, "hostaddr");
    const std::string* port = param(params, "port");
    std::vector<std::string> hosts = host ? split_commas(*host) : std::vector<std::string>{};
    std::vector<std::string> addrs = hostaddr ? split_commas(*hostaddr) : std::vector<std::string>{};
    std::vector<std::string> ports = port ? split_commas(*port) : std::vector<std::string>{};
    const size_t n = std::max(hosts.size(), addrs.size());
    std::vector<HostAddress> out(n);
    for (size_t i = 0; i < n; ++i) {
        out[i].host = i < hosts.size() ? hosts[i] : "";
        out[i].hostaddr = i < addrs.size() ? addrs[i] : "";
        if (out[i].host.empty())
            out[i].host = out[i].hostaddr;
        out[i].port = ports.size() == 1 ? ports[0] : i < ports.size() ? ports[i] : "";
        if (out[i].port.empty())
            out[i].port = "5432";
    }
    return out;
}

std::int64_t monotonic_ms()
{
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return std::int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

HostView read_host(const ipc::TableHeader& h, std::uint32_t index)
{
    const ipc::HostRow& row = h.hosts[index];
    HostView v;
    v.host = row.host.get();
    v.port = row.port.load(std::memory_order_relaxed);
    for (int attempt = 0; attempt < 1000; ++attempt) {
        const std::uint32_t before = row.seq.load(std::memory_order_acquire);
        if (before & 1)
            continue;
        v.state = ipc::HostState(row.state.load(std::memory_order_relaxed));
        v.role = ipc::HostRole(row.role.load(std::memory_order_relaxed));
        v.role_gen = row.role_gen.load(std::memory_order_relaxed);
        v.lag_bytes = row.lag_bytes.load(std::memory_order_relaxed);
        v.lag_ms = row.lag_ms.load(std::memory_order_relaxed);
        v.checked_ms = row.checked_ms.load(std::memory_order_relaxed);
        v.checks = row.checks.load(std::memory_order_relaxed);
        v.failures = row.failures.load(std::memory_order_relaxed);
        v.error = row.error.get();
        std::atomic_thread_fence(std::memory_order_acquire);
        if (row.seq.load(std::memory_order_relaxed) == before)
            break;
    }
    v.banned_until_ms = row.banned_until_ms.load(std::memory_order_relaxed);
    v.listed = row.listed.load(std::memory_order_relaxed) != 0;
    return v;
}

int find_host(const ipc::TableHeader& h, const std::string& host, unsigned port)
{
    const std::uint32_t n = std::min(h.host_rows.load(std::memory_order_acquire), ipc::kHostRows);
    for (std::uint32_t i = 0; i < n; ++i)
        if (h.hosts[i].port.load(std::memory_order_relaxed) == port && h.hosts[i].host.get() == host)
            return int(i);
    return -1;
}

int claim_host(ipc::TableHeader& h, const std::string& host, unsigned port)
{
    if (int i = find_host(h, host, port); i >= 0) {
        h.hosts[i].listed.store(1, std::memory_order_relaxed);
        return i;
    }
    const std::uint32_t n = h.host_rows.load(std::memory_order_relaxed);
    if (n >= ipc::kHostRows)
        return -1;
    ipc::HostRow& row = h.hosts[n];
    row.host.set(host);
    row.port.store(port, std::memory_order_relaxed);
    row.listed.store(1, std::memory_order_relaxed);
    h.host_rows.store(n + 1, std::memory_order_release);
    return int(n);
}

void list_hosts(ipc::TableHeader& h, const std::vector<std::pair<std::string, unsigned>>& checked)
{
    const std::uint32_t n = std::min(h.host_rows.load(std::memory_order_acquire), ipc::kHostRows);
    for (std::uint32_t i = 0; i < n; ++i) {
        ipc::HostRow& row = h.hosts[i];
        const std::pair<std::string, unsigned> key{row.host.get(), row.port.load(std::memory_order_relaxed)};
        const bool listed = std::find(checked.begin(), checked.end(), key) != checked.end();
        row.listed.store(listed ? 1 : 0, std::memory_order_relaxed);
    }
}

void write_host(ipc::TableHeader& h, std::uint32_t index, const HostView& v)
{
    ipc::HostRow& row = h.hosts[index];
    const std::uint32_t seq = row.seq.load(std::memory_order_relaxed);
    row.seq.store(seq + 1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_release);
    row.state.store(std::uint32_t(v.state), std::memory_order_relaxed);
    row.role.store(std::uint32_t(v.role), std::memory_order_relaxed);
    row.role_gen.store(v.role_gen, std::memory_order_relaxed);
    row.lag_bytes.store(v.lag_bytes, std::memory_order_relaxed);
    row.lag_ms.store(v.lag_ms, std::memory_order_relaxed);
    row.checked_ms.store(v.checked_ms, std::memory_order_relaxed);
    row.checks.store(v.checks, std::memory_order_relaxed);
    row.failures.store(v.failures, std::memory_order_relaxed);
    row.error.set(v.error);
    row.seq.store(seq + 2, std::memory_order_release);
}

void ban_host(ipc::TableHeader& h, std::uint32_t index, std::int64_t until_ms)
{
    h.hosts[index].banned_until_ms.store(until_ms, std::memory_order_relaxed);
}

const char* role_name(ipc::HostRole r)
{
    switch (r) {
    case ipc::HostRole::Primary:
        return "primary";
    case ipc::HostRole::Standby:
        return "standby";
    case ipc::HostRole::Unknown:
        break;
    }
    return "unknown";
}

const char* state_name(ipc::HostState s)
{
    switch (s) {
    case ipc::HostState::Up:
        return "up";
    case ipc::HostState::Down:
        return "down";
    case ipc::HostState::Unknown:
        break;
    }
    return "unchecked";
}

std::optional<Target> parse_target(const std::string& text)
{
    if (text.empty() || text == "any")
        return Target::Any;
    if (text == "read-write")
        return Target::ReadWrite;
    if (text == "read-only")
        return Target::ReadOnly;
    if (text == "primary")
        return Target::Primary;
    if (text == "standby")
        return Target::Standby;
    if (text == "prefer-standby")
        return Target::PreferStandby;
    return std::nullopt;
}

const char* target_name(Target t)
{
    switch (t) {
    case Target::Any:
        return "any";
    case Target::ReadWrite:
        return "read-write";
    case Target::ReadOnly:
        return "read-only";
    case Target::Primary:
        return "primary";
    case Target::Standby:
        return "standby";
    case Target::PreferStandby:
        return "prefer-standby";
    }
    return "any";
}

bool role_fits(Target t, ipc::HostRole role)
{
    switch (t) {
    case Target::Any:
    case Target::PreferStandby:
        return true;
    case Target::ReadWrite:
    case Target::Primary:
        return role == ipc::HostRole::Primary;
    case Target::ReadOnly:
    case Target::Standby:
        return role == ipc::HostRole::Standby;
    }
    return false;
}

Choice choose_hosts(const std::vector<Candidate>& hosts, Target target, const config::ReplicaSettings& r,
                    std::int64_t now_ms, std::uint64_t counter, std::uint64_t random)
{
    Choice c;
    if (std::none_of(hosts.begin(), hosts.end(), [](const Candidate& h) { return h.listed; })) {
        c.order.resize(hosts.size());
        std::iota(c.order.begin(), c.order.end(), std::size_t(0));
        c.unchecked = true;
        return c;
    }
    // Preferred: the role asked for (for prefer-standby: standbys); then, for
    // prefer-standby, primaries; last, hosts not checked yet (libpq checks their role).
    std::vector<std::size_t> first, then, unknown;
    size_t down = 0, banned = 0, lagging = 0, other_role = 0;
    const bool wants_standby = target == Target::Standby || target == Target::ReadOnly;
    for (std::size_t i = 0; i < hosts.size(); ++i) {
        const Candidate& h = hosts[i];
        if (!h.listed || h.view.state == ipc::HostState::Unknown) {
            unknown.push_back(i);
            continue;
        }
        if (h.view.state == ipc::HostState::Down) {
            ++down;
            continue;
        }
        if (h.view.banned_until_ms > now_ms) {
            ++banned;
            continue;
        }
        const ipc::HostRole role = h.view.role;
        if (role == ipc::HostRole::Standby && target != Target::Any &&
            ((r.max_lag_bytes >= 0 && h.view.lag_bytes > std::uint64_t(r.max_lag_bytes)) ||
             (r.max_lag_ms >= 0 && h.view.lag_ms > r.max_lag_ms))) {
            ++lagging;
            continue;
        }
        if (!role_fits(target, role)) {
            ++other_role;
            continue;
        }
        if (target == Target::PreferStandby && role != ipc::HostRole::Standby)
            then.push_back(i);
        else
            first.push_back(i);
    }
    balance(first, r.load_balance, counter, random, hosts);
    balance(then, r.load_balance, counter, random, hosts);
    c.order = first;
    c.order.insert(c.order.end(), then.begin(), then.end());
    c.order.insert(c.order.end(), unknown.begin(), unknown.end());
    if (c.order.empty()) {
        const char* wanted = target == Target::Any ? "host"
                             : wants_standby       ? "standby"
                             : target == Target::PreferStandby ? "host"
                                                               : "primary";
        c.why_none = std::string("no ") + wanted + " of its " + std::to_string(hosts.size()) +
                     " hosts is usable (target_session_attrs=" + target_name(target) + "): ";
        std::string parts;
        auto add = [&](size_t n, const char* what) {
            if (n == 0)
                return;
            if (!parts.empty())
                parts += ", ";
            parts += std::to_string(n) + " " + what;
        };
        add(down, "down");
        add(banned, "refused a connection lately (ban_time)");
        add(lagging, "lagging more than max_replica_lag");
        add(other_role, wants_standby ? "primary" : "standby");
        c.why_none += parts;
    }
    return c;
}

Attempts plan_connection(const Params& params, const config::ReplicaSettings& r, ipc::TableHeader& h,
                         const std::vector<std::uint32_t>* sessions)
{
    Attempts a;
    const std::string* tsa = param(params, "target_session_attrs");
    a.target = tsa ? parse_target(*tsa).value_or(Target::Any) : Target::Any;
    const std::vector<HostAddress> hosts = hosts_of(params);
    if (hosts.size() <= 1 && a.target == Target::Any) {
        a.tries.push_back({params, -1});
        return a;
    }
    std::vector<Candidate> candidates(hosts.size());
    std::vector<int> rows(hosts.size(), -1);
    for (size_t i = 0; i < hosts.size(); ++i) {
        rows[i] = find_host(h, hosts[i].host, unsigned(std::strtoul(hosts[i].port.c_str(), nullptr, 10)));
        if (rows[i] >= 0) {
            candidates[i].listed = true;
            candidates[i].view = read_host(h, std::uint32_t(rows[i]));
            if (sessions && size_t(rows[i]) < sessions->size())
                candidates[i].sessions = (*sessions)[size_t(rows[i])];
        }
    }
    const std::uint64_t counter = h.balance_counter.fetch_add(1, std::memory_order_relaxed);
    const std::uint64_t random = std::uint64_t(monotonic_ms()) * 2654435761u ^ std::uint64_t(getpid());
    Choice c = choose_hosts(candidates, a.target, r, monotonic_ms(), counter, random);
    if (c.unchecked) {
        // Nothing known yet: libpq goes through the list and checks each host's role.
        a.tries.push_back({params, -1});
        return a;
    }
    a.why_none = c.why_none;
    auto attempt = [&](std::size_t i) {
        Attempt t;
        // prefer-standby on one host would make libpq connect twice when it is a
        // primary (a look for a standby, then any); the choice has been made here.
        const bool relax = a.target == Target::PreferStandby && candidates[i].listed;
        for (const auto& [k, v] : params)
            if (k != "host" && k != "hostaddr" && k != "port" && k != "load_balance_hosts" &&
                !(relax && k == "target_session_attrs"))
                t.params.emplace_back(k, v);
        t.params.emplace_back("host", hosts[i].host);
        if (!hosts[i].hostaddr.empty())
            t.params.emplace_back("hostaddr", hosts[i].hostaddr);
        t.params.emplace_back("port", hosts[i].port);
        t.row = rows[i];
        return t;
    };
    for (std::size_t i : c.order)
        a.tries.push_back(attempt(i));
    for (std::size_t i = 0; i < hosts.size(); ++i)
        a.every.push_back(attempt(i));
    return a;
}

HostWatch watch_of(const ipc::TableHeader& h, Target target, const char* host, const char* port)
{
    HostWatch w;
    if (target == Target::Any || !host || !port)
        return w;
    w.row = find_host(h, host, unsigned(std::strtoul(port, nullptr, 10)));
    if (w.row >= 0)
        w.role_gen = h.hosts[w.row].role_gen.load(std::memory_order_acquire);
    w.label = std::string(host) + ":" + port;
    return w;
}

std::vector<std::uint32_t> sessions_by_host(const ipc::SessionTable& t)
{
    std::vector<std::uint32_t> out(std::min(t.header()->host_rows.load(std::memory_order_acquire), ipc::kHostRows));
    if (out.empty())
        return out;
    for (std::uint32_t i = 0; i < t.capacity(); ++i) {
        const ipc::Slot& s = t.slot(i);
        if (s.owner_pid.load(std::memory_order_relaxed) == 0)
            continue;
        for (const auto& row : s.host_rows) {
            const std::uint32_t r = row.load(std::memory_order_relaxed);
            if (r > 0 && r <= out.size())
                ++out[r - 1];
        }
    }
    return out;
}

void note_session_host(const ipc::TableHeader& h, ipc::Slot* slot, int which, const char* host, const char* port)
{
    if (!slot)
        return;
    int row = -1;
    if (host && port && h.host_rows.load(std::memory_order_acquire) > 0)
        row = find_host(h, host, unsigned(std::strtoul(port, nullptr, 10)));
    slot->host_rows[which].store(std::uint32_t(row + 1), std::memory_order_relaxed);
}

bool role_changed(const ipc::TableHeader& h, const HostWatch& w, ipc::HostRole* now_role)
{
    if (w.row < 0 || h.hosts[w.row].role_gen.load(std::memory_order_acquire) == w.role_gen)
        return false;
    if (now_role)
        *now_role = read_host(h, std::uint32_t(w.row)).role;
    return true;
}

} // namespace pgw::health
