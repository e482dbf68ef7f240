// libFuzzer target for the SSO decoders: JWT verification, JWKS parsing, OAUTHBEARER's
// initial response and base64/base64url, each with the properties it promises.
#include "auth/base64.hh"
#include "auth/jwt.hh"
#include "auth/oauthbearer.hh"
#include "fuzz_check.hh"

#include <cstdint>
#include <string>
#include <string_view>
#include <variant>

namespace a = pgw::auth;

namespace {

// The EC P-256 public key of RFC 7515 appendix A.3, so ES256 tokens reach the signature
// check. A second key without kid exercises the kid-less lookup.
constexpr const char* kJwks = R"({"keys":[
  {"kty":"EC","kid":"k1","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
   "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]})";

const a::jwt::Jwks& jwks()
{
    static const a::jwt::Jwks j = [] {
        auto r = a::jwt::Jwks::parse(kJwks);
        FUZZ_CHECK(r.ok());
        return *r;
    }();
    return j;
}

// Messages may quote a few claim values, each cut to 80 bytes, and never the token:
// a whole token of two dots and 200 bytes or more can only appear if it was echoed.
void check_no_echo(const std::string& message, std::string_view token)
{
    size_t dots = 0;
    for (char c : token)
        dots += c == '.';
    if (dots == 2 && token.size() >= 200)
        FUZZ_CHECK(message.find(token) == std::string::npos);
    FUZZ_CHECK(message.size() < 1024);
    for (char c : message)
        FUZZ_CHECK(static_cast<unsigned char>(c) >= 0x20 && c != 0x7f);
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    if (size == 0)
        return 0;
    std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);
    switch (data[0] % 4) {
    case 0: {
        a::jwt::VerifyOptions opt;
        opt.issuers = {"joe"};
        opt.audiences = {"aud"};
        opt.now = 1300819000;
        opt.identity_claim = "sub";
        auto r = a::jwt::verify(in, jwks(), opt);
        if (const auto* e = std::get_if<a::jwt::JwtError>(&r)) {
            FUZZ_CHECK(!e->message.empty());
            FUZZ_CHECK((e->kind == a::jwt::Failure::TooLarge) == (in.size() > a::jwt::kMaxTokenBytes));
            FUZZ_CHECK(e->reload_jwks == (e->kind == a::jwt::Failure::UnknownKey));
            check_no_echo(e->message, in);
        } else {
            // Only a signature by RFC 7515's key can get here; whatever it carried, the
            // result must satisfy what verify() promises.
            const auto& id = std::get<a::jwt::Identity>(r);
            FUZZ_CHECK(id.issuer == "joe" && id.audience == "aud" && !id.identity.empty());
            FUZZ_CHECK(id.exp > 1300819000 - 60);
        }
        break;
    }
    case 1: {
        auto r = a::jwt::Jwks::parse(in);
        if (r) {
            FUZZ_CHECK(!r->keys().empty());
            for (const auto& k : r->keys())
                FUZZ_CHECK(k.pkey != nullptr);
        }
        break;
    }
    case 2: {
        // Strict decoders: what decodes re-encodes to exactly the input.
        if (auto d = a::base64_decode(in))
            FUZZ_CHECK(a::base64_encode(*d) == in);
        if (auto d = a::base64url_decode(in))
            FUZZ_CHECK(a::base64url_encode(*d) == in);
        break;
    }
    case 3: {
        auto r = a::oauthbearer::parse_initial_response(in);
        if (const auto* c = std::get_if<a::oauthbearer::ClientResponse>(&r)) {
            using K = a::oauthbearer::ClientResponse::Kind;
            FUZZ_CHECK(in.size() >= 5 && in.substr(in.size() - 2) == "\x01\x01");
            FUZZ_CHECK((c->kind == K::Token) == !c->token.empty());
            if (c->kind == K::Token) {
                FUZZ_CHECK(in.find(c->token) != std::string_view::npos);
                FUZZ_CHECK(c->token.find_first_of(" \t\r\n\x01") == std::string::npos);
            }
        } else {
            const auto& e = std::get<a::oauthbearer::ProtocolError>(r);
            // Fixed wording only: short, and without the control bytes the input is made of.
            FUZZ_CHECK(e.message.rfind("malformed OAUTHBEARER message: ", 0) == 0);
            FUZZ_CHECK(e.message.size() < 120);
            FUZZ_CHECK(e.message.find_first_of(std::string_view("\x01\0\n", 3)) == std::string::npos);
        }
        break;
    }
    }
    return 0;
}
