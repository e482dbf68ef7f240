// Listening sockets: TCP on each listen_addr (IPv4 and IPv6) and the Unix socket
// <unix_socket_dir>/.s.PGSQL.<port>, named as PostgreSQL names it so psql -h DIR works.
#pragma once

#include "common/result.hh"
#include "common/unique_fd.hh"
#include "config/config.hh"

#include <string>
#include <vector>

namespace pgw::supervisor {

enum class ListenerKind { Tcp = 0, Unix = 1, Metrics = 2 };

struct Listener {
    UniqueFd fd;
    ListenerKind kind = ListenerKind::Tcp;
    std::string name;       // "127.0.0.1:6432", "[::1]:6432" or the socket path
    std::string unix_path;  // removed when the supervisor stops (never for systemd's)
};

// The client listeners from listen_addr and unix_socket_dir, and the metrics
// listener when metrics_listen is set.
Result<std::vector<Listener>> open_listeners(const config::Config& cfg);

// Sockets passed by systemd (sd_listen_fds). Returns an empty vector when none
// were passed. A socket named "metrics" (FileDescriptorName=) serves metrics.
Result<std::vector<Listener>> take_activated_listeners();

Result<Listener> open_metrics_listener(const std::string& host_port, int backlog);

// The backlog our own listeners get: listen_backlog, or when 0 (the default) the most
// the kernel allows (net.core.somaxconn), so a burst of connects waits in the queue
// instead of being dropped while the supervisor accepts.
int listen_backlog(const config::Config& cfg);

// PostgreSQL's socket file name for a port.
std::string unix_socket_path(const std::string& dir, long port);

} // namespace pgw::supervisor
