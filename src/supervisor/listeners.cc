// Opening listeners with clear errors (address in use, permission denied) naming
// the address, so a failed start says what to fix.
#include "supervisor/listeners.hh"

#include "common/log.hh"
#include "common/net.hh"

#include <fcntl.h>
#include <netdb.h>
#include <systemd/sd-daemon.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>

namespace pgw::supervisor {
namespace {

// The kernel's cap on a listen backlog (net.core.somaxconn): 4096 since Linux 5.4.
int somaxconn()
{
    UniqueFd fd(::open("/proc/sys/net/core/somaxconn", O_RDONLY | O_CLOEXEC));
    char buf[32] = {};
    if (!fd.valid() || ::read(fd.get(), buf, sizeof buf - 1) <= 0)
        return SOMAXCONN;
    const long v = std::strtol(buf, nullptr, 10);
    return v > 0 && v <= 1 << 30 ? int(v) : SOMAXCONN;
}

std::string sockaddr_name(const sockaddr* sa, socklen_t len)
{
    char host[NI_MAXHOST], serv[NI_MAXSERV];
    if (getnameinfo(sa, len, host, sizeof host, serv, sizeof serv, NI_NUMERICHOST | NI_NUMERICSERV) != 0)
        return "?";
    return sa->sa_family == AF_INET6 ? "[" + std::string(host) + "]:" + serv
                                     : std::string(host) + ":" + serv;
}

Status open_tcp(const std::string& addr, long port, int backlog, std::vector<Listener>& out)
{
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    addrinfo* res = nullptr;
    std::string service = std::to_string(port);
    int rc = getaddrinfo(addr == "*" ? nullptr : addr.c_str(), service.c_str(), &hints, &res);
    if (rc != 0)
        return Error{"listen_addr \"" + addr + "\": " + gai_strerror(rc)};
    std::unique_ptr<addrinfo, void (*)(addrinfo*)> guard(res, freeaddrinfo);
    for (addrinfo* ai = res; ai; ai = ai->ai_next) {
        std::string name = sockaddr_name(ai->ai_addr, ai->ai_addrlen);
        UniqueFd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol));
        if (!fd.valid()) {
            if (errno == EAFNOSUPPORT && addr == "*")
                continue;  // no IPv6 on this host: "*" still means every family there is
            return Error{"could not create socket for " + name + ": " + std::strerror(errno)};
        }
        int one = 1;
        setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (ai->ai_family == AF_INET6)
            setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
        if (::bind(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0)
            return Error{"could not bind to " + name + ": " + std::strerror(errno) +
                         (errno == EADDRINUSE ? " (is another pgwicket or PostgreSQL running on this port?)" : "")};
        if (::listen(fd.get(), backlog) != 0)
            return Error{"could not listen on " + name + ": " + std::strerror(errno)};
        net::tune_listener(fd.get());
        out.push_back(Listener{std::move(fd), ListenerKind::Tcp, name, ""});
    }
    return ok_status();
}

Status open_unix(const config::Config& cfg, int backlog, std::vector<Listener>& out)
{
    std::string path = unix_socket_path(cfg.unix_socket_dir, cfg.listen_port);
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    if (path.size() >= sizeof sun.sun_path)
        return Error{"Unix socket path \"" + path + "\" is too long"};
    std::memcpy(sun.sun_path, path.c_str(), path.size() + 1);

    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd.valid())
        return Error{"could not create Unix socket: " + std::string(std::strerror(errno))};

    // A socket file left by a crash is removed; one that still answers is in use.
    struct stat st {};
    if (lstat(path.c_str(), &st) == 0) {
        if (!S_ISSOCK(st.st_mode))
            return Error{"\"" + path + "\" exists and is not a socket"};
        UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        if (probe.valid() && ::connect(probe.get(), reinterpret_cast<sockaddr*>(&sun), sizeof sun) == 0)
            return Error{"Unix socket \"" + path + "\" is in use by another server"};
        ::unlink(path.c_str());
    }
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&sun), sizeof sun) != 0)
        return Error{"could not bind Unix socket \"" + path + "\": " + std::strerror(errno)};
    if (::chmod(path.c_str(), mode_t(cfg.unix_socket_mode)) != 0)
        log_warning("could not set mode of \"%s\": %s", path.c_str(), std::strerror(errno));
    if (::listen(fd.get(), backlog) != 0) {
        ::unlink(path.c_str());
        return Error{"could not listen on Unix socket \"" + path + "\": " + std::strerror(errno)};
    }
    out.push_back(Listener{std::move(fd), ListenerKind::Unix, path, path});
    return ok_status();
}

} // namespace

