// A deliberately small HTTP/1.x responder: one request per connection, a size cap
// and a deadline on the request, Connection: close. Nothing else is served.
#include "admin/metrics_http.hh"

#include "admin/stats.hh"
#include "common/log.hh"
#include "common/net.hh"
#include "session/exit_codes.hh"

#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <string>

namespace pgw::admin {
namespace {

using namespace std::chrono_literals;

constexpr size_t kMaxRequest = 8192;

// HEAD gets the headers GET would, without the body.
void respond(int fd, const char* status, const std::string& content_type, const std::string& body,
             net::Clock::time_point deadline, bool head_only = false, const char* extra_header = "")
{
    std::string head = std::string("HTTP/1.1 ") + status + "\r\nContent-Type: " + content_type +
                       "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n" + extra_header +
                       "Connection: close\r\n\r\n";
    if (net::write_all(fd, head.data(), head.size(), deadline) && !head_only)
        net::write_all(fd, body.data(), body.size(), deadline);
}

} // namespace

int serve_metrics(int fd, const ipc::SessionTable& table)
{
    const auto deadline = net::Clock::now() + 5s;
    if (!net::set_nonblocking(fd))
        return session::kExitClientError;
    std::string req;
    while (req.find("\r\n\r\n") == std::string::npos && req.find("\n\n") == std::string::npos) {
        if (req.size() >= kMaxRequest) {
            respond(fd, "431 Request Header Fields Too Large", "text/plain", "request too large\n", deadline);
            return session::kExitClientError;
        }
        pollfd p{fd, POLLIN, 0};
        int rc = ::poll(&p, 1, net::ms_until(deadline));
        if (rc == 0) {
            log_debug("metrics: request not received within 5 s");
            return session::kExitStartupTimeout;
        }
        if (rc < 0 && errno == EINTR)
            continue;
        char buf[2048];
        ssize_t n = ::read(fd, buf, std::min(sizeof buf, kMaxRequest - req.size()));
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (n <= 0)
            return session::kExitOk;
        req.append(buf, size_t(n));
    }
    const std::string line = req.substr(0, req.find_first_of("\r\n"));
    const size_t sp1 = line.find(' ');
    const size_t sp2 = sp1 == std::string::npos ? std::string::npos : line.find(' ', sp1 + 1);
    if (sp2 == std::string::npos || line.compare(sp2 + 1, 5, "HTTP/") != 0) {
        respond(fd, "400 Bad Request", "text/plain", "malformed request line\n", deadline);
        return session::kExitClientError;
    }
    const std::string method = line.substr(0, sp1);
    std::string path = line.substr(sp1 + 1, sp2 - sp1 - 1);
    path = path.substr(0, path.find('?'));
    if (method != "GET" && method != "HEAD") {
        respond(fd, "405 Method Not Allowed", "text/plain", "only GET is served\n", deadline, false,
                "Allow: GET, HEAD\r\n");
        return session::kExitClientError;
    }
    if (path == "/healthz") {
        // A load balancer's health check: draining instances take no new sessions.
        const bool draining = table.header()->draining.load(std::memory_order_relaxed) != 0;
        respond(fd, draining ? "503 Service Unavailable" : "200 OK", "text/plain", draining ? "draining\n" : "ok\n",
                deadline, method == "HEAD");
        net::linger_close(fd, net::Clock::now() + 1s);
        return session::kExitOk;
    }
    if (path != "/metrics" && path != "/") {
        respond(fd, "404 Not Found", "text/plain", "metrics are at /metrics, health at /healthz\n", deadline);
        return session::kExitOk;
    }
    std::string body = render_prometheus(collect(table));
    respond(fd, "200 OK", "text/plain; version=0.0.4; charset=utf-8", body, deadline, method == "HEAD");
    net::linger_close(fd, net::Clock::now() + 1s);
    return session::kExitOk;
}

} // namespace pgw::admin
