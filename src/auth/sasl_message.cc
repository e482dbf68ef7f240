// Decoders for the client's SASL messages; see sasl_message.hh.
#include "auth/sasl_message.hh"

#include "protocol/bytes.hh"

namespace pgw::auth::sasl {

std::optional<std::string> check_password_header(char type, std::uint32_t len)
{
    if (type != 'p')
        return std::string("expected a password response, got message type '") + type + "'";
    if (len < 4 || len > kMaxPasswordMessage)
        return std::string("invalid password packet size");
    return std::nullopt;
}

std::variant<InitialResponse, std::string> parse_initial_response(std::string_view body)
{
    const size_t nul = body.find('\0');
    if (nul == std::string_view::npos || body.size() - nul < 5)
        return std::string("malformed SASLInitialResponse");
    // Compared as unsigned 32-bit values against what is left: a length near UINT32_MAX
    // (or a negative one) cannot wrap into a match.
    const std::uint32_t dlen = protocol::load_be32(reinterpret_cast<const std::byte*>(body.data() + nul + 1));
    const size_t rest = body.size() - nul - 5;
    if (dlen == 0xffffffffu || std::uint64_t(dlen) != std::uint64_t(rest))
        return std::string("malformed SASLInitialResponse");
    return InitialResponse{body.substr(0, nul), body.substr(nul + 5)};
}

} // namespace pgw::auth::sasl
