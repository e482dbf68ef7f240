// Base64 (RFC 4648): the standard alphabet with padding, as SCRAM and pg_authid use it,
// and base64url without padding, as JWS uses it. Decoders are strict and take hostile input.
#pragma once

#include "common/result.hh"

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace pgw::auth {

// Binary data in auth code is uint8_t, not std::byte: every consumer is an OpenSSL call
// that takes unsigned char, and a cast at each of them would hide more than it shows.
using Octets = std::vector<std::uint8_t>;

inline std::span<const std::uint8_t> octets_of(std::string_view s)
{
    return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

std::string base64_encode(std::span<const std::uint8_t> data);

// Strict: length a multiple of 4, only the standard alphabet, '=' only as the last one
// or two characters, and the unused bits of the last group zero, so every byte string
// has exactly one accepted encoding. Errors name the offset, never the character (the
// text may be part of a secret).
Result<Octets> base64_decode(std::string_view text);

// base64url without padding (RFC 7515 section 2): '-' and '_' for '+' and '/', no '='
// at all, a length that leaves no single dangling character, unused bits zero.
std::string base64url_encode(std::span<const std::uint8_t> data);
Result<Octets> base64url_decode(std::string_view text);

} // namespace pgw::auth
