// Unit tests for src/protocol: first-packet decoding, backend message encoders,
// ErrorResponse decoding, the incremental Framer and the bounds-checked Reader.
#include "protocol/bytes.hh"
#include "protocol/framer.hh"
#include "protocol/messages.hh"
#include "protocol/startup.hh"

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <variant>
#include <vector>

using namespace std::string_literals;
namespace p = pgw::protocol;

namespace {

std::string be32(std::uint32_t v)
{
    return {char(v >> 24), char(v >> 16), char(v >> 8), char(v)};
}

p::ByteSpan span_of(const std::string& s) { return p::as_bytes(s); }

std::string str(p::ByteSpan b) { return {reinterpret_cast<const char*>(b.data()), b.size()}; }

// Mismatches in binary messages are easier to read as hex than as raw bytes.
std::string hex(const std::string& s)
{
    static const char digits[] = "0123456789abcdef";
    std::string out;
    for (unsigned char c : s) {
        if (!out.empty())
            out += ' ';
        out += digits[c >> 4];
        out += digits[c & 15];
    }
    return out;
}
std::string hex(const p::Bytes& b) { return hex(str(b)); }

std::string startup_body(std::uint16_t major, std::uint16_t minor, const std::string& rest)
{
    return be32(p::protocol_version(major, minor)) + rest;
}

const std::string kBadLength = "invalid length of startup packet";
const std::string kBadLayout = "invalid startup packet layout: expected terminator as last byte";
const std::string kNoUser = "no PostgreSQL user name specified in startup packet";

} // namespace

BOOST_AUTO_TEST_SUITE(protocol_startup)

BOOST_AUTO_TEST_CASE(check_startup_length_bounds)
{
    struct Case {
        std::uint32_t length;
        bool ok;
    };
    // 8 is the smallest packet that can hold a length and a code; PostgreSQL caps the
    // body at 10000 bytes, so the largest whole packet is 10004.
    const Case cases[] = {
        {0, false},     {4, false},         {7, false},           {8, true},
        {9, true},      {10000, true},      {10004, true},        {10005, false},       {1u << 30, false},
        {0x7FFFFFFF, false}, {0x80000000, false}, {0xFFFFFFFF, false},
    };
    for (const auto& c : cases) {
        BOOST_TEST_CONTEXT("length " << c.length)
        {
            auto err = p::check_startup_length(c.length);
            BOOST_TEST(!err.has_value() == c.ok);
            if (err) {
                BOOST_TEST(std::string(err->sqlstate) == "08P01");
                BOOST_TEST(err->message == kBadLength);
                BOOST_TEST(!err->reply, "PostgreSQL answers an impossible length with silence");
            }
        }
    }
}

BOOST_AUTO_TEST_CASE(decode_first_packet_kinds)
{
    struct Case {
        const char* name;
        std::string body;
        p::FirstPacketKind kind;
    };
    const Case cases[] = {
        {"SSLRequest", be32(p::kSslRequestCode), p::FirstPacketKind::SslRequest},
        {"GSSENCRequest", be32(p::kGssEncRequestCode), p::FirstPacketKind::GssEncRequest},
        // PostgreSQL 15 knows these by their code and ignores the rest of the packet.
        {"SSLRequest with one extra byte", be32(p::kSslRequestCode) + "\0"s, p::FirstPacketKind::SslRequest},
        {"SSLRequest with four extra bytes", be32(p::kSslRequestCode) + be32(0), p::FirstPacketKind::SslRequest},
        {"GSSENCRequest with one extra byte", be32(p::kGssEncRequestCode) + "x", p::FirstPacketKind::GssEncRequest},
        {"CancelRequest", be32(p::kCancelRequestCode) + be32(1) + be32(2),
         p::FirstPacketKind::Cancel},
        {"StartupMessage", startup_body(3, 0, "user\0u\0\0"s), p::FirstPacketKind::Startup},
    };
    for (const auto& c : cases) {
        BOOST_TEST_CONTEXT(c.name)
        {
            auto r = p::decode_first_packet(span_of(c.body));
            BOOST_TEST_REQUIRE(std::holds_alternative<p::FirstPacket>(r));
            BOOST_TEST((std::get<p::FirstPacket>(r).kind == c.kind));
        }
    }
}

