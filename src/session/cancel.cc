// Cancel routing. Bad keys are logged at a shared, rate-limited pace so a flood of
// bogus requests cannot flood the log either; nothing here ever touches another session.
#include "session/cancel.hh"

#include "common/log.hh"
#include "common/net.hh"
#include "common/unique_fd.hh"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>

namespace pgw::session {
namespace {

using namespace std::chrono_literals;

// Connects to a peer (TCP, or a Unix socket directory as libpq understands it)
// within the deadline and sends the forwarded request.
Status forward_to_peer(const config::PeerEntry& peer, const protocol::Bytes& packet,
                       net::Clock::time_point deadline)
{
    std::vector<std::pair<sockaddr_storage, socklen_t>> targets;
    if (!peer.host.empty() && peer.host[0] == '/') {
        sockaddr_storage ss{};
        auto* sun = reinterpret_cast<sockaddr_un*>(&ss);
        sun->sun_family = AF_UNIX;
        std::string path = peer.host + "/.s.PGSQL." + peer.port;
        if (path.size() >= sizeof sun->sun_path)
            return Error{"socket path too long"};
        std::memcpy(sun->sun_path, path.c_str(), path.size() + 1);
        targets.emplace_back(ss, socklen_t(sizeof(sockaddr_un)));
    } else {
        addrinfo hints{};
        hints.ai_socktype = SOCK_STREAM;
        addrinfo* res = nullptr;
        int rc = getaddrinfo(peer.host.c_str(), peer.port.c_str(), &hints, &res);
        if (rc != 0)
            return Error{std::string(gai_strerror(rc))};
        for (addrinfo* ai = res; ai; ai = ai->ai_next) {
            sockaddr_storage ss{};
            std::memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
            targets.emplace_back(ss, ai->ai_addrlen);
        }
        freeaddrinfo(res);
    }
    std::string last = "no address";
    for (const auto& [addr, len] : targets) {
        UniqueFd fd(::socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
        if (!fd.valid())
            continue;
        if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), len) != 0) {
            if (errno != EINPROGRESS) {
                last = std::strerror(errno);
                continue;
            }
            pollfd p{fd.get(), POLLOUT, 0};
            int err = 0;
            socklen_t elen = sizeof err;
            if (::poll(&p, 1, net::ms_until(deadline)) <= 0 ||
                getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &elen) != 0 || err != 0) {
                last = err ? std::strerror(err) : "timed out";
                continue;
            }
        }
        if (!net::write_all(fd.get(), packet.data(), packet.size(), deadline)) {
            last = "write failed";
            continue;
        }
        // Wait for the peer to close, as libpq does, so the request is surely read.
        char b;
        net::read_exact(fd.get(), &b, 1, deadline);
        return ok_status();
    }
    return Error{last};
}

} // namespace

void handle_cancel_request(const config::Config& cfg, const ipc::SessionTable& table,
                           const protocol::CancelRequest& req, std::uint32_t hops,
                           const std::string& from, ipc::Counters* counters)
{
    auto count = [counters](ipc::Counter c) {
        if (counters)
            counters->add(c, 1);
    };
    const ipc::CancelRoute route = ipc::route_cancel(table, {req.pid, req.secret});
    if (route.verdict == ipc::CancelVerdict::Routed) {
        count(ipc::kCancelRouted);
        log_info("cancel request from %s for session C-%llu routed to its worker", from.c_str(),
                 (unsigned long long)route.session_id);
        return;
    }
    if (route.verdict == ipc::CancelVerdict::NotActive || route.verdict == ipc::CancelVerdict::Raced ||
        route.verdict == ipc::CancelVerdict::OwnerGone) {
        // The key is one of ours: nothing to forward.
        count(route.verdict == ipc::CancelVerdict::NotActive ? ipc::kCancelNotActive : ipc::kCancelRejected);
        log_debug("cancel request from %s for session C-%llu ignored: %s", from.c_str(),
                  (unsigned long long)route.session_id, ipc::cancel_verdict_name(route.verdict));
        return;
    }
    // Not a session of this instance: behind a load balancer, the CancelRequest may have
    // landed on another instance than its session. Each peer is asked once; a request a
    // peer forwarded is never forwarded again, so a misconfiguration cannot loop.
    if (cfg.peers.empty()) {
        count(ipc::kCancelRejected);
        if (table.may_log_bad_cancel())
            log_info("cancel request from %s ignored: %s", from.c_str(), ipc::cancel_verdict_name(route.verdict));
        return;
    }
    if (hops + 1 >= protocol::kMaxCancelHops) {
        count(ipc::kCancelRejected);
        if (table.may_log_bad_cancel())
            log_info("cancel request from %s, forwarded by a peer, ignored: %s; not forwarding again",
                     from.c_str(), ipc::cancel_verdict_name(route.verdict));
        return;
    }
    // Whatever key it carries, good or forged, is forwarded: the lines about it share the
    // bad-key log budget, so a flood of them cannot flood the log either.
    const protocol::Bytes packet = protocol::forwarded_cancel_packet(req, hops + 1);
    std::string sent_to;
    for (const config::PeerEntry& peer : cfg.peers) {
        auto st = forward_to_peer(peer, packet, net::Clock::now() + 2s);
        if (st) {
            sent_to += (sent_to.empty() ? "" : ", ") + std::to_string(peer.id);
        } else {
            count(ipc::kCancelForwardFailed);
            if (table.may_log_bad_cancel())
                log_warning("could not forward cancel request to peer %ld (%s:%s): %s", peer.id,
                            peer.host.c_str(), peer.port.c_str(), st.error().c_str());
        }
    }
    if (!sent_to.empty()) {
        count(ipc::kCancelForwarded);
        if (table.may_log_bad_cancel())
            log_info("cancel request from %s is for no session here; forwarded to peer(s) %s", from.c_str(),
                     sent_to.c_str());
    }
}

} // namespace pgw::session
