// Unit tests for src/auth/: base64, SCRAM-SHA-256 (against RFC 7677's vector and a real
// PostgreSQL 15 verifier), JWT/JWKS with test keys (tests/common/jwt_mint), and OAUTHBEARER parsing.
#include "auth/base64.hh"
#include "auth/jwt.hh"
#include "auth/oauthbearer.hh"
#include "auth/ossl.hh"
#include "auth/scram.hh"
#include "../common/jwt_mint.hh"

#include <boost/test/unit_test.hpp>

#include <nlohmann/json.hpp>
#include <openssl/evp.h>

#include <map>
#include <string>
#include <variant>

using namespace pgw;
using namespace pgw::auth;
// Keys, JWKS and signing shared with the integration tests (tests/common/jwt_mint.hh).
using namespace pgw::testing;
using nlohmann::json;

namespace {

std::string str(const Octets& o)
{
    return std::string(o.begin(), o.end());
}

} // namespace

// ==== base64 ===========================================================================

BOOST_AUTO_TEST_SUITE(auth_base64)

BOOST_AUTO_TEST_CASE(rfc4648_vectors_round_trip)
{
    const std::pair<const char*, const char*> vectors[] = {
        {"", ""}, {"f", "Zg=="}, {"fo", "Zm8="}, {"foo", "Zm9v"},
        {"foob", "Zm9vYg=="}, {"fooba", "Zm9vYmE="}, {"foobar", "Zm9vYmFy"},
    };
    for (auto [plain, enc] : vectors) {
        BOOST_TEST(base64_encode(octets_of(plain)) == enc);
        auto d = base64_decode(enc);
        BOOST_TEST_REQUIRE(d.ok(), enc);
        BOOST_TEST(str(*d) == plain);
    }
}

BOOST_AUTO_TEST_CASE(strict_decoder_rejects_bad_input)
{
    for (const char* bad : {"Zg=", "Zg", "Z===", "====", "Zg==Zg==", "Zm9v\n", "Zm 9v", "Zm9-", "Zm9_",
                            "Zh==",  // nonzero bits after the last byte: "Zg==" is the only spelling
                            "Zm9=",  // likewise for one pad
                            "Zm=v", "=Zm9"}) {
        auto d = base64_decode(bad);
        BOOST_TEST(!d.ok(), "accepted: " << bad);
    }
    auto d = base64_decode("Zm9v!mFy");
    BOOST_TEST_REQUIRE(!d.ok());
    BOOST_TEST(d.error().find("offset 4") != std::string::npos, d.error());
    BOOST_TEST(d.error().find('!') == std::string::npos, "the message must not echo input");
}

BOOST_AUTO_TEST_CASE(all_byte_values_round_trip)
{
    Octets all;
    for (int i = 0; i < 256; ++i)
        all.push_back(std::uint8_t(i));
    for (size_t len = 0; len <= all.size(); len += 37) {
        std::span<const std::uint8_t> part(all.data(), len);
        auto std_d = base64_decode(base64_encode(part));
        auto url_d = base64url_decode(base64url_encode(part));
        BOOST_TEST_REQUIRE(std_d.ok());
        BOOST_TEST_REQUIRE(url_d.ok());
        BOOST_TEST((*std_d == Octets(part.begin(), part.end())));
        BOOST_TEST((*url_d == Octets(part.begin(), part.end())));
    }
}

BOOST_AUTO_TEST_CASE(base64url_has_no_padding_and_its_own_alphabet)
{
    const std::uint8_t bytes[] = {0xfb, 0xff, 0xbf};
    BOOST_TEST(base64_encode(bytes) == "+/+/");
    BOOST_TEST(base64url_encode(bytes) == "-_-_");
    BOOST_TEST(base64url_encode(octets_of("f")) == "Zg");
    BOOST_TEST(str(*base64url_decode("Zm9vYg")) == "foob");
    BOOST_TEST(!base64url_decode("Zg==").ok());   // padding is not base64url as JWS uses it
    BOOST_TEST(!base64url_decode("+/+/").ok());   // standard alphabet
    BOOST_TEST(!base64url_decode("Zm9vY").ok());  // dangling character
    BOOST_TEST(!base64url_decode("Zh").ok());     // nonzero trailing bits
    BOOST_TEST(base64url_decode("").ok());
}

BOOST_AUTO_TEST_SUITE_END()

// ==== SCRAM ============================================================================

namespace {

// Made with PostgreSQL 15.18 (Debian 15.18-0+deb12u1): initdb of a throwaway cluster
// (runuser -u postgres), then
//   SET password_encryption = 'scram-sha-256'; CREATE ROLE x PASSWORD 'secret';
//   SELECT rolpassword FROM pg_authid WHERE rolname = 'x';
// The cluster was stopped and deleted afterwards.
constexpr const char* kPgVerifier =
    "SCRAM-SHA-256$4096:hzl8HvVHXdmQHM2V74rHIQ==$ebOqgKri8BhP7CQj/hUJfePVyB7V0wP0kld9mAtXgCo=:"
    "HwUor6QD8lkbfhNZ0NMfA2Q9pk28rfJme05hfBzWFHA=";
constexpr const char* kPgPassword = "secret";

const std::uint8_t kServerSecret[32] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                        17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};

// The client side of SCRAM-SHA-256, only as much as the tests need to drive the server.
struct ScramClient {
    std::string gs2 = "n,,";
    std::string nonce = "fyko+d2lbbFgONRv9qkxdawL";
    std::string user;  // libpq sends an empty one
    std::string expected_server_final;

    std::string bare() const { return "n=" + user + ",r=" + nonce; }
    std::string first() const { return gs2 + bare(); }

    std::string final_message(const std::string& server_first, std::string_view password)
    {
        std::map<char, std::string> attrs;
        size_t pos = 0;
        while (pos < server_first.size()) {
            size_t comma = server_first.find(',', pos);
            if (comma == std::string::npos)
                comma = server_first.size();
            attrs[server_first[pos]] = server_first.substr(pos + 2, comma - pos - 2);
            pos = comma + 1;
        }
        auto salt = base64_decode(attrs['s']);
        BOOST_REQUIRE(salt.ok());
        int iterations = std::stoi(attrs['i']);
        ossl::Sha256 salted{};
        BOOST_REQUIRE(PKCS5_PBKDF2_HMAC(password.data(), int(password.size()), salt->data(), int(salt->size()),
                                        iterations, EVP_sha256(), int(salted.size()), salted.data()) == 1);
        auto client_key = ossl::hmac_sha256(salted, octets_of("Client Key"));
        auto stored_key = ossl::sha256(client_key);
        auto server_key = ossl::hmac_sha256(salted, octets_of("Server Key"));
        std::string without_proof = "c=" + base64_encode(octets_of(gs2)) + ",r=" + attrs['r'];
        std::string auth_message = bare() + "," + server_first + "," + without_proof;
        auto signature = ossl::hmac_sha256(stored_key, octets_of(auth_message));
        ossl::Sha256 proof{};
        for (size_t i = 0; i < proof.size(); ++i)
            proof[i] = client_key[i] ^ signature[i];
        expected_server_final = "v=" + base64_encode(ossl::hmac_sha256(server_key, octets_of(auth_message)));
        return without_proof + ",p=" + base64_encode(proof);
    }
};