BOOST_AUTO_TEST_CASE(decode_first_packet_errors)
{
    struct Case {
        const char* name;
        std::string body;
        const char* sqlstate;
        std::string message;
        bool reply = true;  // false: PostgreSQL closes without a word
    };
    const std::string cancel = be32(p::kCancelRequestCode);
    const Case cases[] = {
        {"empty body", "", "08P01", kBadLength, false},
        {"one byte", "\x00"s, "08P01", kBadLength, false},
        {"three bytes", "\x00\x03\x00"s, "08P01", kBadLength, false},
        {"CancelRequest without key", cancel, "08P01", kBadLength, false},
        {"CancelRequest without secret", cancel + be32(7), "08P01", kBadLength, false},
        {"CancelRequest with short secret", cancel + be32(7) + "\0\0\0"s, "08P01", kBadLength, false},
        {"CancelRequest with a 257-byte secret", cancel + be32(7) + std::string(257, 'k'), "08P01", kBadLength,
         false},
        {"forwarded CancelRequest without its secret", be32(p::kForwardedCancelCode) + be32(1) + be32(7),
         "08P01", kBadLength, false},
        {"protocol 2.0", startup_body(2, 0, "user\0u\0\0"s), "0A000",
         "unsupported frontend protocol 2.0: server supports 3.0 to 3.0"},
        {"protocol 1.0", startup_body(1, 0, "user\0u\0\0"s), "0A000",
         "unsupported frontend protocol 1.0: server supports 3.0 to 3.0"},
        {"protocol 4.1", startup_body(4, 1, "user\0u\0\0"s), "0A000",
         "unsupported frontend protocol 4.1: server supports 3.0 to 3.0"},
        {"protocol 0.0 (all zero)", std::string(12, '\0'), "0A000",
         "unsupported frontend protocol 0.0: server supports 3.0 to 3.0"},
        {"version only", startup_body(3, 0, ""), "08P01", kBadLayout},
        {"missing terminator", startup_body(3, 0, "user\0u\0"s), "08P01", kBadLayout},
        {"value without NUL", startup_body(3, 0, "user\0bob"s), "08P01", kBadLayout},
        {"name without NUL", startup_body(3, 0, "user\0bob\0datab"s), "08P01", kBadLayout},
        {"name without value", startup_body(3, 0, "user\0"s), "08P01", kBadLayout},
        {"bytes after terminator", startup_body(3, 0, "user\0u\0\0x"s), "08P01", kBadLayout},
        {"two terminators", startup_body(3, 0, "user\0u\0\0\0"s), "08P01", kBadLayout},
        {"missing user", startup_body(3, 0, "database\0d\0\0"s), "28000", kNoUser},
        {"no parameters", startup_body(3, 0, "\0"s), "28000", kNoUser},
        {"empty user", startup_body(3, 0, "user\0\0database\0d\0\0"s), "28000", kNoUser},
        {"user only as _pq_ option", startup_body(3, 2, "_pq_.user\0u\0\0"s), "28000", kNoUser},
    };
    for (const auto& c : cases) {
        BOOST_TEST_CONTEXT(c.name)
        {
            auto r = p::decode_first_packet(span_of(c.body));
            BOOST_TEST_REQUIRE(std::holds_alternative<p::StartupError>(r));
            const auto& e = std::get<p::StartupError>(r);
            BOOST_TEST(std::string(e.sqlstate) == c.sqlstate);
            BOOST_TEST(e.message == c.message);
            BOOST_TEST(e.reply == c.reply);
        }
    }
}

// The secret is the rest of the packet: 4 bytes from a protocol 3.0 client, up to 256
// from 3.2 on (PostgreSQL 18 sends 32).
BOOST_AUTO_TEST_CASE(cancel_request_carries_pid_and_secret)
{
    for (size_t len : {4u, 5u, 8u, 32u, 255u, 256u}) {
        BOOST_TEST_CONTEXT("secret of " << len << " bytes")
        {
            std::string secret;
            for (size_t i = 0; i < len; ++i)
                secret += char(0xF1 - i);
            const std::string body = be32(p::kCancelRequestCode) + be32(0x01020304) + secret;
            auto r = p::decode_first_packet(span_of(body));
            BOOST_TEST_REQUIRE(std::holds_alternative<p::FirstPacket>(r));
            const auto& fp = std::get<p::FirstPacket>(r);
            BOOST_TEST((fp.kind == p::FirstPacketKind::Cancel));
            BOOST_TEST(fp.cancel.pid == 0x01020304u);
            BOOST_TEST(std::string(reinterpret_cast<const char*>(fp.cancel.secret.data()), fp.cancel.secret.size()) ==
                       secret);
            BOOST_TEST(fp.hops == 0u);
        }
    }
}

BOOST_AUTO_TEST_CASE(forwarded_cancel_round_trips_with_its_hop_count)
{
    for (size_t len : {4u, 32u, 256u}) {
        BOOST_TEST_CONTEXT("secret of " << len << " bytes")
        {
            p::CancelRequest c;
            c.pid = 0x0a0b0c0d;
            for (size_t i = 0; i < len; ++i)
                c.secret.push_back(std::byte(0xde + i));
            const p::Bytes packet = p::forwarded_cancel_packet(c, 1);
            const std::string bytes(reinterpret_cast<const char*>(packet.data()), packet.size());
            const std::string secret(reinterpret_cast<const char*>(c.secret.data()), len);
            BOOST_TEST(bytes == be32(uint32_t(16 + len)) + be32(p::kForwardedCancelCode) + be32(1) + be32(0x0a0b0c0d) +
                                    secret);
            auto r = p::decode_first_packet(span_of(bytes.substr(4)));
            BOOST_TEST_REQUIRE(std::holds_alternative<p::FirstPacket>(r));
            const auto& fp = std::get<p::FirstPacket>(r);
            BOOST_TEST((fp.kind == p::FirstPacketKind::Cancel));
            BOOST_TEST(fp.cancel.pid == 0x0a0b0c0du);
            BOOST_TEST((fp.cancel.secret == c.secret));
            BOOST_TEST(fp.hops == 1u);
        }
    }
    // The layout before protocol 3.2 keys (code 1234.5696) is not read: PostgreSQL's
    // answer to an unknown protocol.
    auto old = p::decode_first_packet(span_of(be32((1234u << 16) | 5696u) + be32(7) + be32(9) + be32(1)));
    BOOST_TEST_REQUIRE(std::holds_alternative<p::StartupError>(old));
    BOOST_TEST(std::string(std::get<p::StartupError>(old).sqlstate) == "0A000");
}

