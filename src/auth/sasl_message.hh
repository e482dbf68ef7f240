// The SASL messages a client sends during authentication (PostgreSQL 15 documentation,
// 55.7: PasswordMessage's header, SASLInitialResponse), decoded without I/O so
// authenticate.cc and tests/fuzz/fuzz_sasl.cc read them the same way.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

namespace pgw::auth::sasl {

// A password-type message holds at most a token; 64 KiB tokens must get a clear "too
// large" from the verifier rather than a protocol error, so allow a bit more.
constexpr std::uint32_t kMaxPasswordMessage = 128 * 1024;

// The header of the client's answer: its type must be 'p' and its length (which counts
// itself) between 4 and kMaxPasswordMessage. Returns what is wrong, for an 08P01.
std::optional<std::string> check_password_header(char type, std::uint32_t len);

struct InitialResponse {
    std::string_view mechanism;
    std::string_view data;
};

// SASLInitialResponse: the mechanism as a C string, an Int32 length, that many bytes, and
// nothing after. A length of -1 ("no data") is refused: SCRAM and OAUTHBEARER both need a
// first message. Returns the error message for an 08P01 otherwise.
std::variant<InitialResponse, std::string> parse_initial_response(std::string_view body);

} // namespace pgw::auth::sasl
