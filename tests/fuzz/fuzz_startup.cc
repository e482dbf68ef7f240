// libFuzzer target for the first packet a client sends: check_startup_length on the
// leading word and decode_first_packet on the whole input, with the properties they promise.
#include "fuzz_check.hh"
#include "protocol/startup.hh"

#include <cstdint>
#include <cstring>
#include <variant>

namespace p = pgw::protocol;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    p::ByteSpan in(reinterpret_cast<const std::byte*>(data), size);

    if (size >= 4) {
        std::uint32_t len = p::load_be32(in.data());
        auto err = p::check_startup_length(len);
        FUZZ_CHECK(err.has_value() == (len < 8 || len - 4 > p::kMaxStartupPacket));
        FUZZ_CHECK(!err || !err->reply);
    }

    auto r = p::decode_first_packet(in);
    if (const auto* err = std::get_if<p::StartupError>(&r)) {
        FUZZ_CHECK(err->sqlstate != nullptr && std::strlen(err->sqlstate) == 5);
        FUZZ_CHECK(!err->message.empty());
        return 0;
    }
    const auto& fp = std::get<p::FirstPacket>(r);
    switch (fp.kind) {
    case p::FirstPacketKind::SslRequest:
    case p::FirstPacketKind::GssEncRequest:
        FUZZ_CHECK(size >= 4);
        break;
    case p::FirstPacketKind::Cancel:
        // A client's CancelRequest (code, pid, a secret of 4 to 256 bytes, no hops) or a
        // peer's forwarded one (code, hops, pid, secret).
        {
            const bool forwarded = p::load_be32(in.data()) == p::kForwardedCancelCode;
            const size_t head = forwarded ? 12 : 8;
            FUZZ_CHECK(size >= head + p::kMinCancelSecret && size <= head + p::kMaxCancelSecret);
            FUZZ_CHECK(fp.hops == (forwarded ? p::load_be32(in.data() + 4) : 0));
            FUZZ_CHECK(fp.cancel.pid == p::load_be32(in.data() + head - 4));
            FUZZ_CHECK(fp.cancel.secret.size() == size - head);
            FUZZ_CHECK(std::memcmp(fp.cancel.secret.data(), in.data() + head, size - head) == 0);
        }
        break;
    case p::FirstPacketKind::Startup: {
        FUZZ_CHECK(fp.startup.major == 3);
        const std::string* user = fp.startup.get("user");
        FUZZ_CHECK(user && !user->empty());
        // Every byte is accounted for: the version, each name and value with its NUL,
        // and the final terminator. _pq_ values are dropped, so count them as at least 1.
        std::size_t accounted = 4 + 1;
        for (const auto& [k, v] : fp.startup.params) {
            FUZZ_CHECK(k.find('\0') == std::string::npos && v.find('\0') == std::string::npos);
            FUZZ_CHECK(!k.empty() && k.rfind("_pq_.", 0) != 0);
            accounted += k.size() + v.size() + 2;
        }
        for (const auto& k : fp.startup.unknown_protocol_options) {
            FUZZ_CHECK(k.rfind("_pq_.", 0) == 0);
            accounted += k.size() + 2;
        }
        FUZZ_CHECK(accounted <= size);
        if (fp.startup.unknown_protocol_options.empty())
            FUZZ_CHECK(accounted == size);
        FUZZ_CHECK(data[size - 1] == 0);
        break;
    }
    }
    return 0;
}