BOOST_AUTO_TEST_CASE(startup_3_0_keeps_parameters_in_client_order)
{
    const std::string body = startup_body(
        3, 0, "user\0alice\0database\0sales\0application_name\0\0options\0-c x=1\0\0"s);
    auto r = p::decode_first_packet(span_of(body));
    BOOST_TEST_REQUIRE(std::holds_alternative<p::FirstPacket>(r));
    const auto& s = std::get<p::FirstPacket>(r).startup;
    BOOST_TEST(s.major == 3);
    BOOST_TEST(s.minor == 0);
    const std::vector<std::pair<std::string, std::string>> want = {
        {"user", "alice"}, {"database", "sales"}, {"application_name", ""}, {"options", "-c x=1"}};
    BOOST_TEST_REQUIRE(s.params.size() == want.size());
    for (size_t i = 0; i < want.size(); ++i) {
        BOOST_TEST(s.params[i].first == want[i].first);
        BOOST_TEST(s.params[i].second == want[i].second);
    }
    BOOST_TEST(s.unknown_protocol_options.empty());
    BOOST_TEST_REQUIRE(s.get("database") != nullptr);
    BOOST_TEST(*s.get("database") == "sales");
    BOOST_TEST(s.get("replication") == nullptr);
}

BOOST_AUTO_TEST_CASE(startup_3_2_lists_pq_options_apart_from_parameters)
{
    const std::string body =
        startup_body(3, 2, "_pq_.compression\0on\0user\0bob\0_pq_.x\0\0database\0d\0\0"s);
    auto r = p::decode_first_packet(span_of(body));
    BOOST_TEST_REQUIRE(std::holds_alternative<p::FirstPacket>(r));
    const auto& s = std::get<p::FirstPacket>(r).startup;
    BOOST_TEST(s.major == 3);
    BOOST_TEST(s.minor == 2);
    const std::vector<std::string> want_unknown = {"_pq_.compression", "_pq_.x"};
    BOOST_TEST(s.unknown_protocol_options == want_unknown, boost::test_tools::per_element());
    BOOST_TEST(s.params.size() == 2u);
    BOOST_TEST(s.get("_pq_.compression") == nullptr);
    BOOST_TEST_REQUIRE(s.get("user") != nullptr);
    BOOST_TEST(*s.get("user") == "bob");
}

