// libFuzzer target for Framer: a stream fed in fuzzer-chosen pieces must give the same
// messages, stops, violation offset and held-back bytes as a plain one-pass model.
#include "fuzz_check.hh"
#include "protocol/framer.hh"

#include <cstdint>
#include <string>
#include <vector>

namespace p = pgw::protocol;

namespace {

struct Event {
    char type;
    std::string body;
    std::size_t offset;  // of the type byte in the stream
    bool operator==(const Event&) const = default;
};

struct Outcome {
    std::vector<Event> events;
    bool violation = false;
    std::size_t consumed = 0;  // bytes forwarded (or, on a violation, where it is)
    bool operator==(const Outcome&) const = default;
};

struct Params {
    std::size_t max_inspect;
    std::uint8_t inspect_salt;
    std::uint8_t stop_type;
    std::uint32_t chunk_seed;

    bool inspect(char t) const { return (std::uint8_t(t) + inspect_salt) % 3 == 0; }
    bool keep_going(char t) const { return std::uint8_t(t) != stop_type; }
};

// The framing rules written out as simply as possible, over the whole stream at once.
Outcome model(const std::string& s, const Params& prm)
{
    Outcome o;
    std::size_t pos = 0;
    while (s.size() - pos >= 5) {
        char t = s[pos];
        std::uint32_t len = p::load_be32(reinterpret_cast<const std::byte*>(s.data() + pos + 1));
        if (len < 4) {
            o.violation = true;
            o.consumed = pos;
            return o;
        }
        std::uint64_t total = std::uint64_t(len) + 1;
        if (prm.inspect(t) && total <= prm.max_inspect) {
            if (s.size() - pos < total)
                break;
            o.events.push_back({t, s.substr(pos + 5, len - 4), pos});
        }
        if (s.size() - pos < total) {
            pos = s.size();
            break;
        }
        pos += std::size_t(total);
    }
    o.consumed = pos;
    return o;
}

// A relay's loop: append each read to what was held back, forward `scanned`,
// and scan again after a stop.
Outcome chunked(const std::string& s, const Params& prm)
{
    Outcome o;
    p::Framer framer(prm.max_inspect);
    std::string pending;
    std::uint32_t rng = prm.chunk_seed | 1;
    std::size_t at = 0;
    while (at < s.size()) {
        rng = rng * 1103515245u + 12345u;
        std::size_t n = 1 + (rng >> 16) % ((rng & 1) ? 7 : 300);
        n = std::min(n, s.size() - at);
        pending.append(s, at, n);
        at += n;
        for (;;) {
            p::ByteSpan data = p::as_bytes(pending);
            p::ScanResult r = framer.scan(
                data, [&](char t) { return prm.inspect(t); },
                [&](char t, p::ByteSpan body) {
                    FUZZ_CHECK(body.data() >= data.data() + 5);
                    FUZZ_CHECK(body.data() + body.size() <= data.data() + data.size());
                    std::size_t type_at = std::size_t(body.data() - data.data()) - 5;
                    FUZZ_CHECK(char(data[type_at]) == t);
                    o.events.push_back({t,
                                        std::string(reinterpret_cast<const char*>(body.data()),
                                                    body.size()),
                                        o.consumed + type_at});
                    return prm.keep_going(t);
                });
            FUZZ_CHECK(r.scanned <= pending.size());
            if (r.status == p::ScanStatus::Violation) {
                o.violation = true;
                o.consumed += r.scanned;
                return o;
            }
            pending.erase(0, r.scanned);
            o.consumed += r.scanned;
            if (r.status == p::ScanStatus::NeedMore)
                break;
        }
    }
    return o;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    if (size < 6)
        return 0;
    Params prm;
    // Small caps are where the inspected/uninspected boundary is; the top bit asks for
    // a generous one.
    prm.max_inspect = (data[0] & 0x80) ? 1u << 20 : data[0];
    prm.inspect_salt = data[1];
    prm.stop_type = data[2];
    prm.chunk_seed = std::uint32_t(data[3]) | (std::uint32_t(data[4]) << 8);
    std::string stream(reinterpret_cast<const char*>(data + 5), size - 5);

    Outcome want = model(stream, prm);
    Outcome got = chunked(stream, prm);
    FUZZ_CHECK(got.violation == want.violation);
    FUZZ_CHECK(got.consumed == want.consumed);
    FUZZ_CHECK(got.events.size() == want.events.size());
    FUZZ_CHECK(got == want);
    return 0;
}
