// libFuzzer target for the pass-through login (upstream::LoginRelay) as a hostile server
// drives it. The input is the server's byte stream, framed as passthrough.cc frames it
// (type, length checked by check_server_header before the body is taken); whenever the
// relay asks the client, the next input byte picks the client's answer. Properties: a
// BackendKeyData (the server's own key) is never relayed, -PLUS is never offered to it, a login ends
// only after AuthenticationOk, every refusal carries a SQLSTATE and a message, and once
// the login has ended nothing more is relayed.
#include "fuzz_check.hh"
#include "protocol/bytes.hh"
#include "upstream/login_relay.hh"

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace u = pgw::upstream;
using Kind = u::LoginStep::Kind;

namespace {

const std::string_view kAnswers[] = {
    std::string_view("SCRAM-SHA-256\0\0\0\0\x20n,,n=,r=rOprNGfwEbeRWgbNEkqOabcd", 50),
    std::string_view("SCRAM-SHA-256\0\0\0\0\x20y,,n=,r=rOprNGfwEbeRWgbNEkqOabcd", 50),
    "c=biws,r=rOprNGfwEbeRWgbNEkqO,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
    std::string_view("md5a3556571e93b0d20722ba62be61e8c2d\0", 36),
    "",
};

// Whether an AuthenticationSASL body names SCRAM-SHA-256-PLUS among its mechanisms.
bool offers_plus(std::string_view body)
{
    for (size_t at = 4; at < body.size();) {
        size_t nul = body.find('\0', at);
        if (nul == std::string_view::npos)
            nul = body.size();
        if (body.substr(at, nul - at) == "SCRAM-SHA-256-PLUS")
            return true;
        at = nul + 1;
    }
    return false;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    std::string_view in(reinterpret_cast<const char*>(data), size);
    u::LoginRelay relay;
    bool authenticated = false, ended = false, asked = false;
    while (!in.empty()) {
        if (asked) {
            unsigned pick = static_cast<unsigned char>(in[0]);
            in.remove_prefix(1);
            char type = (pick & 0x80) ? 'Q' : 'p';
            auto step = relay.on_client(type, kAnswers[pick % std::size(kAnswers)]);
            FUZZ_CHECK(step.kind == Kind::Forward || step.kind == Kind::Refuse);
            if (step.kind == Kind::Refuse) {
                FUZZ_CHECK(step.sqlstate.size() == 5 && !step.message.empty());
                ended = true;
            }
            asked = false;
            continue;
        }
        if (in.size() < 5)
            break;
        char type = in[0];
        std::uint32_t len = pgw::protocol::load_be32(reinterpret_cast<const std::byte*>(in.data() + 1));
        if (auto refused = u::LoginRelay::check_server_header(len)) {
            FUZZ_CHECK(len < 4 || len > u::kMaxLoginMessage);
            FUZZ_CHECK(refused->sqlstate == "08P01");
            break;
        }
        if (in.size() - 5 < len - 4)
            break;
        std::string_view body = in.substr(5, len - 4);
        in.remove_prefix(1 + len);

        auto step = relay.on_server(type, body);
        if (ended) {
            FUZZ_CHECK(step.kind == Kind::Refuse);
            continue;
        }
        switch (step.kind) {
        case Kind::Refuse:
            FUZZ_CHECK(step.sqlstate.size() == 5 && !step.message.empty() && step.body.empty());
            ended = true;
            break;
        case Kind::ServerError:
            FUZZ_CHECK(step.type == 'E' && step.sqlstate.size() == 5 && body == step.body);
            ended = true;
            break;
        case Kind::Ready:
            FUZZ_CHECK(authenticated && type == 'Z');
            ended = true;
            break;
        case Kind::Wait:
            FUZZ_CHECK(authenticated && type == 'K' && relay.has_key());
            break;
        case Kind::AskClient:
            FUZZ_CHECK(!authenticated && step.type == 'R');
            asked = true;
            [[fallthrough]];
        case Kind::Forward:
            FUZZ_CHECK(step.type == type && step.type != 'K');
            FUZZ_CHECK(step.body.size() <= body.size());
            if (type == 'R' && step.body.size() >= 4 && pgw::protocol::load_be32(reinterpret_cast<const std::byte*>(step.body.data())) == 0)
                authenticated = true;
            if (type == 'R' && step.body.size() >= 4 && pgw::protocol::load_be32(reinterpret_cast<const std::byte*>(step.body.data())) == 10)
                FUZZ_CHECK(!offers_plus(step.body));
            break;
        }
    }
    return 0;
}
