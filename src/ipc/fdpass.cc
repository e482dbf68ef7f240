// SCM_RIGHTS sending and receiving with every field of the reply checked.
#include "ipc/fdpass.hh"

#include <cerrno>
#include <cstring>
#include <memory>
#include <type_traits>

namespace pgw::ipc {

static_assert(std::is_trivially_copyable_v<Handoff>);

Status send_handoff(int channel, const Handoff& h, int client_fd, std::string_view payload)
{
    if (payload.size() > kMaxPayload)
        return Error{"message payload too large"};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    Handoff copy = h;
    copy.payload_len = std::uint32_t(payload.size());
    iovec iov[2] = {{&copy, sizeof copy}, {const_cast<char*>(payload.data()), payload.size()}};
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = payload.empty() ? 1 : 2;
    if (client_fd >= 0) {
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        cmsghdr* cm = CMSG_FIRSTHDR(&msg);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        std::memcpy(CMSG_DATA(cm), &client_fd, sizeof(int));
    }
    const ssize_t total = ssize_t(sizeof copy + payload.size());
    for (;;) {
        ssize_t n = ::sendmsg(channel, &msg, MSG_NOSIGNAL);
        if (n == total)
            return ok_status();
        if (n < 0 && errno == EINTR)
            continue;
        return Error{n < 0 ? std::string("sendmsg: ") + std::strerror(errno)
                           : std::string("sendmsg: short write")};
    }
}

Status send_message(int channel, HandoffType type, std::string_view payload)
{
    Handoff h;
    h.type = type;
    return send_handoff(channel, h, -1, payload);
}

namespace {

bool known_type(HandoffType t)
{
    switch (t) {
    case HandoffType::Session:
    case HandoffType::Refuse:
    case HandoffType::ShuttingDown:
    case HandoffType::Metrics:
    case HandoffType::Prefill:
    case HandoffType::NeedRoute:
    case HandoffType::Warm:
    case HandoffType::Leaving:
    case HandoffType::Released:
    case HandoffType::PassOn:
    case HandoffType::Connect:
    case HandoffType::MoveClient:
    case HandoffType::HandedOver:
    case HandoffType::Retire:
    case HandoffType::PoolTimeout:
    case HandoffType::Reconfigure:
        return true;
    }
    return false;
}

// Whether a message of this type must, may or must not carry a descriptor.
enum class FdRule { Required, Optional, None };
FdRule fd_rule(HandoffType t)
{
    switch (t) {
    case HandoffType::Session:
    case HandoffType::Refuse:
    case HandoffType::ShuttingDown:
    case HandoffType::Metrics:
    case HandoffType::MoveClient:
    case HandoffType::PassOn:
        return FdRule::Required;
    case HandoffType::NeedRoute:
        return FdRule::Optional;
    default:
        return FdRule::None;
    }
}

} // namespace

Result<Received> receive_handoff(int channel)
{
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)] = {};
    Handoff h;
    // Not zeroed, and copied out at its length: a string of kMaxPayload bytes cut down
    // with resize() kept its 48 KiB, which the supervisor held for every waiting pooled
    // client (94 MB for 1,950 of them) and every worker wrote in full.
    std::unique_ptr<char[]> buffer(new char[kMaxPayload + 1]);
    iovec iov[2] = {{&h, sizeof h}, {buffer.get(), kMaxPayload + 1}};
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = 2;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t n;
    do {
        n = ::recvmsg(channel, &msg, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    // A peer that exited with a message of ours unread resets the channel (ECONNRESET):
    // that is its end too, not a bad message (the soak saw every warm worker ended at
    // shutdown logged as one).
    if (n == 0 || (n < 0 && errno == ECONNRESET))
        return Error{"channel closed"};
    if (n < 0)
        return Error{std::string("recvmsg: ") + std::strerror(errno)};

    // Take ownership of every fd that arrived before judging the message.
    UniqueFd fd;
    int fds_seen = 0;
    for (cmsghdr* cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        size_t count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; ++i) {
            int received;
            std::memcpy(&received, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
            UniqueFd owned(received);
            if (fds_seen++ == 0)
                fd = std::move(owned);
        }
    }
    if (n < (ssize_t)sizeof h)
        return Error{"handoff of wrong size"};
    if (msg.msg_flags & (MSG_CTRUNC | MSG_TRUNC))
        return Error{"handoff truncated"};
    if (h.magic != kHandoffMagic || h.version != kHandoffVersion)
        return Error{"handoff with wrong magic or version"};
    if (!known_type(h.type))
        return Error{"handoff of unknown type"};
    if (h.payload_len > kMaxPayload || size_t(n) != sizeof h + h.payload_len)
        return Error{"handoff of wrong size"};
    const FdRule rule = fd_rule(h.type);
    if ((rule == FdRule::Required && fds_seen != 1) || (rule == FdRule::Optional && fds_seen > 1) ||
        (rule == FdRule::None && fds_seen != 0))
        return Error{"handoff with the wrong number of descriptors"};
    if (h.peer_len > sizeof h.peer)
        return Error{"handoff with bad peer address length"};
    return Received{h, std::move(fd), std::string(buffer.get(), h.payload_len)};
}

} // namespace pgw::ipc
