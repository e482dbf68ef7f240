// Base64 and base64url encoding and strict decoding (see base64.hh).
// Table-driven and byte-at-a-time; inputs here are at most a few kilobytes.
#include "auth/base64.hh"

#include <array>

namespace pgw::auth {

namespace {

constexpr char kStd[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
constexpr char kUrl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

constexpr std::uint8_t kInvalid = 0xff;

constexpr std::array<std::uint8_t, 256> reverse_table(const char* alphabet)
{
    std::array<std::uint8_t, 256> t{};
    for (auto& v : t)
        v = kInvalid;
    for (int i = 0; i < 64; ++i)
        t[static_cast<unsigned char>(alphabet[i])] = static_cast<std::uint8_t>(i);
    return t;
}

constexpr auto kStdRev = reverse_table(kStd);
constexpr auto kUrlRev = reverse_table(kUrl);

std::string encode(std::span<const std::uint8_t> data, const char* alphabet, bool pad)
{
    std::string out;
    out.reserve((data.size() + 2) / 3 * 4);
    size_t i = 0;
    for (; i + 3 <= data.size(); i += 3) {
        std::uint32_t v = (std::uint32_t(data[i]) << 16) | (std::uint32_t(data[i + 1]) << 8) | data[i + 2];
        out += alphabet[(v >> 18) & 63];
        out += alphabet[(v >> 12) & 63];
        out += alphabet[(v >> 6) & 63];
        out += alphabet[v & 63];
    }
    size_t rest = data.size() - i;
    if (rest == 1) {
        std::uint32_t v = std::uint32_t(data[i]) << 16;
        out += alphabet[(v >> 18) & 63];
        out += alphabet[(v >> 12) & 63];
        if (pad)
            out += "==";
    } else if (rest == 2) {
        std::uint32_t v = (std::uint32_t(data[i]) << 16) | (std::uint32_t(data[i + 1]) << 8);
        out += alphabet[(v >> 18) & 63];
        out += alphabet[(v >> 12) & 63];
        out += alphabet[(v >> 6) & 63];
        if (pad)
            out += '=';
    }
    return out;
}

// Decodes `text` (no padding left in it) with the reverse table `rev`; `what` names the
// encoding in errors. Offsets are into `text`, which starts where the caller's does.
Result<Octets> decode_unpadded(std::string_view text, const std::array<std::uint8_t, 256>& rev,
                               const char* what)
{
    if (text.size() % 4 == 1)
        return Error{std::string("invalid ") + what + ": length leaves a dangling character"};
    Octets out;
    out.reserve(text.size() / 4 * 3 + 2);
    std::uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < text.size(); ++i) {
        std::uint8_t v = rev[static_cast<unsigned char>(text[i])];
        if (v == kInvalid)
            return Error{std::string("invalid ") + what + ": bad character at offset " + std::to_string(i)};
        acc = (acc << 6) | v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out.push_back(static_cast<std::uint8_t>(acc >> bits));
            acc &= (1u << bits) - 1;
        }
    }
    // What is left are the unused low bits of the last character: a canonical encoder
    // writes zeros there, and accepting anything else would give one value two spellings.
    if (acc != 0)
        return Error{std::string("invalid ") + what + ": nonzero bits after the last byte"};
    return out;
}

} // namespace

std::string base64_encode(std::span<const std::uint8_t> data)
{
    return encode(data, kStd, true);
}

std::string base64url_encode(std::span<const std::uint8_t> data)
{
    return encode(data, kUrl, false);
}

Result<Octets> base64_decode(std::string_view text)
{
    if (text.size() % 4 != 0)
        return Error{"invalid base64: length is not a multiple of 4"};
    size_t pad = 0;
    while (pad < 2 && pad < text.size() && text[text.size() - 1 - pad] == '=')
        ++pad;
    std::string_view body = text.substr(0, text.size() - pad);
    // A third '=' (or one in the middle) lands here as a bad character.
    auto r = decode_unpadded(body, kStdRev, "base64");
    if (!r)
        return r;
    // Padding must complete the last group exactly: "QQ==" yes, "QQ=" or "QUI==" no.
    if ((body.size() + pad) % 4 != 0 || (pad > 0 && body.size() % 4 == 0))
        return Error{"invalid base64: bad padding"};
    return r;
}

Result<Octets> base64url_decode(std::string_view text)
{
    return decode_unpadded(text, kUrlRev, "base64url");
}

} // namespace pgw::auth