scram::Verifier verifier(const std::string& text)
{
    auto v = scram::parse_verifier(text);
    BOOST_TEST_REQUIRE(v.ok(), (v.ok() ? "" : v.error()));
    return *v;
}

std::string server_message(const scram::Step& s)
{
    // Boost.Test evaluates a check's message even when the check passes: branch first.
    const auto* m = std::get_if<std::string>(&s);
    if (!m)
        BOOST_FAIL("expected a server message, got: " << std::get<scram::ScramError>(s).message);
    return *m;
}

scram::ScramError scram_failure(const scram::Step& s)
{
    const auto* e = std::get_if<scram::ScramError>(&s);
    if (!e)
        BOOST_FAIL("expected a failure, got: " << std::get<std::string>(s));
    return *e;
}

// Runs a whole exchange; returns the final step.
scram::Step exchange(scram::ServerExchange& server, ScramClient& client, std::string_view password)
{
    std::string first = server_message(server.client_first(client.first()));
    return server.client_final(client.final_message(first, password));
}

// Where a client-first-message failure must land, and what the message must mention.
void expect_first_failure(const std::string& msg, scram::Failure kind, const char* mention = "")
{
    scram::ServerExchange server(verifier(kPgVerifier));
    auto e = scram_failure(server.client_first(msg));
    BOOST_TEST((e.kind == kind), "wrong kind for: " << msg << " (" << e.message << ")");
    BOOST_TEST(e.message.find(mention) != std::string::npos, e.message);
    BOOST_TEST(server.done());
}

} // namespace

BOOST_AUTO_TEST_SUITE(auth_scram)

BOOST_AUTO_TEST_CASE(parses_a_postgresql_verifier_and_prints_it_back)
{
    auto v = verifier(kPgVerifier);
    BOOST_TEST(v.iterations == 4096);
    BOOST_TEST(v.salt.size() == 16u);
    BOOST_TEST(scram::format_verifier(v) == kPgVerifier);
}

BOOST_AUTO_TEST_CASE(verifier_errors_say_what_is_wrong_without_echoing_it)
{
    const std::pair<std::string, const char*> cases[] = {
        {"md5ac2b10d9871b8fe9d086b7652279ff79", "MD5"},
        {"secret", "not a SCRAM-SHA-256 verifier"},
        {"SCRAM-SHA-256$4096:hzl8HvVHXdmQHM2V74rHIQ==", "no '$'"},
        {"SCRAM-SHA-256$hzl8HvVHXdmQHM2V74rHIQ==$a:b", "no ':' between iterations"},
        {"SCRAM-SHA-256$0:hzl8HvVHXdmQHM2V74rHIQ==$ebOqgKri8BhP7CQj/hUJfePVyB7V0wP0kld9mAtXgCo=:"
         "HwUor6QD8lkbfhNZ0NMfA2Q9pk28rfJme05hfBzWFHA=", "iteration count"},
        {"SCRAM-SHA-256$-5:hzl8HvVHXdmQHM2V74rHIQ==$x:y", "iteration count"},
        {"SCRAM-SHA-256$99999999999:hzl8HvVHXdmQHM2V74rHIQ==$x:y", "iteration count"},
        {"SCRAM-SHA-256$4096:hzl8HvVHXd!QHM2V74rHIQ==$x:y", "salt"},
        {"SCRAM-SHA-256$4096:$x:y", "salt"},
        {"SCRAM-SHA-256$4096:hzl8HvVHXdmQHM2V74rHIQ==$ebOqgKri8BhP7CQj/hUJfePVyB7V0wP0kld9mAtXgCo=",
         "no ':' between StoredKey"},
        {"SCRAM-SHA-256$4096:hzl8HvVHXdmQHM2V74rHIQ==$ebOqgKri8BhP7CQj:"
         "HwUor6QD8lkbfhNZ0NMfA2Q9pk28rfJme05hfBzWFHA=", "StoredKey is 12 bytes"},
        {"SCRAM-SHA-256$4096:hzl8HvVHXdmQHM2V74rHIQ==$ebOqgKri8BhP7CQj/hUJfePVyB7V0wP0kld9mAtXgCo=:"
         "HwUor6QD8lkbfhNZ0NMfA2Q9pk28rfJme05hfBzWFHA", "ServerKey"},
    };
    for (const auto& [text, mention] : cases) {
        auto v = scram::parse_verifier(text);
        BOOST_TEST_REQUIRE(!v.ok(), "accepted: " << text);
        BOOST_TEST(v.error().find(mention) != std::string::npos, v.error());
        BOOST_TEST(v.error().find("hzl8HvVHXd") == std::string::npos, "echoes the verifier: " << v.error());
    }
}

