// libFuzzer target for decode_error_fields: malformed bodies must be refused cleanly,
// and whatever decodes must survive an error_response round trip unchanged.
#include "fuzz_check.hh"
#include "protocol/messages.hh"

#include <cstdint>

namespace p = pgw::protocol;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    p::ByteSpan in(reinterpret_cast<const std::byte*>(data), size);
    auto e = p::decode_error_fields(in);
    if (!e)
        return 0;
    FUZZ_CHECK(size >= 1 && data[size - 1] == 0);

    p::Bytes wire = p::error_response(*e);
    FUZZ_CHECK(wire.size() >= 5 && char(wire[0]) == 'E');
    FUZZ_CHECK(p::load_be32(wire.data() + 1) == wire.size() - 1);
    auto again = p::decode_error_fields(p::ByteSpan(wire).subspan(5));
    FUZZ_CHECK(again.has_value());
    FUZZ_CHECK(again->severity == e->severity);
    FUZZ_CHECK(again->sqlstate == e->sqlstate);
    FUZZ_CHECK(again->message == e->message);
    FUZZ_CHECK(again->detail == e->detail);
    FUZZ_CHECK(again->hint == e->hint);
    return 0;
}
