// The relay: frames both directions of an established session and forwards the
// bytes untouched through bounded buffers, inspecting only what state needs.
#pragma once

#include "protocol/messages.hh"
#include "upstream/transport.hh"

#include <csignal>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

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

// What the session learns from the relay, and how it steers it (timeouts, cancels).
class RelayObserver {
public:
    virtual ~RelayObserver() = default;
    // Every message header from the client, once per message, with as much of its
    // body as has arrived (maybe none of it).
    virtual void on_client_message(char type, protocol::ByteSpan head) = 0;
    // Whether the session must see this client message whole (a policy checks it);
    // such messages larger than the relay buffer end the session (FATAL 54000).
    virtual bool inspect_client(char /*type*/) { return false; }
    // The whole body of such a message; a returned message goes upstream in its place.
    virtual std::optional<protocol::Bytes> on_client_body(char /*type*/, protocol::ByteSpan /*body*/)
    {
        return std::nullopt;
    }
    virtual void on_ready_for_query(char status) = 0;
    // An ErrorResponse from the server; a returned message replaces it for the client.
    virtual std::optional<protocol::Bytes> on_server_error(const protocol::ErrorFields& e) = 0;
    // How long poll() may sleep (-1: until I/O), and what to do after every wake-up
    // (I/O, a signal, or that timeout).
    virtual int poll_timeout_ms() = 0;
    virtual void on_wake() = 0;
    // True while the client's bytes must wait before going upstream (they are still
    // read and framed; on_wake() is called again when the reason may have passed).
    virtual bool hold_client_input() { return false; }
    // Every message header from the server, once per message, with the message's size
    // (type byte and length included).
    virtual void on_server_message(char /*type*/, std::uint64_t /*size*/) {}
    // Whether this server message must not reach the client (a row past a cap). Asked
    // right after on_server_message, from the header alone: the body is never buffered
    // whole, so a message of any size can be dropped, and a run of dropped messages
    // goes in one step, not one relay round each.
    virtual bool drop_server(char /*type*/) { return false; }
    // Whether the session must see this server message whole (besides Z, E and C), and
    // what goes to the client in its place (an empty message drops it). CommandComplete
    // is offered here too, after on_command_complete.
    virtual bool inspect_server(char /*type*/) { return false; }
    virtual std::optional<protocol::Bytes> on_server_body(char /*type*/, protocol::ByteSpan /*body*/)
    {
        return std::nullopt;
    }
    // Bytes read from one side (counted as they arrive).
    virtual void on_bytes(bool /*from_client*/, size_t /*n*/) {}
    // A CommandComplete from the server, with its tag ("SELECT 3", "INSERT 0 1").
    virtual void on_command_complete(std::string_view /*tag*/) {}
    // Whether the client's Terminate stays here (a pooled upstream outlives the session).
    virtual bool keep_upstream() { return false; }
    // The FATAL the client gets when the stop flag ends the relay.
    virtual protocol::Bytes stop_message();
};

// Buffer capacity per direction; also the largest message inspected whole.
inline constexpr size_t kRelayBufferSize = 128 * 1024;

// Runs until the session ends. `stop` is polled after every wake-up (a signal
// handler sets it; poll returns EINTR). Both transports must be non-blocking.
RelayOutcome relay(upstream::Transport& client, upstream::Transport& server,
                   char initial_status, const volatile std::sig_atomic_t* stop,
                   RelayObserver* observer = nullptr);

} // namespace pgw::session
