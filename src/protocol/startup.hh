// Decoding of the first packet a client sends (no type byte): SSLRequest,
// GSSENCRequest, CancelRequest or StartupMessage, and the rules PostgreSQL applies to it.
#pragma once

#include "common/result.hh"
#include "protocol/bytes.hh"

#include <cstdint>
#include <optional>
#include <variant>
#include <string>
#include <utility>
#include <vector>

namespace pgw::protocol {

// PostgreSQL's own cap on a startup packet's body (MAX_STARTUP_PACKET_LENGTH); the
// 4 length bytes come on top, so the largest whole packet is 10004 bytes.
inline constexpr std::uint32_t kMaxStartupPacket = 10000;

inline constexpr std::uint32_t kSslRequestCode = 80877103;
inline constexpr std::uint32_t kGssEncRequestCode = 80877104;
inline constexpr std::uint32_t kCancelRequestCode = 80877102;
// pgwicket's own: a CancelRequest forwarded by a peer instance, with a hop count
// (1234.5697, a code PostgreSQL does not use; 1234.5696 was the layout before keys of
// protocol 3.2, and is no longer read).
inline constexpr std::uint32_t kForwardedCancelCode = (1234u << 16) | 5697u;
inline constexpr std::uint32_t kMaxCancelHops = 2;
// A cancel key's secret: 4 bytes in protocol 3.0, up to 256 from 3.2 on (PostgreSQL 18
// sends 32; so does pgwicket).
inline constexpr size_t kMinCancelSecret = 4;
inline constexpr size_t kMaxCancelSecret = 256;
// The newest protocol minor version pgwicket speaks with clients (3.2).
inline constexpr std::uint16_t kNewestMinor = 2;

inline constexpr std::uint32_t protocol_version(std::uint16_t major, std::uint16_t minor)
{
    return (std::uint32_t(major) << 16) | minor;
}

struct StartupMessage {
    std::uint16_t major = 0, minor = 0;
    std::vector<std::pair<std::string, std::string>> params;  // in the client's order
    std::vector<std::string> unknown_protocol_options;        // _pq_.* names

    const std::string* get(std::string_view name) const;
};

struct CancelRequest {
    std::uint32_t pid = 0;
    Bytes secret;  // kMinCancelSecret to kMaxCancelSecret bytes
};

enum class FirstPacketKind { SslRequest, GssEncRequest, Cancel, Startup };

struct FirstPacket {
    FirstPacketKind kind{};
    StartupMessage startup;    // kind == Startup
    CancelRequest cancel;      // kind == Cancel
    std::uint32_t hops = 0;    // kind == Cancel: how often peers have forwarded it
};

// The packet a peer sends to forward a cancel request (length word included).
Bytes forwarded_cancel_packet(const CancelRequest& c, std::uint32_t hops);

// A startup-phase failure: the SQLSTATE and message to send before closing, or,
// where PostgreSQL answers nothing (it logs a COMMERROR and closes: an impossible
// length, a malformed CancelRequest), `reply` false: drivers rely on that silence
// (node-postgres sends Terminate before its startup packet and must not see a FATAL).
struct StartupError {
    const char* sqlstate;
    std::string message;
    bool reply = true;
};

// Checks the 4-byte length prefix (which counts itself) before the body is read.
// Returns the (silent) error for an impossible length, else empty.
std::optional<StartupError> check_startup_length(std::uint32_t length);

// Decodes a whole packet body (the bytes after the length word).
// On failure returns the error the client should get (or none, see StartupError).
// Like PostgreSQL 15, an SSLRequest or GSSENCRequest is known by its code alone.
std::variant<FirstPacket, StartupError> decode_first_packet(ByteSpan body);

// PostgreSQL's answer to a protocol version outside 3.x, which is also what a second
// SSLRequest (1234.5679) or GSSENCRequest (1234.5680) gets.
StartupError unsupported_protocol(std::uint32_t code);

} // namespace pgw::protocol
