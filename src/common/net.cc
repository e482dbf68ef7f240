// Socket helpers; every wait is a poll() bounded by a deadline.
#include "common/net.hh"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace pgw::net {

Status set_nonblocking(int fd)
{
    int flags = fcntl(fd, F_GETFL);
    if (flags >= 0 && (flags & O_NONBLOCK))
        return ok_status();  // already (a pooled upstream, a moved client)
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return Error{std::string("fcntl(O_NONBLOCK): ") + std::strerror(errno)};
    return ok_status();
}

void tune_client_socket(int fd)
{
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0 ||
        (ss.ss_family != AF_INET && ss.ss_family != AF_INET6))
        return;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
}

void tune_listener(int fd) { tune_client_socket(fd); }

std::string peer_host(const sockaddr_storage& addr, socklen_t len)
{
    char host[INET6_ADDRSTRLEN] = "?";
    if (addr.ss_family == AF_INET && len >= sizeof(sockaddr_in)) {
        auto* a = reinterpret_cast<const sockaddr_in*>(&addr);
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
    } else if (addr.ss_family == AF_INET6 && len >= sizeof(sockaddr_in6)) {
        auto* a = reinterpret_cast<const sockaddr_in6*>(&addr);
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
    } else if (addr.ss_family == AF_UNIX) {
        return "[local]";
    }
    return host;
}

std::string describe_peer(const sockaddr_storage& addr, socklen_t len)
{
    std::string host = peer_host(addr, len);
    if (addr.ss_family == AF_INET)
        return host + ":" + std::to_string(ntohs(reinterpret_cast<const sockaddr_in*>(&addr)->sin_port));
    if (addr.ss_family == AF_INET6)
        return "[" + host + "]:" +
               std::to_string(ntohs(reinterpret_cast<const sockaddr_in6*>(&addr)->sin6_port));
    return host;
}

int ms_until(Clock::time_point deadline)
{
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0)
        return 0;
    // +1 so a poll never wakes a hair early and spins once more.
    return left.count() > 86400000 ? 86400000 : int(left.count()) + 1;
}

ReadStatus read_exact(int fd, void* buf, size_t n, Clock::time_point deadline)
{
    size_t got = 0;
    return read_between(fd, buf, n, n, deadline, got);
}

ReadStatus read_between(int fd, void* buf, size_t min, size_t max, Clock::time_point deadline, size_t& got)
{
    auto* p = static_cast<char*>(buf);
    got = 0;
    while (got < min) {
        ssize_t r = ::read(fd, p + got, max - got);
        if (r > 0) {
            got += size_t(r);
            continue;
        }
        if (r == 0)
            return ReadStatus::Eof;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return ReadStatus::Error;
        int ms = ms_until(deadline);
        if (ms == 0)
            return ReadStatus::Timeout;
        pollfd pfd{fd, POLLIN, 0};
        int pr = ::poll(&pfd, 1, ms);
        if (pr == 0)
            return ReadStatus::Timeout;
        if (pr < 0 && errno != EINTR)
            return ReadStatus::Error;
    }
    return ReadStatus::Ok;
}

bool readable_now(int fd)
{
    char b;
    return ::recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) > 0;
}

void discard_pending(int fd, size_t limit)
{
    char buf[4096];
    for (size_t total = 0; total < limit;) {
        ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n <= 0)
            return;
        total += size_t(n);
    }
}

bool write_all(int fd, const void* buf, size_t n, Clock::time_point deadline)
{
    auto* p = static_cast<const char*>(buf);
    size_t done = 0;
    while (done < n) {
        ssize_t w = ::send(fd, p + done, n - done, MSG_NOSIGNAL);
        if (w > 0) {
            done += size_t(w);
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            return false;
        int ms = ms_until(deadline);
        if (ms == 0)
            return false;
        pollfd pfd{fd, POLLOUT, 0};
        if (::poll(&pfd, 1, ms) < 0 && errno != EINTR)
            return false;
    }
    return true;
}

void linger_close(int fd, Clock::time_point deadline, size_t limit)
{
    ::shutdown(fd, SHUT_WR);
    char sink[4096];
    size_t seen = 0;
    while (seen < limit) {
        ssize_t r = ::read(fd, sink, sizeof sink);
        if (r > 0) {
            seen += size_t(r);
            continue;
        }
        if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
            return;
        int ms = ms_until(deadline);
        if (ms == 0)
            return;
        pollfd pfd{fd, POLLIN, 0};
        if (::poll(&pfd, 1, ms) <= 0)
            return;
    }
}

} // namespace pgw::net
