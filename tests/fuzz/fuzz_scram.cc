// libFuzzer target for SCRAM-SHA-256: verifier parsing (a parse/format/parse round trip)
// and a server exchange fed two client messages, checked against what each step promises.
#include "auth/scram.hh"
#include "fuzz_check.hh"
#include "scram_pencil.hh"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <variant>

namespace s = pgw::auth::scram;

namespace {

const std::uint8_t kSecret[32] = {42};

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    if (size < 2)
        return 0;
    std::string_view in(reinterpret_cast<const char*>(data) + 2, size - 2);

    if (data[0] & 1) {
        auto v = s::parse_verifier(in);
        if (v) {
            FUZZ_CHECK(v->iterations >= 1 && !v->salt.empty() && v->salt.size() <= s::kMaxSaltLen);
            auto again = s::parse_verifier(s::format_verifier(*v));
            FUZZ_CHECK(again.ok());
            FUZZ_CHECK(again->iterations == v->iterations && again->salt == v->salt);
            FUZZ_CHECK(again->stored_key == v->stored_key && again->server_key == v->server_key);
        } else {
            FUZZ_CHECK(!v.error().empty());
        }
        return 0;
    }

    // data[1] splits the rest into client-first and client-final.
    size_t split = std::min<size_t>(data[1], in.size());
    std::string_view first = in.substr(0, split), final_msg = in.substr(split);
    // Half the runs with RFC 7677's server nonce, so a fuzzer that learns the RFC's
    // messages can walk the whole exchange to success.
    s::ServerExchange x = (data[0] & 2) ? s::ServerExchange::with_server_nonce(pencil(), "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
                          : (data[0] & 4) ? s::ServerExchange::for_unknown_user(kSecret, "nobody")
                                          : s::ServerExchange(pencil());
    bool doomed = !(data[0] & 2) && (data[0] & 4);

    auto step1 = x.client_first(first);
    if (const auto* e = std::get_if<s::ScramError>(&step1)) {
        FUZZ_CHECK(e->kind != s::Failure::WrongPassword && !e->message.empty() && x.done());
        FUZZ_CHECK(std::strlen(s::sqlstate(e->kind)) == 5);
        return 0;
    }
    const std::string& server_first = std::get<std::string>(step1);
    FUZZ_CHECK(server_first.rfind("r=", 0) == 0 && server_first.find(",s=") != std::string::npos);
    FUZZ_CHECK(!x.done());

    auto step2 = x.client_final(final_msg);
    FUZZ_CHECK(x.done());
    if (const auto* ok = std::get_if<std::string>(&step2)) {
        // Success needs the proof; an unknown user can never get here.
        FUZZ_CHECK(!doomed);
        FUZZ_CHECK(ok->rfind("v=", 0) == 0 && ok->size() == 2 + 44);
        FUZZ_CHECK(final_msg.find(",p=") != std::string_view::npos);
    } else {
        FUZZ_CHECK(!std::get<s::ScramError>(step2).message.empty());
    }
    // Nothing is accepted after the end.
    FUZZ_CHECK(std::holds_alternative<s::ScramError>(x.client_final(final_msg)));
    return 0;
}
