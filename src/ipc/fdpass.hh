// Typed messages between supervisor and worker over a socketpair, carrying the
// accepted client fd with SCM_RIGHTS; the type tag and version are checked on receipt.
#pragma once

#include "common/result.hh"
#include "common/unique_fd.hh"

#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <string_view>

namespace pgw::ipc {

inline constexpr std::uint32_t kHandoffMagic = 0x50475748;  // "PGWH"
inline constexpr std::uint32_t kHandoffVersion = 7;
inline constexpr std::uint32_t kNoSlot = ~std::uint32_t(0);
// The largest payload a message carries (a pooled session's context).
inline constexpr std::uint32_t kMaxPayload = 48 * 1024;

enum class HandoffType : std::uint32_t {
    // Supervisor to a spare, with the accepted fd.
    Session = 1,  // run a session on the attached fd; a payload is its startup packet, read already
    Refuse = 2,   // read the startup packet, answer 53300 (max_client_conn reached), close
    ShuttingDown = 3,  // draining: serve a cancel request, answer a startup with 57P03
    Metrics = 4,       // an HTTP connection to the metrics listener
    Prefill = 5,       // no client: open a connection of the route in the payload's context, go warm

    // Pooling (see HACKING.md, "Pooling"). Worker to supervisor:
    NeedRoute = 10,  // payload: route key; fd: the plaintext client when it may move
    Warm = 11,       // payload: route key; the session ended, the upstream is reset
    Leaving = 12,    // a warm worker wants to go (timer, dead upstream); wait for Retire
    Released = 13,   // a worker closed the pooled connection it held; its session goes on unpooled
    PassOn = 14,     // a warm worker does not serve this plaintext client (console, unpooled entry):
                     // fd: the client; payload: its startup packet, for a spare to go on from
    // Supervisor to worker:
    Connect = 20,     // to the asker: connect upstream yourself (counted in the pool)
    MoveClient = 21,  // to a warm worker, with the client fd; payload: the session context
    HandedOver = 22,  // to the asker: the client went to a warm worker; be a spare again
    Retire = 23,      // to a warm worker: close the upstream and exit
    PoolTimeout = 24,  // to the asker: query_wait_timeout passed; answer 53300
    Reconfigure = 25,  // to a warm worker after a reload; payload: config digest, route's context
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
    std::uint32_t payload_len = 0;  // bytes that follow the struct in the same message
};

// `client_fd` < 0 sends no descriptor (only the pooling messages may omit one).
Status send_handoff(int channel, const Handoff& h, int client_fd, std::string_view payload = {});
// A message of `type` alone, with no descriptor (the pooling replies and reports).
Status send_message(int channel, HandoffType type, std::string_view payload = {});

struct Received {
    Handoff handoff;
    UniqueFd client;  // invalid when the message carried none
    std::string payload;
};

// Blocks until a handoff arrives. An error (including the supervisor closing the
// channel, reported as "channel closed") means the worker should exit.
Result<Received> receive_handoff(int channel);

} // namespace pgw::ipc
