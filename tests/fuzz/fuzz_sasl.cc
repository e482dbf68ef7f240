// libFuzzer target for the whole server-side SCRAM exchange as the client's bytes drive
// it: the input is the client's stream after AuthenticationSASL, framed as authenticate.cc
// frames it (sasl::check_password_header before a body is taken, so a length near
// UINT32_MAX is refused without reading), the SASLInitialResponse decoded by
// sasl::parse_initial_response, then scram::ServerExchange. The first byte picks the
// verifier (RFC 7677's "pencil" with its server nonce, or an unknown user's mock).
// Properties: lengths never wrap (a decoded initial response lies inside its body), the
// exchange answers at most two messages, an unknown user never succeeds, and nothing is
// accepted once the exchange has ended.
#include "auth/sasl_message.hh"
#include "auth/scram.hh"
#include "fuzz_check.hh"
#include "scram_pencil.hh"
#include "protocol/bytes.hh"

#include <cstdint>
#include <optional>
#include <string_view>
#include <variant>

namespace s = pgw::auth::scram;
namespace sasl = pgw::auth::sasl;

namespace {

const std::uint8_t kSecret[32] = {7};

// The next message of the stream, as Exchange::read_response takes it; nullopt when the
// header is refused or the stream ends first (the client's turn is over either way).
std::optional<std::string_view> next_message(std::string_view& in)
{
    if (in.size() < 5)
        return std::nullopt;
    const std::uint32_t len = pgw::protocol::load_be32(reinterpret_cast<const std::byte*>(in.data() + 1));
    if (auto bad = sasl::check_password_header(in[0], len)) {
        FUZZ_CHECK(!bad->empty());
        FUZZ_CHECK(in[0] != 'p' || len < 4 || len > sasl::kMaxPasswordMessage);
        return std::nullopt;
    }
    if (in.size() - 5 < len - 4)
        return std::nullopt;
    std::string_view body = in.substr(5, len - 4);
    in.remove_prefix(1 + len);
    return body;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    if (size < 1)
        return 0;
    const bool unknown = data[0] & 1;
    std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);
    s::ServerExchange x = unknown ? s::ServerExchange::for_unknown_user(kSecret, "nobody")
                                  : s::ServerExchange::with_server_nonce(pencil(), "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");

    auto first = next_message(in);
    if (!first)
        return 0;
    auto initial = sasl::parse_initial_response(*first);
    if (auto* bad = std::get_if<std::string>(&initial)) {
        FUZZ_CHECK(!bad->empty());
        return 0;
    }
    const auto& ir = std::get<sasl::InitialResponse>(initial);
    FUZZ_CHECK(ir.mechanism.size() + 5 + ir.data.size() == first->size());
    FUZZ_CHECK(ir.mechanism.find('\0') == std::string_view::npos);
    // The data is exactly as long as the packet says, whatever that length is.
    FUZZ_CHECK(ir.data.size() ==
               pgw::protocol::load_be32(reinterpret_cast<const std::byte*>(first->data() + ir.mechanism.size() + 1)));
    FUZZ_CHECK(ir.data.data() >= first->data() && ir.data.data() + ir.data.size() <= first->data() + first->size());
    if (ir.mechanism != s::kMechanism)
        return 0;  // refused by name before the exchange

    auto step1 = x.client_first(ir.data);
    if (std::holds_alternative<s::ScramError>(step1)) {
        FUZZ_CHECK(x.done());
        return 0;
    }
    auto final_msg = next_message(in);
    if (!final_msg)
        return 0;
    auto step2 = x.client_final(*final_msg);
    FUZZ_CHECK(x.done());
    if (std::holds_alternative<std::string>(step2))
        FUZZ_CHECK(!unknown);
    // A third message (a client that keeps talking) is never taken as another proof.
    if (auto more = next_message(in))
        FUZZ_CHECK(std::holds_alternative<s::ScramError>(x.client_final(*more)));
    return 0;
}
