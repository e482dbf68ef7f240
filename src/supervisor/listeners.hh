// Listening sockets: TCP on each listen_addr (IPv4 and IPv6) and the Unix socket
// <unix_socket_dir>/.s.PGSQL.<port>, named as PostgreSQL names it so psql -h DIR works.
#pragma once

#include "common/result.hh"
#include "common/unique_fd.hh"
#include "config/config.hh"

#include <string>
#include <vector>

namespace pgw::supervisor {

enum class ListenerKind { Tcp = 0, Unix = 1 };

struct Listener {
    UniqueFd fd;
    ListenerKind kind = ListenerKind::Tcp;
    std::string name;       // "127.0.0.1:6432", "[::1]:6432" or the socket path
    std::string unix_path;  // removed when the supervisor stops
};

Result<std::vector<Listener>> open_listeners(const config::Config& cfg);

// PostgreSQL's socket file name for a port.
std::string unix_socket_path(const std::string& dir, long port);

} // namespace pgw::supervisor
