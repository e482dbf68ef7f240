// Long-lived helper processes the supervisor keeps beside its workers (the health
// checker; the signing-key fetcher): each forked from the supervisor with the
// configuration in force, restarted when it exits, and stopped at shutdown.
#pragma once

#include "common/net.hh"
#include "config/config.hh"
#include "ipc/session_table.hh"

#include <sys/types.h>

#include <functional>
#include <string>
#include <vector>

namespace pgw::supervisor {

class AuxProcess {
public:
    // Runs in the child, after the supervisor's descriptors are closed and its signal
    // mask cleared (SIGTERM, SIGINT and SIGHUP back to their defaults: a helper that
    // wants to end cleanly installs handlers of its own). Returns the exit status.
    using Main = std::function<int(const config::Config& cfg, const ipc::SessionTable& table)>;
    // Whether a configuration needs it at all (a health checker with no host to check
    // does not run).
    using Wanted = std::function<bool(const config::Config& cfg)>;

    AuxProcess(std::string name, Main main, Wanted wanted);

    // Asks the configuration whether it wants this helper; at start and on every reload
    // only (the health checker's answer parses every entry's connection string, too
    // much for every round of the supervisor's loop).
    void configure(const config::Config& cfg) { wanted_now_ = wanted_(cfg); }
    // Whether start() should run now: wanted, not running, and the delay after its last
    // exit has passed. Cheap, for every round of the loop.
    bool due(net::Clock::time_point now) const { return pid_ <= 0 && wanted_now_ && now >= not_before_; }
    // Forks it (when due()); the child closes what close_in_child() lists (called in the
    // child: the list names every worker's channel). False when fork failed (tried again
    // after a delay).
    bool start(const config::Config& cfg, const ipc::SessionTable& table,
               const std::function<std::vector<int>()>& close_in_child, net::Clock::time_point now);
    // A reaped child: true when it was this helper (its exit is logged, and its restart
    // delayed: 1 s, doubled up to 30 s while it keeps ending within a minute of starting).
    bool reaped(pid_t pid, int status, net::Clock::time_point now);
    // SIGTERM (a reload restarts it with the new configuration through start();
    // SIGKILL for a stop that cannot wait).
    void signal(int sig) const;
    bool running() const { return pid_ > 0; }
    pid_t pid() const { return pid_; }
    const std::string& name() const { return name_; }
    // When start() should be called again (a restart delay running out); max() when
    // nothing is due.
    net::Clock::time_point next_start() const;

private:
    std::string name_;
    Main main_;
    Wanted wanted_;
    pid_t pid_ = 0;
    bool wanted_now_ = false;
    net::Clock::time_point started_{}, not_before_{};
    std::chrono::seconds delay_{0};
};

} // namespace pgw::supervisor
