// The relay: frames both directions of an established session and forwards the
// bytes untouched through bounded buffers, inspecting only what state needs.
#pragma once

#include "upstream/transport.hh"

#include <csignal>
#include <cstdint>
#include <string>

namespace pgw::session {

enum class RelayEnd {
    ClientTerminate,    // the client sent Terminate ('X'); forwarded upstream
    ClientClosed,       // the client's connection closed or failed
    ClientViolation,    // unframeable bytes from the client (08P01 sent when possible)
    UpstreamClosed,     // the upstream closed or failed (08006 sent when possible)
    UpstreamViolation,  // unframeable bytes from the upstream
    Shutdown,           // the stop flag was raised (57P01 sent when possible)
};

const char* relay_end_name(RelayEnd e);

struct RelayOutcome {
    RelayEnd end = RelayEnd::ClientClosed;
    std::string detail;             // an error text, when there is one
    bool upstream_at_boundary = true;  // whether the upstream stream ended between messages
    std::uint64_t bytes_from_client = 0;
    std::uint64_t bytes_from_server = 0;
    std::uint64_t messages_from_client = 0;
    std::uint64_t messages_from_server = 0;
    char transaction_status = 'I';  // from the last ReadyForQuery
};

// Buffer capacity per direction; also the largest message inspected whole.
inline constexpr size_t kRelayBufferSize = 128 * 1024;

// Runs until the session ends. `stop` is polled after every wake-up (a signal
// handler sets it; poll returns EINTR). Both transports must be non-blocking.
RelayOutcome relay(upstream::Transport& client, upstream::Transport& server,
                   char initial_status, const volatile std::sig_atomic_t* stop);

} // namespace pgw::session