BOOST_AUTO_TEST_CASE(rfc7677_test_vector)
{
    auto salt = base64_decode("W22ZaJ0SNY7soEsUEjb6gQ==");
    BOOST_TEST_REQUIRE(salt.ok());
    auto text = scram::make_verifier("pencil", 4096, *salt);
    BOOST_TEST_REQUIRE(text.ok());
    auto server = scram::ServerExchange::with_server_nonce(verifier(*text), "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");
    BOOST_TEST(server_message(server.client_first("n,,n=user,r=rOprNGfwEbeRWgbNEkqO")) ==
               "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096");
    BOOST_TEST(server_message(server.client_final(
                   "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                   "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")) ==
               "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
    BOOST_TEST(server.done());
}

BOOST_AUTO_TEST_CASE(postgresql_verifier_accepts_its_password)
{
    scram::ServerExchange server(verifier(kPgVerifier));
    ScramClient client;
    std::string first = server_message(server.client_first(client.first()));
    // r=<client nonce><24 base64 characters of 18 random bytes>,s=<salt>,i=4096
    BOOST_TEST(first.rfind("r=" + client.nonce, 0) == 0u);
    BOOST_TEST(first.find(",s=hzl8HvVHXdmQHM2V74rHIQ==,i=4096") == 2 + client.nonce.size() + 24);
    std::string final_msg = server_message(server.client_final(client.final_message(first, kPgPassword)));
    BOOST_TEST(final_msg == client.expected_server_final);
    BOOST_TEST(server.done());
}

BOOST_AUTO_TEST_CASE(our_verifier_accepts_its_password_and_uses_fresh_salts)
{
    auto a = scram::make_verifier("correct horse", 4096);
    auto b = scram::make_verifier("correct horse", 4096);
    BOOST_TEST_REQUIRE(a.ok());
    BOOST_TEST_REQUIRE(b.ok());
    BOOST_TEST(*a != *b);
    auto v = verifier(*a);
    BOOST_TEST(v.salt.size() == scram::kDefaultSaltLen);
    scram::ServerExchange server(v);
    ScramClient client;
    BOOST_TEST(server_message(exchange(server, client, "correct horse")) == client.expected_server_final);

    const std::uint8_t salt[] = {'s', 'a', 'l', 't'};
    BOOST_TEST(*scram::make_verifier("pw", 10, salt) == *scram::make_verifier("pw", 10, salt));
}

BOOST_AUTO_TEST_CASE(make_verifier_refuses_what_it_cannot_hash_like_postgresql)
{
    auto r = scram::make_verifier("pässword");
    BOOST_TEST_REQUIRE(!r.ok());
    BOOST_TEST(r.error().find("SASLprep") != std::string::npos, r.error());
    BOOST_TEST(!scram::make_verifier("pw", 0).ok());
    BOOST_TEST(!scram::make_verifier(std::string_view("a\0b", 3)).ok());
}

BOOST_AUTO_TEST_CASE(wrong_password_is_28P01)
{
    scram::ServerExchange server(verifier(kPgVerifier));
    ScramClient client;
    auto e = scram_failure(exchange(server, client, "Secret"));
    BOOST_TEST((e.kind == scram::Failure::WrongPassword));
    BOOST_TEST(scram::sqlstate(e.kind) == std::string("28P01"));
    BOOST_TEST(server.done());
    // Nothing more is accepted after a failure.
    BOOST_TEST((scram_failure(server.client_final("c=biws")).kind == scram::Failure::Protocol));
}

BOOST_AUTO_TEST_CASE(y_flag_is_accepted_and_must_be_echoed_as_eSws)
{
    {
        scram::ServerExchange server(verifier(kPgVerifier));
        ScramClient client;
        client.gs2 = "y,,";
        BOOST_TEST(server_message(exchange(server, client, kPgPassword)) == client.expected_server_final);
    }
    {
        // A client that said "y" but then claims "n,," in c= has been tampered with.
        scram::ServerExchange server(verifier(kPgVerifier));
        ScramClient client;
        client.gs2 = "y,,";
        std::string first = server_message(server.client_first(client.first()));
        client.gs2 = "n,,";
        auto e = scram_failure(server.client_final(client.final_message(first, kPgPassword)));
        BOOST_TEST((e.kind == scram::Failure::Protocol));
        BOOST_TEST(e.message.find("channel-binding") != std::string::npos, e.message);
    }
}

BOOST_AUTO_TEST_CASE(channel_binding_demanded_is_its_own_failure)
{
    expect_first_failure("p=tls-server-end-point,,n=,r=abc", scram::Failure::ChannelBindingDemanded,
                         "channel_binding=");
    expect_first_failure("p=tls-unique,,n=,r=abc", scram::Failure::ChannelBindingDemanded, "tls-unique");
    expect_first_failure("p=,,n=,r=abc", scram::Failure::Protocol);
    expect_first_failure("p=tls server,,n=,r=abc", scram::Failure::Protocol);
    expect_first_failure("p,,n=,r=abc", scram::Failure::Protocol);
}

BOOST_AUTO_TEST_CASE(authzid_and_mandatory_extensions_are_unsupported)
{
    expect_first_failure("n,a=admin,n=,r=abc", scram::Failure::Unsupported, "authorization identity");
    expect_first_failure("n,,m=ext,n=,r=abc", scram::Failure::Unsupported, "mandatory");
    BOOST_TEST(scram::sqlstate(scram::Failure::Unsupported) == std::string("0A000"));
}

BOOST_AUTO_TEST_CASE(malformed_client_first_messages_are_protocol_errors)
{
    for (const std::string& msg : {std::string(""), std::string("n"), std::string("n,"), std::string("x,,n=,r=abc"),
                                   std::string("n,,r=abc"), std::string("n,,n=,r="), std::string("n,,n=,r=a b"),
                                   std::string("n,,n=,r=abc,"), std::string("n,,n=,r=abc,1=x"),
                                   std::string("n,,n=,r=abc,x"), std::string("n,,n=,x=abc"), std::string("n,x,n=,r=abc"),
                                   std::string("n,,n=,r=ab\x01"), std::string("n,,n=,r=a\0b", 11),
                                   "n,,n=,r=" + std::string(scram::kMaxClientMessage, 'a')})
        expect_first_failure(msg, scram::Failure::Protocol);
    BOOST_TEST(scram::sqlstate(scram::Failure::Protocol) == std::string("08P01"));

    // The user name in the message is ignored, and extensions after the nonce are too.
    scram::ServerExchange server(verifier(kPgVerifier));
    ScramClient client;
    client.user = "someone=2Celse";
    std::string first = server_message(server.client_first(client.first() + ",x=ext"));
    BOOST_TEST(first.rfind("r=" + client.nonce, 0) == 0u);
}

BOOST_AUTO_TEST_CASE(malformed_client_final_messages_are_protocol_errors)
{
    auto run = [](auto mutate) {
        scram::ServerExchange server(verifier(kPgVerifier));
        ScramClient client;
        std::string first = server_message(server.client_first(client.first()));
        std::string final_msg = client.final_message(first, kPgPassword);
        return scram_failure(server.client_final(mutate(final_msg, first)));
    };
    auto replace = [](std::string s, const std::string& from, const std::string& to) {
        s.replace(s.find(from), from.size(), to);
        return s;
    };
    // Nonce not the one the server made.
    auto e = run([&](std::string f, const std::string&) { return replace(f, ",p=", "x,p="); });
    BOOST_TEST((e.kind == scram::Failure::Protocol));
    BOOST_TEST(e.message.find("nonce") != std::string::npos, e.message);
    // No proof, short proof, garbage after it, trailing comma, wrong c=.
    BOOST_TEST((run([](std::string f, const std::string&) { return f.substr(0, f.find(",p=")); }).kind ==
                scram::Failure::Protocol));
    BOOST_TEST((run([](std::string f, const std::string&) { return f.substr(0, f.find(",p=")) + ",p=AAAA"; }).kind ==
                scram::Failure::Protocol));
    BOOST_TEST((run([](std::string f, const std::string&) { return f + ",x=y"; }).kind == scram::Failure::Protocol));
    BOOST_TEST((run([](std::string f, const std::string&) { return f + ","; }).kind == scram::Failure::Protocol));
    BOOST_TEST((run([&](std::string f, const std::string&) { return replace(f, "c=biws", "c=cD10bHM="); }).kind ==
                scram::Failure::Protocol));
    BOOST_TEST((run([](std::string, const std::string&) { return std::string(); }).kind == scram::Failure::Protocol));
    BOOST_TEST((run([](std::string f, const std::string&) { return f + std::string(3000, 'a'); }).kind ==
                scram::Failure::Protocol));
    // An extension before the proof is allowed (and part of what the proof signs, so a
    // proof computed without it fails as a wrong password, not as a protocol error).
    e = run([&](std::string f, const std::string&) { return replace(f, ",p=", ",x=ext,p="); });
    BOOST_TEST((e.kind == scram::Failure::WrongPassword));
}

BOOST_AUTO_TEST_CASE(messages_out_of_order_are_protocol_errors)
{
    scram::ServerExchange a(verifier(kPgVerifier));
    BOOST_TEST((scram_failure(a.client_final("c=biws,r=x,p=AAAA")).kind == scram::Failure::Protocol));
    scram::ServerExchange b(verifier(kPgVerifier));
    ScramClient client;
    (void)server_message(b.client_first(client.first()));
    BOOST_TEST((scram_failure(b.client_first(client.first())).kind == scram::Failure::Protocol));
}

BOOST_AUTO_TEST_CASE(unknown_user_looks_like_a_real_one_and_fails_as_a_wrong_password)
{
    auto salt_of = [](const std::string& first) {
        size_t s = first.find(",s=");
        return first.substr(s + 3, first.find(",i=") - s - 3);
    };
    ScramClient client;
    auto mock1 = scram::ServerExchange::for_unknown_user(kServerSecret, "nobody");
    std::string first1 = server_message(mock1.client_first(client.first()));
    auto mock2 = scram::ServerExchange::for_unknown_user(kServerSecret, "nobody");
    std::string first2 = server_message(mock2.client_first(client.first()));
    auto other = scram::ServerExchange::for_unknown_user(kServerSecret, "somebody");
    std::string first3 = server_message(other.client_first(client.first()));

    // Same user, same salt (a second probe learns nothing); another user, another salt;
    // the shape of a real PostgreSQL verifier (16-byte salt, 4096 iterations).
    BOOST_TEST(salt_of(first1) == salt_of(first2));
    BOOST_TEST(salt_of(first1) != salt_of(first3));
    BOOST_TEST(base64_decode(salt_of(first1))->size() == 16u);
    BOOST_TEST(first1.substr(first1.find(",i=")) == ",i=4096");

    // Whatever password the client tries, the end is the same as a wrong password.
    for (const char* pw : {"", "secret", "nobody"}) {
        auto mock = scram::ServerExchange::for_unknown_user(kServerSecret, "nobody");
        ScramClient c;
        auto e = scram_failure(exchange(mock, c, pw));
        BOOST_TEST((e.kind == scram::Failure::WrongPassword));
        scram::ServerExchange real(verifier(kPgVerifier));
        ScramClient c2;
        BOOST_TEST(scram_failure(exchange(real, c2, "wrong")).message == e.message);
    }
    // Malformed messages are still protocol errors, as for a real user.
    auto mock = scram::ServerExchange::for_unknown_user(kServerSecret, "nobody");
    BOOST_TEST((scram_failure(mock.client_first("garbage")).kind == scram::Failure::Protocol));
}

BOOST_AUTO_TEST_CASE(md5_verifier_and_response)
{
    // Expected values computed with Python's hashlib.
    BOOST_TEST(scram::make_md5_verifier("secret", "x") == "md5ac2b10d9871b8fe9d086b7652279ff79");
    const std::uint8_t salt[4] = {1, 2, 3, 4};
    const std::uint8_t other_salt[4] = {1, 2, 3, 5};
    std::string stored = "md5ac2b10d9871b8fe9d086b7652279ff79";
    std::string response = "md5d487e53300f279b1b8736a3fd0b38d12";
    BOOST_TEST(scram::md5_response_matches(stored, salt, response));
    BOOST_TEST(!scram::md5_response_matches(stored, other_salt, response));
    BOOST_TEST(!scram::md5_response_matches(stored, salt, response.substr(0, 34)));
    BOOST_TEST(!scram::md5_response_matches(kPgVerifier, salt, response));
}

BOOST_AUTO_TEST_SUITE_END()

// ==== JWT ==============================================================================

namespace {

constexpr std::int64_t kNow = 1795000000;  // 2026-11-18T11:06:40Z
constexpr const char* kIssuer = "https://login.example.com/tenant-id/v2.0";
constexpr const char* kAudience = "api://pgwicket";

const jwt::Jwks& test_jwks()
{
    static const jwt::Jwks jwks = [] {
        auto r = jwt::Jwks::parse(test_jwks_json().dump());
        BOOST_REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error()));
        return *r;
    }();
    return jwks;
}

json default_claims()
{
    return {{"iss", kIssuer},          {"aud", kAudience},
            {"exp", kNow + 3600},      {"iat", kNow - 10},
            {"nbf", kNow - 10},        {"sub", "00u1abcd"},
            {"email", "alice@example.com"}, {"groups", json::array({"dba", "oncall"})}};
}

jwt::VerifyOptions options()
{
    jwt::VerifyOptions o;
    o.issuers = {kIssuer};
    o.audiences = {kAudience};
    o.now = kNow;
    return o;
}

jwt::Identity expect_identity(const std::string& token, const jwt::VerifyOptions& o = options(),
                              const jwt::Jwks& jwks = test_jwks())
{
    auto r = jwt::verify(token, jwks, o);
    const auto* id = std::get_if<jwt::Identity>(&r);
    if (!id)
        BOOST_FAIL("refused: " << std::get<jwt::JwtError>(r).message);
    return *id;
}

// A refusal of the given kind whose message mentions `mention` and shows neither the
// token nor its signature.
jwt::JwtError expect_refusal(const std::string& token, jwt::Failure kind, const std::string& mention,
                             const jwt::VerifyOptions& o = options())
{
    auto r = jwt::verify(token, test_jwks(), o);
    const auto* e = std::get_if<jwt::JwtError>(&r);
    BOOST_TEST_REQUIRE(e != nullptr, "accepted a token that should fail with: " << mention);
    BOOST_TEST((e->kind == kind), "wrong kind, message: " << e->message);
    BOOST_TEST(e->message.find(mention) != std::string::npos, e->message);
    if (!token.empty())
        BOOST_TEST(e->message.find(token) == std::string::npos);
    size_t dot = token.rfind('.');
    if (dot != std::string::npos && token.size() - dot > 8)
        BOOST_TEST(e->message.find(token.substr(dot + 1)) == std::string::npos, "message shows the signature");
    // Nor any 16-character window of the token (catches partial echoes).
    for (size_t i = 0; i + 16 <= token.size() && token.size() < 4096; i += 7)
        BOOST_TEST_REQUIRE(e->message.find(token.substr(i, 16)) == std::string::npos,
                           "message shows part of the token: " << e->message);
    return *e;
}

} // namespace

BOOST_AUTO_TEST_SUITE(auth_jwt)

BOOST_AUTO_TEST_CASE(rs256_token_gives_identity_groups_and_expiry)
{
    auto id = expect_identity(mint(default_claims()));
    BOOST_TEST(id.identity == "alice@example.com");
    BOOST_TEST(id.subject == "00u1abcd");
    BOOST_TEST((id.groups == std::vector<std::string>{"dba", "oncall"}));
    BOOST_TEST(!id.groups_overage);
    BOOST_TEST(id.exp == kNow + 3600);
    BOOST_TEST(id.issuer == kIssuer);
    BOOST_TEST(id.audience == kAudience);
    BOOST_TEST(id.kid == "rsa-1");
    BOOST_TEST((id.alg == jwt::Alg::RS256));
}

BOOST_AUTO_TEST_CASE(other_algorithms_verify)
{
    BOOST_TEST((expect_identity(mint(default_claims(), "PS256")).alg == jwt::Alg::PS256));
    BOOST_TEST((expect_identity(mint(default_claims(), "RS384")).alg == jwt::Alg::RS384));
    BOOST_TEST((expect_identity(mint(default_claims(), "RS512")).alg == jwt::Alg::RS512));
    BOOST_TEST((expect_identity(mint(default_claims(), "ES256", "ec-1")).alg == jwt::Alg::ES256));
    BOOST_TEST((expect_identity(mint(default_claims(), "ES384", "ec-384")).alg == jwt::Alg::ES384));
}

BOOST_AUTO_TEST_CASE(audience_may_be_an_array)
{
    auto c = default_claims();
    c["aud"] = json::array({"api://other", kAudience});
    BOOST_TEST(expect_identity(mint(c)).audience == kAudience);
    auto o = options();
    o.audiences = {"api://third", "api://other"};
    BOOST_TEST(expect_identity(mint(c), o).audience == "api://other");
}

BOOST_AUTO_TEST_CASE(identity_claim_is_configurable)
{
    auto c = default_claims();
    c["upn"] = "alice@corp.example";                       // Azure AD v1
    c["preferred_username"] = "alice@corp.example.org";    // Azure AD v2
    c["https://example.com/email"] = "alice@auth0.example";  // Auth0 namespaced claim
    std::string token = mint(c);
    auto o = options();
    for (const auto& [claim, value] : std::map<std::string, std::string>{
             {"upn", "alice@corp.example"},
             {"preferred_username", "alice@corp.example.org"},
             {"sub", "00u1abcd"},
             {"https://example.com/email", "alice@auth0.example"}}) {
        o.identity_claim = claim;
        BOOST_TEST(expect_identity(token, o).identity == value);
    }
    o.identity_claim = "unique_name";
    expect_refusal(token, jwt::Failure::MissingClaim, "'unique_name'", o);
    c["upn"] = 42;
    o.identity_claim = "upn";
    expect_refusal(mint(c), jwt::Failure::Malformed, "not a non-empty string", o);
    c["upn"] = "alice\n2026-01-01 LOG: forged line";
    expect_refusal(mint(c), jwt::Failure::Malformed, "control characters", o);
}

BOOST_AUTO_TEST_CASE(groups_claim_is_configurable)
{
    auto c = default_claims();
    c["roles"] = json::array({"Reader"});
    c["https://example.com/roles"] = json::array({"admin", "support"});
    auto o = options();
    o.groups_claim = "roles";
    BOOST_TEST((expect_identity(mint(c), o).groups == std::vector<std::string>{"Reader"}));
    o.groups_claim = "https://example.com/roles";
    BOOST_TEST((expect_identity(mint(c), o).groups == std::vector<std::string>{"admin", "support"}));
    c["https://example.com/roles"] = "single";
    BOOST_TEST((expect_identity(mint(c), o).groups == std::vector<std::string>{"single"}));
    o.groups_claim = "absent";
    BOOST_TEST(expect_identity(mint(c), o).groups.empty());
    c["https://example.com/roles"] = json::array({"ok", 7});
    o.groups_claim = "https://example.com/roles";
    expect_refusal(mint(c), jwt::Failure::Malformed, "not a string", o);

    // Azure AD's overage: no "groups", a pointer to Graph instead.
    auto over = default_claims();
    over.erase("groups");
    over["_claim_names"] = {{"groups", "src1"}};
    over["_claim_sources"] = {{"src1", {{"endpoint", "https://graph.windows.net/x/getMemberObjects"}}}};
    auto id = expect_identity(mint(over));
    BOOST_TEST(id.groups.empty());
    BOOST_TEST(id.groups_overage);
}

BOOST_AUTO_TEST_CASE(bad_signature)
{
    std::string good = mint(default_claims());
    auto forged_claims = default_claims();
    forged_claims["email"] = "mallory@example.com";
    expect_refusal(with_payload(good, forged_claims), jwt::Failure::BadSignature, "signature does not verify");

    BOOST_TEST(with_flipped_signature(good) != good);
    expect_refusal(with_flipped_signature(good), jwt::Failure::BadSignature, "signature does not verify");

    // Signed by another key under our key's kid.
    expect_refusal(mint(default_claims(), "RS256", "rsa-1", TestKeys::get().rsa_other.get()),
                   jwt::Failure::BadSignature, "signature does not verify");
    // ES256 with a signature of the wrong width.
    std::string es = mint(default_claims(), "ES256", "ec-1");
    expect_refusal(es.substr(0, es.rfind('.') + 1) + b64u(Octets(63, 1)), jwt::Failure::BadSignature,
                   "64 bytes");
}

BOOST_AUTO_TEST_CASE(audience_mismatch)
{
    auto c = default_claims();
    c["aud"] = "api://x";
    auto o = options();
    o.audiences = {"api://y"};
    expect_refusal(mint(c), jwt::Failure::AudienceMismatch,
                   "audience mismatch: token is for 'api://x', expected 'api://y'", o);
    c["aud"] = json::array({"api://a", "api://b"});
    expect_refusal(mint(c), jwt::Failure::AudienceMismatch, "token is for 'api://a', 'api://b'", o);
    c.erase("aud");
    expect_refusal(mint(c), jwt::Failure::MissingClaim, "'aud'");
}

BOOST_AUTO_TEST_CASE(issuer_mismatch)
{
    auto c = default_claims();
    c["iss"] = "https://evil.example.com/";
    expect_refusal(mint(c), jwt::Failure::IssuerMismatch,
                   std::string("issuer mismatch: token is from 'https://evil.example.com/', expected '") + kIssuer + "'");
}

BOOST_AUTO_TEST_CASE(expired_says_how_long_ago)
{
    auto c = default_claims();
    c["exp"] = kNow - 180;
    expect_refusal(mint(c), jwt::Failure::Expired, "token expired 3 minutes ago (exp 2026-11-18T11:03:40Z)");
    // Within the leeway it still passes; a NumericDate may have a fraction.
    c["exp"] = kNow - 30;
    BOOST_TEST(expect_identity(mint(c)).exp == kNow - 30);
    c["exp"] = double(kNow) + 0.5;
    BOOST_TEST(expect_identity(mint(c)).exp == kNow);
    auto strict = options();
    strict.leeway = std::chrono::seconds(0);
    c["exp"] = kNow;
    expect_refusal(mint(c), jwt::Failure::Expired, "0 seconds ago", strict);
    c["exp"] = kNow - 3 * 86400;
    expect_refusal(mint(c), jwt::Failure::Expired, "3 days ago");
    c.erase("exp");
    expect_refusal(mint(c), jwt::Failure::MissingClaim, "'exp'");
    c["exp"] = "tomorrow";
    expect_refusal(mint(c), jwt::Failure::Malformed, "'exp' is not a number");
}

BOOST_AUTO_TEST_CASE(not_yet_valid_and_issued_in_the_future)
{
    auto c = default_claims();
    c["nbf"] = kNow + 600;
    expect_refusal(mint(c), jwt::Failure::NotYetValid, "token not valid until 2026-11-18T11:16:40Z (in 10 minutes)");
    c["nbf"] = kNow + 30;  // within leeway
    expect_identity(mint(c));
    c = default_claims();
    c["iat"] = kNow + 7200;
    expect_refusal(mint(c), jwt::Failure::IssuedInFuture, "2 hours ahead");
    c.erase("iat");
    c.erase("nbf");
    expect_identity(mint(c));  // both optional
}

BOOST_AUTO_TEST_CASE(alg_none_is_refused)
{
    auto claims = default_claims();
    for (const char* none : {"none", "None", "NONE"})
        expect_refusal(unsigned_token({{"alg", none}, {"kid", "rsa-1"}}, claims), jwt::Failure::AlgorithmNotAllowed,
                       "algorithm 'none' is not allowed");
}

BOOST_AUTO_TEST_CASE(hs256_key_confusion_is_refused)
{
    // The classic forgery: HMAC keyed with the bytes of the verifier's public key.
    std::string token = hs256_with_public_key(default_claims(), "rsa-1");
    BOOST_TEST_REQUIRE(token.rfind(b64u(R"({"alg":"HS256","kid":"rsa-1","typ":"JWT"})"), 0) == 0u);
    expect_refusal(token, jwt::Failure::AlgorithmNotAllowed,
                   "algorithm 'HS256' is not allowed (only RS256/RS384/RS512/PS256/ES256/ES384)");
}

BOOST_AUTO_TEST_CASE(algorithm_must_fit_the_key)
{
    // An ES256 token claiming the RSA key, and an RS256 one claiming the EC key.
    std::string es = mint(default_claims(), "ES256", "rsa-1");
    expect_refusal(es, jwt::Failure::KeyMismatch, "does not fit key 'rsa-1' (an RSA key)");
    std::string rs = mint(default_claims(), "RS256", "ec-1");
    expect_refusal(rs, jwt::Failure::KeyMismatch, "does not fit key 'ec-1'");
    // A JWKS that pins its key to RS256 refuses PS256 with it.
    auto jwks_json = test_jwks_json();
    jwks_json["keys"][0]["alg"] = "RS256";
    auto pinned = jwt::Jwks::parse(jwks_json.dump());
    BOOST_TEST_REQUIRE(pinned.ok());
    auto r = jwt::verify(mint(default_claims(), "PS256"), *pinned, options());
    BOOST_TEST_REQUIRE(std::holds_alternative<jwt::JwtError>(r));
    BOOST_TEST(std::get<jwt::JwtError>(r).message.find("is for RS256") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(unknown_kid_asks_for_a_jwks_reload)
{
    auto e = expect_refusal(mint(default_claims(), "RS256", "abc"), jwt::Failure::UnknownKey,
                            "unknown signing key id 'abc'");
    BOOST_TEST(e.reload_jwks);
    // Other failures do not.
    auto c = default_claims();
    c["exp"] = kNow - 600;
    BOOST_TEST(!expect_refusal(mint(c), jwt::Failure::Expired, "expired").reload_jwks);
}

BOOST_AUTO_TEST_CASE(token_without_kid_uses_the_only_fitting_key)
{
    BOOST_TEST(expect_identity(mint(default_claims(), "ES256", "")).kid == "ec-1");
    // Two RSA keys: ambiguous without a kid.
    auto jwks_json = test_jwks_json();
    jwks_json["keys"].push_back(rsa_jwk(TestKeys::get().rsa_other.get(), "rsa-2"));
    auto two = jwt::Jwks::parse(jwks_json.dump());
    BOOST_TEST_REQUIRE(two.ok());
    auto r = jwt::verify(mint(default_claims(), "RS256", ""), *two, options());
    BOOST_TEST_REQUIRE(std::holds_alternative<jwt::JwtError>(r));
    BOOST_TEST(std::get<jwt::JwtError>(r).message.find("no key id") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(malformed_tokens)
{
    std::string good = mint(default_claims());
    size_t d1 = good.find('.');
    expect_refusal("*" + good.substr(1), jwt::Failure::Malformed, "malformed token: header: invalid base64url");
    expect_refusal(good.substr(0, good.size() - 2) + "!!", jwt::Failure::Malformed, "signature: invalid base64url");
    // A bad payload is only looked at once the signature holds, so sign one.
    std::string bad_payload = good.substr(0, d1 + 1) + "e30!";
    expect_refusal(bad_payload + "." + b64u(sign(TestKeys::get().rsa.get(), "RS256", bad_payload)),
                   jwt::Failure::Malformed, "payload: invalid base64url");
    expect_refusal("abc", jwt::Failure::Malformed, "expected three dot-separated parts, found 1");
    expect_refusal("a.b.c.d.e", jwt::Failure::Malformed, "JWE");
    expect_refusal("", jwt::Failure::Malformed, "found 1");
    expect_refusal(".." , jwt::Failure::Malformed, "empty header or payload");
    expect_refusal(b64u("not json") + ".e30.AAAA", jwt::Failure::Malformed, "header: not valid JSON");
    expect_refusal(b64u("[1,2]") + ".e30.AAAA", jwt::Failure::Malformed, "header: JSON is not an object");
    expect_refusal(b64u(R"({"typ":"JWT"})") + ".e30.AAAA", jwt::Failure::Malformed, "no 'alg'");
    expect_refusal(b64u(R"({"alg":"RS256","alg":"none"})") + ".e30.AAAA", jwt::Failure::Malformed, "duplicate key");
    expect_refusal(b64u(std::string(40, '[') + std::string(40, ']')) + ".e30.AAAA", jwt::Failure::Malformed,
                   "nested deeper");
    expect_refusal(unsigned_token({{"alg", "RS256"}, {"kid", "rsa-1"}, {"crit", {"exp"}}}, default_claims(), "AAAA"),
                   jwt::Failure::Malformed, "critical extensions");
    expect_refusal(unsigned_token({{"alg", "RS256"}, {"kid", 5}}, default_claims(), "AAAA"), jwt::Failure::Malformed,
                   "'kid' is not a string");
    expect_refusal(unsigned_token({{"alg", "RS256"}, {"kid", "rsa-1"}}, default_claims(), ""), jwt::Failure::Malformed,
                   "signature is empty");

    // Duplicate claims are refused even when validly signed.
    const auto& k = TestKeys::get();
    std::string input = b64u(R"({"alg":"RS256","kid":"rsa-1"})") + "." +
                        b64u(R"({"iss":"https://login.example.com/tenant-id/v2.0","aud":"api://pgwicket",)"
                             R"("exp":1795003600,"email":"a@x","email":"admin@x"})");
    expect_refusal(input + "." + b64u(sign(k.rsa.get(), "RS256", input)), jwt::Failure::Malformed,
                   "payload: JSON object with a duplicate key");
}

BOOST_AUTO_TEST_CASE(oversized_token_is_refused_before_decoding)
{
    std::string huge(64 * 1024, 'a');
    expect_refusal(huge, jwt::Failure::TooLarge, "token too large (65536 bytes, limit 16384)");
    // A real token padded out with a large claim is refused the same way.
    auto c = default_claims();
    c["padding"] = std::string(20000, 'x');
    expect_refusal(mint(c), jwt::Failure::TooLarge, "limit 16384");
}

BOOST_AUTO_TEST_CASE(claim_values_in_messages_are_sanitised)
{
    auto c = default_claims();
    c["iss"] = "https://evil\x1b[2J\n" + std::string(300, 'x');
    auto e = expect_refusal(mint(c), jwt::Failure::IssuerMismatch, "issuer mismatch");
    BOOST_TEST(e.message.find('\x1b') == std::string::npos);
    BOOST_TEST(e.message.find('\n') == std::string::npos);
    BOOST_TEST(e.message.size() < 300u);
}

BOOST_AUTO_TEST_CASE(options_without_issuer_or_audience_refuse_everything)
{
    auto o = options();
    o.issuers.clear();
    expect_refusal(mint(default_claims()), jwt::Failure::Misconfigured, "at least one issuer", o);
    o = options();
    o.audiences.clear();
    expect_refusal(mint(default_claims()), jwt::Failure::Misconfigured, "audience", o);
}

BOOST_AUTO_TEST_CASE(jwks_skips_unusable_keys_with_notes)
{
    const auto& k = TestKeys::get();
    auto bad_point = ec_jwk(k.ec256.get(), "off-curve", "P-256", 32);
    auto y = *base64url_decode(bad_point["y"].get<std::string>());
    y[31] ^= 1;
    bad_point["y"] = b64u(y);
    ossl::PkeyPtr small(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t(1024)));
    json doc = {{"keys", json::array({
                             rsa_jwk(k.rsa.get(), "good"),
                             {{"kty", "RSA"}, {"use", "enc"}, {"kid", "enc-key"}, {"n", "AQAB"}, {"e", "AQAB"}},
                             {{"kty", "oct"}, {"kid", "sym"}, {"k", "c2VjcmV0"}},
                             {{"kty", "RSA"}, {"kid", "hs"}, {"alg", "HS256"}, {"n", "AQAB"}, {"e", "AQAB"}},
                             bad_point,
                             rsa_jwk(small.get(), "small"),
                             {{"kty", "EC"}, {"kid", "p521"}, {"crv", "P-521"}, {"x", "AA"}, {"y", "AA"}},
                             {{"kty", "RSA"}, {"kid", "nopad"}, {"n", "AQAB="}, {"e", "AQAB"}},
                             rsa_jwk(k.rsa_other.get(), "good"),
                             "not an object",
                         })}};
    auto jwks = jwt::Jwks::parse(doc.dump());
    BOOST_TEST_REQUIRE(jwks.ok(), (jwks.ok() ? "" : jwks.error()));
    BOOST_TEST(jwks->keys().size() == 1u);
    BOOST_TEST(jwks->find("good") != nullptr);
    std::string notes;
    for (const auto& n : jwks->notes())
        notes += n + "\n";
    BOOST_TEST(jwks->notes().size() == 9u, notes);
    for (const char* mention : {"'enc-key' skipped: 'use'", "'sym' skipped: key type 'oct'", "'HS256' is not accepted",
                                "'off-curve' skipped", "1024 bits", "'P-521' is not supported", "'nopad' skipped",
                                "the first one is used", "#9 skipped: not a JSON object"})
        BOOST_TEST(notes.find(mention) != std::string::npos, mention << " not in:\n" << notes);
}

BOOST_AUTO_TEST_CASE(jwks_documents_that_are_refused)
{
    for (const std::string& doc : {std::string("not json"), std::string("[]"), std::string("{}"),
                                   std::string(R"({"keys":{}})"), std::string(R"({"keys":[]})"),
                                   std::string(R"({"keys":[{"kty":"oct","k":"AA"}]})"),
                                   std::string(R"({"keys":[],"keys":[]})"), std::string(100, '[')}) {
        auto r = jwt::Jwks::parse(doc);
        BOOST_TEST(!r.ok(), "accepted: " << doc);
    }
    json many = {{"keys", json::array()}};
    for (size_t i = 0; i <= jwt::kMaxJwksKeys; ++i)
        many["keys"].push_back({{"kty", "oct"}});
    BOOST_TEST(jwt::Jwks::parse(many.dump()).error().find("limit") != std::string::npos);
    BOOST_TEST(!jwt::Jwks::parse(std::string(jwt::kMaxJwksBytes + 1, ' ')).ok());
}

BOOST_AUTO_TEST_CASE(time_wording)
{
    BOOST_TEST(jwt::format_utc(0) == "1970-01-01T00:00:00Z");
    BOOST_TEST(jwt::format_utc(1700000000) == "2023-11-14T22:13:20Z");
    BOOST_TEST(jwt::describe_duration(1) == "1 second");
    BOOST_TEST(jwt::describe_duration(119) == "119 seconds");
    BOOST_TEST(jwt::describe_duration(180) == "3 minutes");
    BOOST_TEST(jwt::describe_duration(3 * 3600) == "3 hours");
    BOOST_TEST(jwt::describe_duration(86400 * 2) == "2 days");
}

BOOST_AUTO_TEST_SUITE_END()

// ==== OAUTHBEARER ======================================================================

namespace {

using oauthbearer::ClientResponse;

ClientResponse parsed(const std::string& msg)
{
    auto r = oauthbearer::parse_initial_response(msg);
    const auto* c = std::get_if<ClientResponse>(&r);
    if (!c)
        BOOST_FAIL("refused: " << std::get<oauthbearer::ProtocolError>(r).message);
    return *c;
}

std::string refused(const std::string& msg)
{
    auto r = oauthbearer::parse_initial_response(msg);
    const auto* e = std::get_if<oauthbearer::ProtocolError>(&r);
    BOOST_TEST_REQUIRE(e != nullptr, "accepted a malformed message");
    return e->message;
}

} // namespace

BOOST_AUTO_TEST_SUITE(auth_oauthbearer)

BOOST_AUTO_TEST_CASE(bearer_token_is_extracted)
{
    auto c = parsed("n,,\x01" "auth=Bearer eyJhbGciOi.eyJzdWIi.c2ln-_~+/\x01\x01");
    BOOST_TEST((c.kind == ClientResponse::Kind::Token));
    BOOST_TEST(c.token == "eyJhbGciOi.eyJzdWIi.c2ln-_~+/");
    BOOST_TEST(c.authzid.empty());

    // "y", a case-insensitive scheme, extra spaces, padding, host/port and unknown keys.
    c = parsed("y,,\x01host=db.example.com\x01port=5432\x01" "auth=bEaReR   abc==\x01xyz=whatever\x01\x01");
    BOOST_TEST((c.kind == ClientResponse::Kind::Token));
    BOOST_TEST(c.token == "abc==");
}

BOOST_AUTO_TEST_CASE(authzid_is_unescaped_and_returned)
{
    auto c = parsed("n,a=dba=2Cops=3D1,\x01" "auth=Bearer t\x01\x01");
    BOOST_TEST(c.authzid == "dba,ops=1");
    BOOST_TEST(refused("n,a=bad=41,\x01" "auth=Bearer t\x01\x01").find("authorization identity") != std::string::npos);
    BOOST_TEST(!refused("n,a=,\x01" "auth=Bearer t\x01\x01").empty());
}

BOOST_AUTO_TEST_CASE(empty_auth_is_a_discovery_request)
{
    BOOST_TEST((parsed("n,,\x01" "auth=\x01\x01").kind == ClientResponse::Kind::Discovery));
}

BOOST_AUTO_TEST_CASE(a_non_bearer_credential_is_a_bad_token_not_a_protocol_error)
{
    for (const char* msg : {"n,,\x01" "auth=Basic dXNlcjpwdw==\x01\x01", "n,,\x01" "auth=Bearer\x01\x01",
                            "n,,\x01" "auth=Bearer \x01\x01", "n,,\x01" "auth=Bearer a b\x01\x01",
                            "n,,\x01" "auth=Bearer a=b\x01\x01", "n,,\x01" "auth=Bearer =\x01\x01",
                            "n,,\x01" "auth=Bearer tok!en\x01\x01"}) {
        auto c = parsed(msg);
        BOOST_TEST((c.kind == ClientResponse::Kind::BadToken), msg);
        BOOST_TEST(c.token.empty());
    }
}

BOOST_AUTO_TEST_CASE(malformed_messages_are_protocol_errors)
{
    const std::pair<std::string, const char*> cases[] = {
        {"", "empty"},
        {"p=tls-server-end-point,,\x01" "auth=Bearer t\x01\x01", "channel binding"},
        {"x,,\x01" "auth=Bearer t\x01\x01", "channel-binding flag"},
        {"n\x01" "auth=Bearer t\x01\x01", "channel-binding flag"},
        {"n,x,\x01" "auth=Bearer t\x01\x01", "comma expected"},
        {"n,,auth=Bearer t\x01\x01", "key-value separator"},
        {"n,,\x01" "auth=Bearer t\x01", "final terminator"},
        {"n,,\x01" "auth=Bearer t", "final terminator"},
        {"n,,\x01" "auth=Bearer t\x01\x01" "extra", "after the final terminator"},
        {"n,,\x01" "auth=Bearer t\x01" "auth=Bearer u\x01\x01", "more than one auth"},
        {"n,,\x01" "host\x01\x01", "without a value"},
        {"n,,\x01" "=x\x01\x01", "empty key"},
        {"n,,\x01" "ho5t=x\x01\x01", "invalid key"},
        {"n,,\x01" "auth=Bearer t\x02\x01\x01", "invalid value"},
        {"n,,\x01" "host=x\x01\x01", "no auth value"},
        {std::string("n,,\x01" "auth=Bearer t\0\x01\x01", 18), "NUL"},
        {"n,,\x01" "auth=Bearer " + std::string(oauthbearer::kMaxMessage, 'a') + "\x01\x01", "longer than"},
    };
    for (const auto& [msg, mention] : cases) {
        std::string m = refused(msg);
        BOOST_TEST(m.find(mention) != std::string::npos, m);
        BOOST_TEST(m.find("Bearer") == std::string::npos, "echoes the message: " << m);
    }
}

BOOST_AUTO_TEST_CASE(error_challenge_matches_postgresql)
{
    BOOST_TEST(oauthbearer::error_challenge("https://login.example.com/tenant/v2.0", "openid email") ==
               R"({"status":"invalid_token","openid-configuration":)"
               R"("https://login.example.com/tenant/v2.0/.well-known/openid-configuration","scope":"openid email"})");
    // Auth0's issuer ends in '/'; OIDC Discovery drops it before appending.
    BOOST_TEST(oauthbearer::error_challenge("https://tenant.auth0.com/", "") ==
               R"({"status":"invalid_token","openid-configuration":"https://tenant.auth0.com/.well-known/openid-configuration"})");
    // A discovery URL given as such is used as is.
    BOOST_TEST(oauthbearer::error_challenge("https://idp.example/.well-known/oauth-authorization-server", "x")
                   .find(R"("https://idp.example/.well-known/oauth-authorization-server")") != std::string::npos);
    // Escaped, and invalid UTF-8 in configuration does not throw.
    BOOST_TEST(oauthbearer::error_challenge("https://a\"b", "s\\") .find(R"(a\"b)") != std::string::npos);
    BOOST_CHECK_NO_THROW(oauthbearer::error_challenge("https://\xff\xfe", "\xc3"));
    BOOST_TEST(oauthbearer::is_error_ack("\x01"));
    BOOST_TEST(!oauthbearer::is_error_ack(""));
    BOOST_TEST(!oauthbearer::is_error_ack("\x01\x01"));
}

BOOST_AUTO_TEST_SUITE_END()
