// The upstream hosts of multi-host entries: their rows in the shared table (written by
// the health checker, read by workers and the console), and the choice of a host for a
// new upstream connection from those rows.
#pragma once

#include "config/config.hh"
#include "ipc/session_table.hh"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace pgw::health {

// One host of an entry's host list, as libpq would read host/hostaddr/port.
struct HostAddress {
    std::string host;      // the host name (or address) as written
    std::string hostaddr;  // when the entry gives hostaddr too
    std::string port;
};

// The entry's hosts, from its libpq parameters (host, hostaddr and port lists, with
// libpq's rules: one port for all, or one per host). Empty for an entry without host.
std::vector<HostAddress> hosts_of(const std::vector<std::pair<std::string, std::string>>& params);

// A consistent copy of one row.
struct HostView {
    std::string host;
    unsigned port = 0;
    ipc::HostState state = ipc::HostState::Unknown;
    ipc::HostRole role = ipc::HostRole::Unknown;
    std::uint32_t role_gen = 0;
    std::uint64_t lag_bytes = 0;
    std::int64_t lag_ms = 0;
    std::int64_t checked_ms = 0;
    std::int64_t banned_until_ms = 0;
    std::uint64_t checks = 0, failures = 0;
    std::string error;
    bool listed = true;  // the configuration in force checks it
};

// Row `index` (below host_rows), copied under its sequence lock.
HostView read_host(const ipc::TableHeader& h, std::uint32_t index);
// The row of host:port, or -1 when the checker has not listed it.
int find_host(const ipc::TableHeader& h, const std::string& host, unsigned port);
// The health checker's side: the row for host:port, claimed when new (-1: table full).
int claim_host(ipc::TableHeader& h, const std::string& host, unsigned port);
// After a reload: lists the rows of `checked` (host, port), the hosts the configuration
// now in force checks, and unlists every other row.
void list_hosts(ipc::TableHeader& h, const std::vector<std::pair<std::string, unsigned>>& checked);
// Writes the checker's fields of a row (not host, port or the ban).
void write_host(ipc::TableHeader& h, std::uint32_t index, const HostView& v);
// A worker could not connect to the host: pass it over until `until_ms` (monotonic).
void ban_host(ipc::TableHeader& h, std::uint32_t index, std::int64_t until_ms);
std::int64_t monotonic_ms();

const char* role_name(ipc::HostRole r);
const char* state_name(ipc::HostState s);

// libpq's target_session_attrs.
enum class Target { Any, ReadWrite, ReadOnly, Primary, Standby, PreferStandby };
std::optional<Target> parse_target(const std::string& text);
const char* target_name(Target t);
// Whether a host of this role serves sessions of that target (prefer-standby: either).
bool role_fits(Target t, ipc::HostRole role);

// What the chooser knows of one host of the entry.
struct Candidate {
    bool listed = false;  // the checker has a row for it (else: nothing known)
    HostView view;
    std::uint32_t sessions = 0;  // sessions connected to it now (least-connections)
};

struct Choice {
    // Hosts to try, best first (indexes into the entry's host list). When nothing is
    // known of any host yet (the checker has not answered), every host, as written,
    // and `unchecked`: libpq then picks by target_session_attrs itself.
    std::vector<std::size_t> order;
    bool unchecked = false;
    std::string why_none;  // when `order` is empty: why no host fits, for the client
};

// The hosts that fit `target`: up (or not yet checked), not banned, and standbys
// within the lag limits; prefer-standby puts primaries after every fitting standby.
// Within a group, load_balance orders them: round-robin from `counter`, random from
// `random`, as written, or fewest sessions first (ties in turn from `counter`).
Choice choose_hosts(const std::vector<Candidate>& hosts, Target target, const config::ReplicaSettings& r,
                    std::int64_t now_ms, std::uint64_t counter, std::uint64_t random);

// The upstream connections to try for a session of `entry`, best first, from the host
// rows: each with a single host (and the row to ban if it fails, -1 when unlisted). An
// entry of one host without target_session_attrs comes back as it is. Empty, with
// `why_none` set, when no host fits.
using Params = std::vector<std::pair<std::string, std::string>>;
struct Attempt {
    Params params;
    int row = -1;
};
struct Attempts {
    std::vector<Attempt> tries;
    // Every host of a multi-host entry, as written, whether it fits now or not (a
    // session moved to a warm worker goes on with the host its first worker chose).
    std::vector<Attempt> every;
    std::string why_none;
    Target target = Target::Any;
};
// `sessions` (least-connections only): sessions per host row, from sessions_by_host.
Attempts plan_connection(const Params& params, const config::ReplicaSettings& r, ipc::TableHeader& h,
                         const std::vector<std::uint32_t>* sessions = nullptr);

// Sessions per host row: each live slot's upstream and standby connections.
std::vector<std::uint32_t> sessions_by_host(const ipc::SessionTable& t);
// The slot's connection `which` (0: its upstream, 1: its read-routing standby) goes to
// host:port now (a host without a row: none), or to no host (host null).
void note_session_host(const ipc::TableHeader& h, ipc::Slot* slot, int which, const char* host, const char* port);

// What a session remembers of its upstream host, to end when the host changes role
// (failover): the row and its role_gen at connect time.
struct HostWatch {
    int row = -1;  // -1: nothing to watch
    std::uint32_t role_gen = 0;
    std::string label;  // host:port
};
// The watch for a connection made for `target` (none for any, or an unlisted host).
HostWatch watch_of(const ipc::TableHeader& h, Target target, const char* host, const char* port);
// Whether the watched host has changed role since; `now_role` says to what.
bool role_changed(const ipc::TableHeader& h, const HostWatch& w, ipc::HostRole* now_role);

} // namespace pgw::health