int listen_backlog(const config::Config& cfg)
{
    const int cap = somaxconn();
    if (cfg.listen_backlog <= 0)
        return cap;
    if (cfg.listen_backlog > cap) {
        log_warning("listen_backlog %ld is above the kernel's limit, net.core.somaxconn = %d, which applies "
                    "instead; raise that sysctl for a longer queue", cfg.listen_backlog, cap);
        return cap;
    }
    return int(cfg.listen_backlog);
}

std::string unix_socket_path(const std::string& dir, long port)
{
    return dir + "/.s.PGSQL." + std::to_string(port);
}

Result<Listener> open_metrics_listener(const std::string& host_port, int backlog)
{
    auto hp = config::parse_host_port(host_port);
    if (!hp)
        return Error{"metrics_listen: " + hp.error()};
    long port = std::strtol(hp->port.c_str(), nullptr, 10);
    std::vector<Listener> ls;
    if (auto st = open_tcp(hp->host.empty() ? "*" : hp->host, port, backlog, ls); !st)
        return Error{"metrics_listen: " + st.error()};
    if (ls.empty())
        return Error{"metrics_listen: \"" + host_port + "\" gave no address to listen on"};
    // One address is enough for a scrape target; "*" may give IPv4 and IPv6.
    ls.front().kind = ListenerKind::Metrics;
    return std::move(ls.front());
}

Result<std::vector<Listener>> take_activated_listeners()
{
    std::vector<Listener> out;
    char** names = nullptr;
    // unset_environment=1: workers must not believe the sockets are theirs.
    int n = sd_listen_fds_with_names(1, &names);
    if (n < 0)
        return Error{std::string("sd_listen_fds: ") + std::strerror(-n)};
    for (int i = 0; i < n; ++i) {
        int fd = SD_LISTEN_FDS_START + i;
        std::string fd_name = names && names[i] ? names[i] : "";
        if (sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, 1) <= 0) {
            out.clear();
            if (names)
                for (int j = 0; j < n; ++j)
                    free(names[j]);
            free(names);
            return Error{"file descriptor " + std::to_string(fd) + " passed by systemd" +
                         (fd_name.empty() ? "" : " (\"" + fd_name + "\")") +
                         " is not a listening stream socket; use ListenStream= in the .socket unit"};
        }
        Listener l;
        l.fd.reset(fd);
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        sockaddr_storage ss{};
        socklen_t len = sizeof ss;
        getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
        if (ss.ss_family == AF_UNIX) {
            l.kind = ListenerKind::Unix;
            l.name = reinterpret_cast<sockaddr_un*>(&ss)->sun_path;
        } else {
            l.kind = ListenerKind::Tcp;
            l.name = sockaddr_name(reinterpret_cast<sockaddr*>(&ss), len);
            net::tune_listener(fd);
        }
        if (fd_name == "metrics")
            l.kind = ListenerKind::Metrics;
        l.name += " (from systemd)";
        out.push_back(std::move(l));
    }
    if (names)
        for (int j = 0; j < n; ++j)
            free(names[j]);
    free(names);
    return out;
}

Result<std::vector<Listener>> open_listeners(const config::Config& cfg)
{
    std::vector<Listener> out;
    const int backlog = listen_backlog(cfg);
    for (const auto& addr : cfg.listen_addresses())
        if (auto st = open_tcp(addr, cfg.listen_port, backlog, out); !st) {
            for (auto& l : out)
                if (!l.unix_path.empty())
                    ::unlink(l.unix_path.c_str());
            return Error{st.error()};
        }
    if (!cfg.unix_socket_dir.empty())
        if (auto st = open_unix(cfg, backlog, out); !st)
            return Error{st.error()};
    if (!cfg.metrics_listen.empty()) {
        auto m = open_metrics_listener(cfg.metrics_listen, backlog);
        if (!m) {
            for (auto& l : out)
                if (!l.unix_path.empty())
                    ::unlink(l.unix_path.c_str());
            return Error{m.error()};
        }
        out.push_back(std::move(*m));
    }
    return out;
}

} // namespace pgw::supervisor
