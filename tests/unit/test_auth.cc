// Unit tests for src/auth/: base64, and SCRAM-SHA-256 against RFC 7677's vector and a
// real PostgreSQL 15 verifier.
#include "auth/base64.hh"
#include "auth/ossl.hh"
#include "auth/scram.hh"

#include <boost/test/unit_test.hpp>

#include <openssl/evp.h>

#include <map>
#include <string>
#include <variant>

using namespace pgw;
using namespace pgw::auth;

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