BOOST_AUTO_TEST_CASE(startup_of_the_largest_allowed_size_decodes)
{
    // A body of the full 10000 bytes (a 10004-byte packet) must still decode.
    const std::string head = "user\0u\0application_name\0"s;
    const size_t body_size = p::kMaxStartupPacket;
    std::string value(body_size - 4 - head.size() - 2, 'a');
    const std::string body = startup_body(3, 0, head + value + "\0\0"s);
    BOOST_TEST_REQUIRE(body.size() == body_size);
    BOOST_TEST(!p::check_startup_length(std::uint32_t(body.size() + 4)).has_value());
    auto r = p::decode_first_packet(span_of(body));
    BOOST_TEST_REQUIRE(std::holds_alternative<p::FirstPacket>(r));
    const std::string* got = std::get<p::FirstPacket>(r).startup.get("application_name");
    BOOST_TEST_REQUIRE(got != nullptr);
    BOOST_TEST(*got == value);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(protocol_encoders)

BOOST_AUTO_TEST_CASE(fatal_is_byte_exact)
{
    // 'E', length 43, then S V C M H fields and the terminating zero byte.
    const std::string want = "E\x00\x00\x00\x2b"
                             "SFATAL\0"
                             "VFATAL\0"
                             "C28000\0"
                             "Mno user\0"
                             "Htry -U\0"
                             "\0"s;
    BOOST_TEST(hex(p::fatal("28000", "no user", "try -U")) == hex(want));
}

BOOST_AUTO_TEST_CASE(fatal_without_hint_has_no_hint_field)
{
    const std::string want = "E\x00\x00\x00\x1f"
                             "SFATAL\0"
                             "VFATAL\0"
                             "C08P01\0"
                             "Mbad\0"
                             "\0"s;
    BOOST_TEST(hex(p::fatal("08P01", "bad")) == hex(want));
}

BOOST_AUTO_TEST_CASE(error_response_with_every_field_is_byte_exact)
{
    p::ErrorFields e;
    e.severity = "ERROR";
    e.sqlstate = "42501";
    e.message = "m";
    e.detail = "dd";
    e.hint = "hhh";
    const std::string want = "E\x00\x00\x00\x26"
                             "SERROR\0"
                             "VERROR\0"
                             "C42501\0"
                             "Mm\0"
                             "Ddd\0"
                             "Hhhh\0"
                             "\0"s;
    BOOST_TEST(hex(p::error_response(e)) == hex(want));
}

BOOST_AUTO_TEST_CASE(simple_backend_messages_are_byte_exact)
{
    struct Case {
        const char* name;
        p::Bytes got;
        std::string want;
    };
    const Case cases[] = {
        {"AuthenticationOk", p::authentication_ok(), "R\0\0\0\x08\0\0\0\0"s},
        {"ParameterStatus", p::parameter_status("server_version", "16.0"),
         "S\0\0\0\x18server_version\0" "16.0\0"s},
        {"ParameterStatus empty value", p::parameter_status("a", ""), "S\0\0\0\x07" "a\0\0"s},
        {"BackendKeyData", p::backend_key_data(0x01020304, span_of("\xa0\xb0\xc0\xd0"s)),
         "K\0\0\0\x0c\x01\x02\x03\x04\xa0\xb0\xc0\xd0"s},
        {"BackendKeyData with a 32-byte secret (protocol 3.2)", p::backend_key_data(7, span_of(std::string(32, 'k'))),
         "K\0\0\0\x28\0\0\0\x07"s + std::string(32, 'k')},
        {"ReadyForQuery idle", p::ready_for_query('I'), "Z\0\0\0\x05I"s},
        {"ReadyForQuery in transaction", p::ready_for_query('T'), "Z\0\0\0\x05T"s},
        {"ReadyForQuery failed transaction", p::ready_for_query('E'), "Z\0\0\0\x05" "E"s},
        {"NegotiateProtocolVersion without options", p::negotiate_protocol_version(2, {}),
         "v\0\0\0\x0c\0\x03\0\x02\0\0\0\0"s},
        {"NegotiateProtocolVersion with options",
         p::negotiate_protocol_version(0, {"_pq_.a", "_pq_.bc"}),
         "v\0\0\0\x1b\0\x03\0\0\0\0\0\x02_pq_.a\0_pq_.bc\0"s},
    };
    for (const auto& c : cases)
        BOOST_TEST_CONTEXT(c.name) { BOOST_TEST(hex(c.got) == hex(c.want)); }
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(protocol_error_fields)

BOOST_AUTO_TEST_CASE(error_response_round_trips)
{
    auto fields = [](std::string sev, std::string code, std::string msg, std::string detail,
                     std::string hint) {
        p::ErrorFields e;
        e.severity = std::move(sev);
        e.sqlstate = std::move(code);
        e.message = std::move(msg);
        e.detail = std::move(detail);
        e.hint = std::move(hint);
        return e;
    };
    const p::ErrorFields cases[] = {
        fields("FATAL", "28P01", "password authentication failed for user \"x\"", "", ""),
        fields("ERROR", "42P01", "relation \"t\" does not exist", "some detail", "a hint"),
        fields("WARNING", "01000", "", "", "only a hint"),
        fields("NOTICE", "00000", "m", "d", ""),
        fields("PANIC", "", "", "", ""),
    };
    for (const auto& e : cases) {
        BOOST_TEST_CONTEXT(e.severity + " " + e.message)
        {
            p::Bytes wire = p::error_response(e);
            BOOST_TEST_REQUIRE(wire.size() >= 5u);
            BOOST_TEST(char(wire[0]) == 'E');
            BOOST_TEST(p::load_be32(wire.data() + 1) == wire.size() - 1);
            auto d = p::decode_error_fields(p::ByteSpan(wire).subspan(5));
            BOOST_TEST_REQUIRE(d.has_value());
            BOOST_TEST(d->severity == e.severity);
            BOOST_TEST(d->sqlstate == e.sqlstate);
            BOOST_TEST(d->message == e.message);
            BOOST_TEST(d->detail == e.detail);
            BOOST_TEST(d->hint == e.hint);
        }
    }
}

BOOST_AUTO_TEST_CASE(decode_prefers_unlocalized_severity_and_skips_unknown_fields)
{
    struct Case {
        const char* name;
        std::string body;
        std::string severity;
    };
    // S is localized (a Russian server says ОШИБКА for ERROR); V, since 9.6, is not.
    const Case cases[] = {
        {"V after S", "SОШИБКА\0VERROR\0C42000\0Mm\0\0"s, "ERROR"},
        {"V before S", "VERROR\0SОШИБКА\0C42000\0Mm\0\0"s, "ERROR"},
        {"S only (pre-9.6 server)", "SFATAL\0C42000\0Mm\0\0"s, "FATAL"},
        {"unknown fields", "SERROR\0Ffile.c\0L42\0Rfn\0P7\0C42000\0Mm\0\0"s, "ERROR"},
    };
    for (const auto& c : cases) {
        BOOST_TEST_CONTEXT(c.name)
        {
            auto d = p::decode_error_fields(span_of(c.body));
            BOOST_TEST_REQUIRE(d.has_value());
            BOOST_TEST(d->severity == c.severity);
            BOOST_TEST(d->sqlstate == "42000");
            BOOST_TEST(d->message == "m");
        }
    }
}

BOOST_AUTO_TEST_CASE(decode_rejects_malformed_bodies)
{
    struct Case {
        const char* name;
        std::string body;
    };
    const Case cases[] = {
        {"empty", ""},
        {"no terminator", "SERROR\0C42000\0Mm\0"s},
        {"truncated field value", "SERROR\0Mmess"s},
        {"code without value", "S"},
        {"bytes after terminator", "SERROR\0\0x"s},
        {"two terminators", "SERROR\0\0\0"s},
    };
    for (const auto& c : cases)
        BOOST_TEST_CONTEXT(c.name) { BOOST_TEST(!p::decode_error_fields(span_of(c.body))); }
}

BOOST_AUTO_TEST_CASE(decode_accepts_a_lone_terminator)
{
    auto d = p::decode_error_fields(span_of("\0"s));
    BOOST_TEST_REQUIRE(d.has_value());
    BOOST_TEST(d->severity.empty());
    BOOST_TEST(d->message.empty());
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(protocol_framer)

namespace {

struct Msg {
    char type;
    std::string body;
};

std::string frame(char type, const std::string& body)
{
    return std::string(1, type) + be32(std::uint32_t(body.size() + 4)) + body;
}

std::string frame_all(const std::vector<Msg>& msgs)
{
    std::string out;
    for (const auto& m : msgs)
        out += frame(m.type, m.body);
    return out;
}

struct Seen {
    char type;
    std::string body;
    size_t offset;  // of the type byte, in the whole stream
};

bool inspect_q_and_p(char type) { return type == 'Q' || type == 'P'; }

// The caller the Framer is written for: it forwards `scanned` bytes and keeps the
// rest, prepending it to the next read.
struct Feeder {
    explicit Feeder(size_t max_inspect) : framer(max_inspect) {}

    p::ScanResult feed(const std::string& chunk)
    {
        pending += chunk;
        p::ByteSpan data = span_of(pending);
        p::ScanResult r = framer.scan(data, inspect_q_and_p, [&](char type, p::ByteSpan body) {
            // Zero-copy: the body must be a view into the data just passed.
            BOOST_TEST((body.data() >= data.data() &&
                        body.data() + body.size() <= data.data() + data.size()));
            size_t body_at = size_t(body.data() - data.data());
            BOOST_TEST(body_at >= 5u);
            seen.push_back({type, str(body), consumed + body_at - 5});
            return true;
        });
        BOOST_TEST_REQUIRE(r.scanned <= pending.size());
        pending.erase(0, r.scanned);
        consumed += r.scanned;
        scanned_after_each.push_back(consumed);
        return r;
    }

    p::Framer framer;
    std::string pending;
    size_t consumed = 0;
    std::vector<Seen> seen;
    std::vector<size_t> scanned_after_each;
};

// A stream with inspected, uninspected, empty, cap-sized and over-cap messages.
constexpr size_t kMaxInspect = 64;
const std::vector<Msg>& sample_messages()
{
    static const std::vector<Msg> msgs = {
        {'Q', "select 1\0"s},
        {'D', std::string(300, 'd')},
        {'P', ""},
        {'Q', std::string(kMaxInspect - 5, 'a')},  // exactly at the cap: inspected
        {'Q', std::string(kMaxInspect - 4, 'b')},  // one over the cap: passed on
        {'C', ""},
        {'X', std::string(7, '\0')},
        {'Q', "x\0"s},
    };
    return msgs;
}

struct Expected {
    std::vector<Seen> inspected;
    std::vector<std::pair<size_t, size_t>> inspected_ranges;  // [start, end) in the stream
    std::vector<size_t> starts;                               // every message start
};

Expected expected_for(const std::vector<Msg>& msgs, size_t max_inspect)
{
    Expected e;
    size_t off = 0;
    for (const auto& m : msgs) {
        size_t size = m.body.size() + 5;
        e.starts.push_back(off);
        if (inspect_q_and_p(m.type) && size <= max_inspect) {
            e.inspected.push_back({m.type, m.body, off});
            e.inspected_ranges.emplace_back(off, off + size);
        }
        off += size;
    }
    e.starts.push_back(off);
    return e;
}

// Feeds `stream` cut at `cuts` and checks every invariant a relay depends on.
void check_feed(const std::string& stream, const std::vector<size_t>& cuts, const Expected& e)
{
    Feeder f(kMaxInspect);
    size_t prev = 0;
    std::vector<size_t> bounds = cuts;
    bounds.push_back(stream.size());
    for (size_t cut : bounds) {
        p::ScanResult r = f.feed(stream.substr(prev, cut - prev));
        prev = cut;
        BOOST_TEST_REQUIRE((r.status == p::ScanStatus::NeedMore));
        // Never forward part of a message the relay still has to look at.
        for (const auto& [s, end] : e.inspected_ranges)
            BOOST_TEST_REQUIRE(!(s < f.consumed && f.consumed < end),
                               "scanned " << f.consumed << " inside inspected message at " << s);
        // Forward everything else at once: what is held back is a partial header
        // or a partial inspected message, starting at a message boundary.
        if (!f.pending.empty()) {
            bool at_start = std::find(e.starts.begin(), e.starts.end(), f.consumed) != e.starts.end();
            BOOST_TEST_REQUIRE(at_start, "held back bytes from " << f.consumed);
            bool partial_header = f.pending.size() < 5;
            bool partial_inspected = false;
            for (const auto& [s, end] : e.inspected_ranges)
                if (s == f.consumed && f.consumed + f.pending.size() < end)
                    partial_inspected = true;
            BOOST_TEST_REQUIRE((partial_header || partial_inspected),
                               "held back " << f.pending.size() << " bytes at " << f.consumed);
        }
    }
    BOOST_TEST(f.consumed == stream.size());
    BOOST_TEST(f.pending.empty());
    BOOST_TEST(f.framer.at_boundary());
    BOOST_TEST_REQUIRE(f.seen.size() == e.inspected.size());
    for (size_t i = 0; i < e.inspected.size(); ++i) {
        BOOST_TEST_CONTEXT("inspected message " << i)
        {
            BOOST_TEST(f.seen[i].type == e.inspected[i].type);
            BOOST_TEST(f.seen[i].body == e.inspected[i].body);
            BOOST_TEST(f.seen[i].offset == e.inspected[i].offset);
        }
    }
}

} // namespace

BOOST_AUTO_TEST_CASE(whole_stream_in_one_piece)
{
    const std::string stream = frame_all(sample_messages());
    check_feed(stream, {}, expected_for(sample_messages(), kMaxInspect));
}

BOOST_AUTO_TEST_CASE(stream_fed_byte_by_byte)
{
    const std::string stream = frame_all(sample_messages());
    std::vector<size_t> cuts;
    for (size_t i = 1; i < stream.size(); ++i)
        cuts.push_back(i);
    check_feed(stream, cuts, expected_for(sample_messages(), kMaxInspect));
}

BOOST_AUTO_TEST_CASE(stream_split_once_at_every_byte_boundary)
{
    const std::string stream = frame_all(sample_messages());
    const Expected e = expected_for(sample_messages(), kMaxInspect);
    for (size_t cut = 0; cut <= stream.size(); ++cut)
        BOOST_TEST_CONTEXT("cut at " << cut) { check_feed(stream, {cut}, e); }
}

BOOST_AUTO_TEST_CASE(stream_fed_in_random_chunk_sizes)
{
    const std::string stream = frame_all(sample_messages());
    const Expected e = expected_for(sample_messages(), kMaxInspect);
    // Fixed seeds keep a failure reproducible.
    for (unsigned seed = 1; seed <= 300; ++seed) {
        std::mt19937 rng(seed);
        std::uniform_int_distribution<size_t> chunk(1, 1 + seed % 80);
        std::vector<size_t> cuts;
        for (size_t at = chunk(rng); at < stream.size(); at += chunk(rng))
            cuts.push_back(at);
        BOOST_TEST_CONTEXT("seed " << seed) { check_feed(stream, cuts, e); }
    }
}

BOOST_AUTO_TEST_CASE(messages_counts_each_message_once_however_split)
{
    const std::string stream = frame_all(sample_messages());
    for (size_t step : {stream.size(), size_t(7), size_t(1)}) {
        BOOST_TEST_CONTEXT("chunks of " << step)
        {
            Feeder f(kMaxInspect);
            for (size_t at = 0; at < stream.size(); at += step)
                f.feed(stream.substr(at, step));
            BOOST_TEST(f.framer.messages() == sample_messages().size());
        }
    }
}

BOOST_AUTO_TEST_CASE(uninspected_message_larger_than_each_read_is_passed_in_pieces)
{
    const std::string big(1'000'000, 'r');
    const std::string stream = frame('D', big) + frame('Q', "after\0"s);
    Feeder f(kMaxInspect);
    size_t at = 0;
    const size_t piece = 4096;
    while (at + piece < 5 + big.size()) {
        p::ScanResult r = f.feed(stream.substr(at, piece));
        at += piece;
        // Every byte of a relayed-only message goes on as soon as it arrives.
        BOOST_TEST_REQUIRE(r.scanned == piece);
        BOOST_TEST_REQUIRE((r.status == p::ScanStatus::NeedMore));
        BOOST_TEST_REQUIRE(!f.framer.at_boundary());
    }
    f.feed(stream.substr(at));
    BOOST_TEST(f.consumed == stream.size());
    BOOST_TEST(f.framer.at_boundary());
    BOOST_TEST_REQUIRE(f.seen.size() == 1u);
    BOOST_TEST(f.seen[0].body == "after\0"s);
    BOOST_TEST(f.seen[0].offset == 5 + big.size());
}

BOOST_AUTO_TEST_CASE(largest_declared_length_is_skipped_not_buffered)
{
    p::Framer framer(kMaxInspect);
    int calls = 0;
    auto count = [&](char, p::ByteSpan) { return ++calls, true; };
    const std::string header = "D" + be32(0xFFFFFFFF);
    p::ScanResult r = framer.scan(span_of(header), inspect_q_and_p, count);
    BOOST_TEST(r.scanned == 5u);
    BOOST_TEST(!framer.at_boundary());
    const std::string chunk(1 << 20, 'z');
    r = framer.scan(span_of(chunk), inspect_q_and_p, count);
    BOOST_TEST(r.scanned == chunk.size());
    BOOST_TEST(!framer.at_boundary());
    BOOST_TEST(calls == 0);
}

// The relay drops a message from its header alone, so Inspect must be able to tell where
// the message starts in the span scanned and how long it is, its body not there yet.
BOOST_AUTO_TEST_CASE(inspect_sees_where_each_message_starts)
{
    const std::string stream = frame_all(sample_messages());
    const Expected e = expected_for(sample_messages(), kMaxInspect);
    const std::string part = stream.substr(0, e.starts[1] + 7);  // ends inside the DataRow
    p::Framer framer(kMaxInspect);
    std::vector<std::pair<size_t, std::uint64_t>> headers;
    auto inspect = [&](char type) {
        headers.emplace_back(framer.header_offset(), framer.header_size());
        return inspect_q_and_p(type);
    };
    p::ScanResult r = framer.scan(span_of(part), inspect, [](char, p::ByteSpan) { return true; });
    BOOST_TEST(r.scanned == part.size());
    BOOST_TEST_REQUIRE(headers.size() == 2u);
    BOOST_TEST(headers[0].first == 0u);
    BOOST_TEST(headers[0].second == e.starts[1]);
    BOOST_TEST(headers[1].first == e.starts[1]);
    BOOST_TEST(headers[1].second == e.starts[2] - e.starts[1]);
    // The next scan starts where this one ended: offsets are in the new span.
    headers.clear();
    r = framer.scan(span_of(stream.substr(part.size())), inspect, [](char, p::ByteSpan) { return true; });
    BOOST_TEST_REQUIRE(headers.size() == sample_messages().size() - 2);
    BOOST_TEST(headers[0].first == e.starts[2] - part.size());
    BOOST_TEST(headers[1].first == e.starts[3] - part.size());
}

BOOST_AUTO_TEST_CASE(inspected_type_over_max_inspect_is_passed_uninspected)
{
    // Only the header has arrived, yet the message is already known to be too big
    // to buffer, so the framer lets it through instead of waiting for it.
    for (std::uint32_t len : {std::uint32_t(kMaxInspect), std::uint32_t(1) << 30, 0xFFFFFFFFu}) {
        BOOST_TEST_CONTEXT("length " << len)
        {
            p::Framer framer(kMaxInspect);
            int calls = 0;
            const std::string header = "Q" + be32(len);
            p::ScanResult r = framer.scan(span_of(header), inspect_q_and_p,
                                          [&](char, p::ByteSpan) { return ++calls, true; });
            BOOST_TEST(r.scanned == 5u);
            BOOST_TEST((r.status == p::ScanStatus::NeedMore));
            BOOST_TEST(calls == 0);
            BOOST_TEST(!framer.at_boundary());
        }
    }
}

BOOST_AUTO_TEST_CASE(inspected_message_at_max_inspect_waits_for_its_body)
{
    p::Framer framer(kMaxInspect);
    const std::string msg = frame('Q', std::string(kMaxInspect - 5, 'q'));
    BOOST_TEST_REQUIRE(msg.size() == kMaxInspect);
    int calls = 0;
    auto cb = [&](char, p::ByteSpan body) {
        BOOST_TEST(body.size() == kMaxInspect - 5);
        ++calls;
        return true;
    };
    p::ScanResult r = framer.scan(span_of(msg.substr(0, msg.size() - 1)), inspect_q_and_p, cb);
    BOOST_TEST(r.scanned == 0u);
    BOOST_TEST(calls == 0);
    r = framer.scan(span_of(msg), inspect_q_and_p, cb);
    BOOST_TEST(r.scanned == msg.size());
    BOOST_TEST(calls == 1);
}

BOOST_AUTO_TEST_CASE(partial_header_is_held_back)
{
    p::Framer framer(kMaxInspect);
    const std::string msg = frame('D', "abc");
    for (size_t n = 0; n < 5; ++n) {
        BOOST_TEST_CONTEXT(n << " header bytes")
        {
            p::ScanResult r = framer.scan(span_of(msg.substr(0, n)), inspect_q_and_p,
                                          [](char, p::ByteSpan) { return true; });
            BOOST_TEST(r.scanned == 0u);
            BOOST_TEST((r.status == p::ScanStatus::NeedMore));
            BOOST_TEST(framer.at_boundary());
        }
    }
}

BOOST_AUTO_TEST_CASE(length_below_four_is_a_violation_at_its_offset)
{
    const std::string good = frame('Q', "select 1\0"s) + frame('D', std::string(20, 'd'));
    for (std::uint32_t len : {0u, 1u, 2u, 3u}) {
        for (char type : {'Q', 'D'}) {
            BOOST_TEST_CONTEXT("type " << type << " length " << len)
            {
                const std::string stream = good + type + be32(len) + "trailing";
                p::Framer framer(kMaxInspect);
                int calls = 0;
                p::ScanResult r = framer.scan(span_of(stream), inspect_q_and_p,
                                              [&](char, p::ByteSpan) { return ++calls, true; });
                BOOST_TEST((r.status == p::ScanStatus::Violation));
                BOOST_TEST(r.scanned == good.size());
                BOOST_TEST(calls == 1);
            }
        }
    }
}

BOOST_AUTO_TEST_CASE(violation_after_a_skipped_message_spanning_reads)
{
    const std::string stream = frame('D', std::string(100, 'd')) + "Q" + be32(3);
    p::Framer framer(kMaxInspect);
    auto cb = [](char, p::ByteSpan) { return true; };
    p::ScanResult r = framer.scan(span_of(stream.substr(0, 50)), inspect_q_and_p, cb);
    BOOST_TEST(r.scanned == 50u);
    r = framer.scan(span_of(stream.substr(50)), inspect_q_and_p, cb);
    BOOST_TEST((r.status == p::ScanStatus::Violation));
    BOOST_TEST(r.scanned == 105u - 50u);
}

BOOST_AUTO_TEST_CASE(callback_returning_false_stops_after_that_message)
{
    const std::string q1 = frame('Q', "one\0"s), q2 = frame('Q', "two\0"s),
                      d = frame('D', "row"), q3 = frame('Q', "three\0"s);
    const std::string stream = q1 + q2 + d + q3;
    p::Framer framer(kMaxInspect);
    std::vector<std::string> seen;
    auto cb = [&](char, p::ByteSpan body) {
        seen.push_back(str(body));
        return str(body) != "two\0"s;
    };
    p::ScanResult r = framer.scan(span_of(stream), inspect_q_and_p, cb);
    BOOST_TEST((r.status == p::ScanStatus::Stopped));
    BOOST_TEST(r.scanned == q1.size() + q2.size());
    BOOST_TEST(seen.size() == 2u);
    BOOST_TEST(framer.at_boundary());

    r = framer.scan(span_of(stream.substr(r.scanned)), inspect_q_and_p, cb);
    BOOST_TEST((r.status == p::ScanStatus::NeedMore));
    BOOST_TEST(r.scanned == d.size() + q3.size());
    BOOST_TEST_REQUIRE(seen.size() == 3u);
    BOOST_TEST(seen[2] == "three\0"s);
}

BOOST_AUTO_TEST_CASE(stop_on_the_last_message_scans_everything)
{
    const std::string stream = frame('P', "");
    p::Framer framer(kMaxInspect);
    p::ScanResult r = framer.scan(span_of(stream), inspect_q_and_p,
                                  [](char type, p::ByteSpan body) {
                                      BOOST_TEST(type == 'P');
                                      BOOST_TEST(body.empty());
                                      return false;
                                  });
    BOOST_TEST((r.status == p::ScanStatus::Stopped));
    BOOST_TEST(r.scanned == stream.size());
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(protocol_reader)

BOOST_AUTO_TEST_CASE(reads_big_endian)
{
    const std::string data = "\x01\x02\x03\x04\x05\x06\x07\xff\xff\xff\xfe"s;
    p::Reader r(span_of(data));
    BOOST_TEST(r.remaining() == 11u);
    BOOST_TEST(*r.u8() == 0x01);
    BOOST_TEST(*r.u16() == 0x0203);
    BOOST_TEST(*r.u32() == 0x04050607u);
    BOOST_TEST(*r.i32() == -2);
    BOOST_TEST(r.empty());
}

BOOST_AUTO_TEST_CASE(short_reads_fail_without_consuming)
{
    struct Case {
        const char* name;
        std::string data;
        std::function<bool(p::Reader&)> read_fails;
    };
    const Case cases[] = {
        {"u8 of nothing", "\x00"s.substr(1), [](p::Reader& r) { return !r.u8(); }},
        {"u16 of 1 byte", "\x01"s, [](p::Reader& r) { return !r.u16(); }},
        {"u32 of 3 bytes", "\x01\x02\x03"s, [](p::Reader& r) { return !r.u32(); }},
        {"i32 of 3 bytes", "\x01\x02\x03"s, [](p::Reader& r) { return !r.i32(); }},
        {"cstring without NUL", "abc"s, [](p::Reader& r) { return !r.cstring(); }},
    };
    for (const auto& c : cases) {
        BOOST_TEST_CONTEXT(c.name)
        {
            p::Reader r(span_of(c.data));
            BOOST_TEST(c.read_fails(r));
            BOOST_TEST(r.remaining() == c.data.size());
        }
    }
}

BOOST_AUTO_TEST_CASE(reads_exactly_to_the_end)
{
    const std::string data = "\x01\x02\x03\x04\x05\x06" "ab\0\0"s;
    p::Reader r(span_of(data));
    BOOST_TEST(*r.u32() == 0x01020304u);
    BOOST_TEST(*r.u16() == 0x0506);
    BOOST_TEST(*r.cstring() == "ab");
    BOOST_TEST(r.remaining() == 1u);
    BOOST_TEST(!r.u16());
    BOOST_TEST(*r.cstring() == "");  // the NUL that is the very last byte
    BOOST_TEST(r.empty());
    BOOST_TEST(!r.cstring());
    BOOST_TEST(!r.u8());
}

BOOST_AUTO_TEST_CASE(reader_over_an_empty_span)
{
    // A default span has a null data pointer; reads must still just fail.
    p::Reader r{p::ByteSpan{}};
    BOOST_TEST(r.empty());
    BOOST_TEST(!r.u8());
    BOOST_TEST(!r.u16());
    BOOST_TEST(!r.u32());
    BOOST_TEST(!r.cstring());
}

BOOST_AUTO_TEST_SUITE_END()
