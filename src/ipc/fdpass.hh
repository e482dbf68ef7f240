// Typed messages between supervisor and worker over a socketpair, carrying the
// accepted client fd with SCM_RIGHTS; the type tag and version are checked on receipt.
#pragma once

#include "common/result.hh"
#include "common/unique_fd.hh"

#include <sys/socket.h>

#include <cstdint>

namespace pgw::ipc {

inline constexpr std::uint32_t kHandoffMagic = 0x50475748;  // "PGWH"
inline constexpr std::uint32_t kHandoffVersion = 4;
inline constexpr std::uint32_t kNoSlot = ~std::uint32_t(0);

enum class HandoffType : std::uint32_t {
    Session = 1,  // run a session on the attached fd
    Refuse = 2,   // read the startup packet, answer 53300 (max_client_conn reached), close
    ShuttingDown = 3,  // draining: serve a cancel request, answer a startup with 57P03
    Metrics = 4,       // an HTTP connection to the metrics listener
};

// Written and read with memcpy by the same binary on both ends of a private
// socketpair; still, the receiver checks magic, version, type and size.
struct Handoff {
    std::uint32_t magic = kHandoffMagic;
    std::uint32_t version = kHandoffVersion;
    HandoffType type = HandoffType::Session;
    std::uint32_t listener_kind = 0;  // 0 TCP, 1 Unix
    std::uint64_t session_id = 0;
    std::uint32_t slot = kNoSlot;     // the session table slot claimed for this session
    sockaddr_storage peer{};
    socklen_t peer_len = 0;
};

Status send_handoff(int channel, const Handoff& h, int client_fd);

struct Received {
    Handoff handoff;
    UniqueFd client;
};

// Blocks until a handoff arrives. An error (including the supervisor closing the
// channel, reported as "channel closed") means the worker should exit.
Result<Received> receive_handoff(int channel);

} // namespace pgw::ipc
