// SCM_RIGHTS sending and receiving with every field of the reply checked.
#include "ipc/fdpass.hh"

#include <cerrno>
#include <cstring>
#include <type_traits>

namespace pgw::ipc {

static_assert(std::is_trivially_copyable_v<Handoff>);

Status send_handoff(int channel, const Handoff& h, int client_fd)
{
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    Handoff copy = h;
    iovec iov{&copy, sizeof copy};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    cmsghdr* cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(cm), &client_fd, sizeof(int));
    for (;;) {
        ssize_t n = ::sendmsg(channel, &msg, MSG_NOSIGNAL);
        if (n == (ssize_t)sizeof copy)
            return ok_status();
        if (n < 0 && errno == EINTR)
            continue;
        return Error{n < 0 ? std::string("sendmsg: ") + std::strerror(errno)
                           : std::string("sendmsg: short write")};
    }
}

Result<Received> receive_handoff(int channel)
{
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)] = {};
    Handoff h;
    iovec iov{&h, sizeof h};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t n;
    do {
        n = ::recvmsg(channel, &msg, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    if (n == 0)
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
    if (n != (ssize_t)sizeof h)
        return Error{"handoff of wrong size"};
    if (msg.msg_flags & (MSG_CTRUNC | MSG_TRUNC))
        return Error{"handoff truncated"};
    if (h.magic != kHandoffMagic || h.version != kHandoffVersion)
        return Error{"handoff with wrong magic or version"};
    if (h.type != HandoffType::Session && h.type != HandoffType::Refuse &&
        h.type != HandoffType::ShuttingDown && h.type != HandoffType::Metrics)
        return Error{"handoff of unknown type"};
    if (fds_seen != 1 || !fd.valid())
        return Error{"handoff without exactly one descriptor"};
    if (h.peer_len > sizeof h.peer)
        return Error{"handoff with bad peer address length"};
    return Received{h, std::move(fd)};
}

} // namespace pgw::ipc
