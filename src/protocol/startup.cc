// First-packet decoding, following PostgreSQL's ProcessStartupPacket checks
// so clients get the same SQLSTATEs (08P01 malformed, 0A000 unsupported) as from a server.
#include "protocol/startup.hh"

#include <cstdio>

namespace pgw::protocol {

const std::string* StartupMessage::get(std::string_view name) const
{
    for (const auto& [k, v] : params)
        if (k == name)
            return &v;
    return nullptr;
}

namespace {

StartupError silent_bad_length() { return StartupError{"08P01", "invalid length of startup packet", false}; }

} // namespace

std::optional<StartupError> check_startup_length(std::uint32_t length)
{
    if (length < 8 || length - 4 > kMaxStartupPacket)
        return silent_bad_length();
    return std::nullopt;
}

StartupError unsupported_protocol(std::uint32_t code)
{
    char msg[160];
    std::snprintf(msg, sizeof msg, "unsupported frontend protocol %u.%u: server supports 3.0 to 3.0", code >> 16,
                  code & 0xffff);
    return StartupError{"0A000", msg};
}

std::variant<FirstPacket, StartupError> decode_first_packet(ByteSpan body)
{
    Reader r(body);
    auto code = r.u32();
    if (!code)
        return silent_bad_length();

    FirstPacket fp;
    if (*code == kSslRequestCode || *code == kGssEncRequestCode) {
        // PostgreSQL 15 ignores whatever else such a packet holds.
        fp.kind = *code == kSslRequestCode ? FirstPacketKind::SslRequest
                                           : FirstPacketKind::GssEncRequest;
        return fp;
    }
    if (*code == kForwardedCancelCode || *code == kCancelRequestCode) {
        auto hops = *code == kForwardedCancelCode ? r.u32() : std::optional<std::uint32_t>(0);
        auto pid = r.u32();
        // The secret is the rest: 4 bytes from a 3.0 client, up to 256 from 3.2 on.
        auto secret = r.bytes(r.remaining());
        if (!hops || !pid || !secret || secret->size() < kMinCancelSecret || secret->size() > kMaxCancelSecret)
            return silent_bad_length();
        fp.kind = FirstPacketKind::Cancel;
        fp.cancel.pid = *pid;
        fp.cancel.secret.assign(secret->begin(), secret->end());
        fp.hops = *hops;
        return fp;
    }

    std::uint16_t major = std::uint16_t(*code >> 16), minor = std::uint16_t(*code & 0xffff);
    if (major != 3)
        return unsupported_protocol(*code);
    fp.kind = FirstPacketKind::Startup;
    fp.startup.major = major;
    fp.startup.minor = minor;
    for (;;) {
        auto name = r.cstring();
        if (!name)
            return StartupError{"08P01", "invalid startup packet layout: expected terminator as last byte"};
        if (name->empty())
            break;
        auto value = r.cstring();
        if (!value)
            return StartupError{"08P01", "invalid startup packet layout: expected terminator as last byte"};
        std::string key(*name);
        if (key.rfind("_pq_.", 0) == 0)
            fp.startup.unknown_protocol_options.push_back(key);
        else
            fp.startup.params.emplace_back(std::move(key), std::string(*value));
    }
    if (!r.empty())
        return StartupError{"08P01", "invalid startup packet layout: expected terminator as last byte"};
    if (!fp.startup.get("user") || fp.startup.get("user")->empty())
        return StartupError{"28000", "no PostgreSQL user name specified in startup packet"};
    return fp;
}

Bytes forwarded_cancel_packet(const CancelRequest& c, std::uint32_t hops)
{
    Writer w;
    w.u32(std::uint32_t(16 + c.secret.size()));
    w.u32(kForwardedCancelCode);
    w.u32(hops);
    w.u32(c.pid);
    w.raw(c.secret);
    return w.take();
}

} // namespace pgw::protocol
