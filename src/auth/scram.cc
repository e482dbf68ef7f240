// SCRAM-SHA-256 server side (see scram.hh): verifier parsing and creation, the mock
// verifier for unknown users, the exchange state machine, and the MD5 helpers.
#include "auth/scram.hh"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <algorithm>
#include <charconv>
#include <climits>
#include <stdexcept>
#include <utility>

namespace pgw::auth::scram {

namespace {

constexpr std::string_view kVerifierPrefix = "SCRAM-SHA-256$";
constexpr std::string_view kVerifierShape =
    "expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>";

Result<ossl::Sha256> decode_key(std::string_view b64, const char* name)
{
    auto raw = base64_decode(b64);
    if (!raw)
        return Error{std::string(name) + ": " + raw.error()};
    if (raw->size() != ossl::kSha256Len)
        return Error{std::string(name) + " is " + std::to_string(raw->size()) + " bytes, expected 32"};
    ossl::Sha256 k{};
    std::copy(raw->begin(), raw->end(), k.begin());
    return k;
}

// A left-to-right reader over one SCRAM message. Attribute values end at ',' or at the
// end; the caller consumes the commas, so a trailing comma is an error, not ignored.
class Cursor {
public:
    explicit Cursor(std::string_view s) : s_(s) {}

    bool at_end() const { return pos_ >= s_.size(); }
    size_t pos() const { return pos_; }
    char peek() const { return at_end() ? '\0' : s_[pos_]; }
    std::string_view rest() const { return s_.substr(pos_); }

    bool eat(char c)
    {
        if (peek() != c || at_end())
            return false;
        ++pos_;
        return true;
    }

    // "<attr>=<value>"; returns the value, or nullopt when the attribute or '=' is missing.
    std::optional<std::string_view> attr(char attr)
    {
        if (peek() != attr || at_end() || pos_ + 1 >= s_.size() || s_[pos_ + 1] != '=')
            return std::nullopt;
        return value_after(2);
    }

    // Any "ALPHA=value"; sets `name`.
    std::optional<std::string_view> any_attr(char& name)
    {
        char c = peek();
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')))
            return std::nullopt;
        if (pos_ + 1 >= s_.size() || s_[pos_ + 1] != '=')
            return std::nullopt;
        name = c;
        return value_after(2);
    }

private:
    std::string_view value_after(size_t skip)
    {
        size_t start = pos_ + skip;
        size_t end = s_.find(',', start);
        if (end == std::string_view::npos)
            end = s_.size();
        pos_ = end;
        return s_.substr(start, end - start);
    }

    std::string_view s_;
    size_t pos_ = 0;
};

// RFC 5802 "printable": ASCII 0x21-0x7E except ','.
bool is_printable(std::string_view s)
{
    for (char ch : s) {
        auto c = static_cast<unsigned char>(ch);
        if (c < 0x21 || c > 0x7e || c == ',')
            return false;
    }
    return true;
}

// RFC 5056 cb-name: 1*(ALPHA / DIGIT / "." / "-").
bool is_cb_name(std::string_view s)
{
    if (s.empty())
        return false;
    for (char c : s)
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
              c == '-'))
            return false;
    return true;
}

ossl::Sha256 derive_salted_password(std::string_view password, std::span<const std::uint8_t> salt,
                                    int iterations)
{
    ossl::Sha256 out{};
    if (PKCS5_PBKDF2_HMAC(password.data(), static_cast<int>(password.size()), salt.data(),
                          static_cast<int>(salt.size()), iterations, EVP_sha256(),
                          static_cast<int>(out.size()), out.data()) != 1)
        throw std::runtime_error("PKCS5_PBKDF2_HMAC failed");
    return out;
}

std::string hex(std::span<const std::uint8_t> data)
{
    static constexpr char digits[] = "0123456789abcdef";
    std::string out;
    out.reserve(data.size() * 2);
    for (auto b : data) {
        out += digits[b >> 4];
        out += digits[b & 15];
    }
    return out;
}

std::string md5_hex(std::string_view data)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (EVP_Digest(data.data(), data.size(), md, &len, EVP_md5(), nullptr) != 1 || len != 16)
        throw std::runtime_error("MD5 failed (is the default provider loaded?)");
    return hex({md, len});
}

} // namespace

Result<Verifier> parse_verifier(std::string_view text)
{
    if (text.rfind("md5", 0) == 0)
        return Error{"this is an MD5 password hash, not a SCRAM-SHA-256 verifier"};
    if (text.rfind(kVerifierPrefix, 0) != 0)
        return Error{"not a SCRAM-SHA-256 verifier (" + std::string(kVerifierShape) + ")"};
    std::string_view body = text.substr(kVerifierPrefix.size());
    size_t dollar = body.find('$');
    if (dollar == std::string_view::npos)
        return Error{"SCRAM verifier has no '$' before the keys (" + std::string(kVerifierShape) + ")"};
    std::string_view iter_salt = body.substr(0, dollar);
    std::string_view keys = body.substr(dollar + 1);

    size_t colon = iter_salt.find(':');
    if (colon == std::string_view::npos)
        return Error{"SCRAM verifier has no ':' between iterations and salt"};
    std::string_view iter_text = iter_salt.substr(0, colon);
    std::string_view salt_text = iter_salt.substr(colon + 1);

    Verifier v;
    auto [end, ec] = std::from_chars(iter_text.data(), iter_text.data() + iter_text.size(), v.iterations);
    if (iter_text.empty() || ec != std::errc() || end != iter_text.data() + iter_text.size() ||
        iter_text[0] == '+' || iter_text[0] == '-' || v.iterations < 1)
        return Error{"SCRAM verifier's iteration count is not a positive integer"};

    auto salt = base64_decode(salt_text);
    if (!salt)
        return Error{"SCRAM verifier's salt: " + salt.error()};
    if (salt->empty() || salt->size() > kMaxSaltLen)
        return Error{"SCRAM verifier's salt is " + std::to_string(salt->size()) +
                     " bytes, expected 1 to " + std::to_string(kMaxSaltLen)};
    v.salt = std::move(*salt);

    colon = keys.find(':');
    if (colon == std::string_view::npos)
        return Error{"SCRAM verifier has no ':' between StoredKey and ServerKey"};
    auto stored = decode_key(keys.substr(0, colon), "SCRAM verifier's StoredKey");
    if (!stored)
        return Error{stored.error()};
    auto server = decode_key(keys.substr(colon + 1), "SCRAM verifier's ServerKey");
    if (!server)
        return Error{server.error()};
    v.stored_key = *stored;
    v.server_key = *server;
    return v;
}

std::string format_verifier(const Verifier& v)
{
    return std::string(kVerifierPrefix) + std::to_string(v.iterations) + ":" + base64_encode(v.salt) + "$" +
           base64_encode(v.stored_key) + ":" + base64_encode(v.server_key);
}

Result<std::string> make_verifier(std::string_view password, int iterations,
                                  std::span<const std::uint8_t> salt)
{
    if (iterations < 1)
        return Error{"iteration count must be at least 1"};
    for (char c : password)
        if (static_cast<unsigned char>(c) >= 0x80)
            return Error{"the password has non-ASCII characters; pgwicket does not implement SASLprep, "
                         "so hash it with PostgreSQL (CREATE ROLE ... PASSWORD, then read pg_authid)"};
    if (password.find('\0') != std::string_view::npos)
        return Error{"the password contains a NUL byte"};
    if (salt.size() > kMaxSaltLen)
        return Error{"salt longer than " + std::to_string(kMaxSaltLen) + " bytes"};
    if (password.size() > INT_MAX)
        return Error{"password too long"};

    Verifier v;
    v.iterations = iterations;
    if (salt.empty()) {
        v.salt.resize(kDefaultSaltLen);
        if (RAND_bytes(v.salt.data(), static_cast<int>(v.salt.size())) != 1)
            return Error{"could not generate a random salt"};
    } else {
        v.salt.assign(salt.begin(), salt.end());
    }
    // RFC 5802: SaltedPassword = Hi(password, salt, i); ClientKey = HMAC(SaltedPassword,
    // "Client Key"); StoredKey = H(ClientKey); ServerKey = HMAC(SaltedPassword, "Server Key").
    ossl::Sha256 salted = derive_salted_password(password, v.salt, iterations);
    ossl::Sha256 client_key = ossl::hmac_sha256(salted, octets_of("Client Key"));
    v.stored_key = ossl::sha256(client_key);
    v.server_key = ossl::hmac_sha256(salted, octets_of("Server Key"));
    OPENSSL_cleanse(salted.data(), salted.size());
    OPENSSL_cleanse(client_key.data(), client_key.size());
    return format_verifier(v);
}

Verifier mock_verifier(std::span<const std::uint8_t> server_secret, std::string_view user, int iterations)
{
    // A label keeps this HMAC's output from doubling as any other use of the secret.
    std::string input = "pgwicket scram mock salt";
    input += '\0';
    input += user;
    ossl::Sha256 mac = ossl::hmac_sha256(server_secret, octets_of(input));
    Verifier v;
    v.iterations = iterations;
    v.salt.assign(mac.begin(), mac.begin() + kDefaultSaltLen);
    // The keys stay zero, as in PostgreSQL: no ClientKey hashes to all-zero, and the
    // exchange is marked doomed besides.
    return v;
}

const char* sqlstate(Failure f)
{
    switch (f) {
    case Failure::Protocol:
        return "08P01";
    case Failure::Unsupported:
        return "0A000";
    case Failure::WrongPassword:
        return "28P01";
    case Failure::ChannelBindingDemanded:
        return "08P01";
    case Failure::Internal:
        return "XX000";
    }
    return "XX000";
}

ServerExchange::ServerExchange(Verifier v) : v_(std::move(v)) {}

ServerExchange ServerExchange::for_unknown_user(std::span<const std::uint8_t> server_secret,
                                                std::string_view user, int iterations)
{
    ServerExchange x(mock_verifier(server_secret, user, iterations));
    x.doomed_ = true;
    return x;
}

ServerExchange ServerExchange::with_server_nonce(Verifier v, std::string server_nonce)
{
    ServerExchange x(std::move(v));
    x.fixed_server_nonce_ = std::move(server_nonce);
    return x;
}

ScramError ServerExchange::fail(Failure kind, std::string message)
{
    state_ = State::Done;
    return ScramError{kind, std::move(message)};
}

Step ServerExchange::client_first(std::string_view message)
{
    if (state_ != State::AwaitFirst)
        return fail(Failure::Protocol, "unexpected SCRAM client-first-message");
    if (message.size() > kMaxClientMessage)
        return fail(Failure::Protocol, "SCRAM client-first-message longer than " +
                                           std::to_string(kMaxClientMessage) + " bytes");
    if (message.find('\0') != std::string_view::npos)
        return fail(Failure::Protocol, "malformed SCRAM message (NUL byte in client-first-message)");

    Cursor c(message);
    // gs2-cbind-flag: "n" (no channel binding), "y" (client could, thinks we cannot:
    // true, we never offer SCRAM-SHA-256-PLUS), or "p=<cb-name>" (client insists).
    switch (c.peek()) {
    case 'n':
    case 'y':
        cbind_flag_ = c.peek();
        c.eat(cbind_flag_);
        break;
    case 'p': {
        auto name = c.attr('p');
        if (!name || !is_cb_name(*name) || !c.eat(','))
            return fail(Failure::Protocol, "malformed SCRAM message (bad channel-binding flag)");
        return fail(Failure::ChannelBindingDemanded,
                    "the client requires SCRAM channel binding (" + std::string(*name) +
                        "), which cannot work through a proxy that terminates TLS: the binding is "
                        "to the TLS connection the client sees, which ends at pgwicket. Connect "
                        "with channel_binding=prefer or disable, and use sslmode=verify-full to "
                        "authenticate the proxy");
    }
    default:
        return fail(Failure::Protocol, "malformed SCRAM message (unexpected channel-binding flag)");
    }
    if (!c.eat(','))
        return fail(Failure::Protocol, "malformed SCRAM message (comma expected after channel-binding flag)");
    if (c.peek() == 'a')
        return fail(Failure::Unsupported, "client uses SCRAM authorization identity, but it is not supported");
    if (!c.eat(','))
        return fail(Failure::Protocol, "malformed SCRAM message (comma expected after gs2 header)");

    size_t bare_start = c.pos();
    if (c.peek() == 'm')
        return fail(Failure::Unsupported, "client requires a mandatory SCRAM extension");
    // The user name in the message is ignored, as PostgreSQL does: the startup packet's
    // user is the one authenticated (libpq sends an empty one here).
    if (!c.attr('n') || !c.eat(','))
        return fail(Failure::Protocol, "malformed SCRAM message (user name attribute expected)");
    auto nonce = c.attr('r');
    if (!nonce)
        return fail(Failure::Protocol, "malformed SCRAM message (nonce attribute expected)");
    if (nonce->empty() || !is_printable(*nonce))
        return fail(Failure::Protocol, "malformed SCRAM message (empty nonce or non-printable characters in it)");
    // Optional extensions follow; we support none and ignore them, as PostgreSQL does.
    while (!c.at_end()) {
        char name = 0;
        if (!c.eat(',') || !c.any_attr(name))
            return fail(Failure::Protocol, "malformed SCRAM message (attribute expected in client-first-message)");
    }

    client_nonce_ = std::string(*nonce);
    client_first_bare_ = std::string(message.substr(bare_start));
    if (!fixed_server_nonce_.empty()) {
        server_nonce_ = fixed_server_nonce_;
    } else {
        std::uint8_t raw[kServerNonceRawLen];
        if (RAND_bytes(raw, sizeof raw) != 1)
            return fail(Failure::Internal, "could not generate a SCRAM nonce");
        server_nonce_ = base64_encode(raw);
    }
    server_first_ = "r=" + client_nonce_ + server_nonce_ + ",s=" + base64_encode(v_.salt) +
                    ",i=" + std::to_string(v_.iterations);
    state_ = State::AwaitFinal;
    return server_first_;
}

Step ServerExchange::client_final(std::string_view message)
{
    if (state_ != State::AwaitFinal)
        return fail(Failure::Protocol, "unexpected SCRAM client-final-message");
    if (message.size() > kMaxClientMessage)
        return fail(Failure::Protocol, "SCRAM client-final-message longer than " +
                                           std::to_string(kMaxClientMessage) + " bytes");
    if (message.find('\0') != std::string_view::npos)
        return fail(Failure::Protocol, "malformed SCRAM message (NUL byte in client-final-message)");

    Cursor c(message);
    // c= is base64 of the gs2 header; without channel binding that is "n,," or "y,,".
    auto cbind = c.attr('c');
    if (!cbind || !c.eat(','))
        return fail(Failure::Protocol, "malformed SCRAM message (channel-binding attribute expected)");
    std::string_view expected_cbind = cbind_flag_ == 'y' ? "eSws" : "biws";
    if (*cbind != expected_cbind)
        return fail(Failure::Protocol, "unexpected SCRAM channel-binding attribute in client-final-message");

    auto nonce = c.attr('r');
    if (!nonce)
        return fail(Failure::Protocol, "malformed SCRAM message (nonce attribute expected)");
    // Not secret (it went over the wire in both directions), so a plain compare is fine.
    if (nonce->size() != client_nonce_.size() + server_nonce_.size() ||
        nonce->substr(0, client_nonce_.size()) != client_nonce_ ||
        nonce->substr(client_nonce_.size()) != server_nonce_)
        return fail(Failure::Protocol, "invalid SCRAM response (nonce does not match)");

    // Extensions may sit between the nonce and the proof; the proof comes last.
    size_t proof_comma = 0;
    std::optional<std::string_view> proof_b64;
    while (!proof_b64) {
        proof_comma = c.pos();
        char name = 0;
        if (!c.eat(','))
            return fail(Failure::Protocol, "malformed SCRAM message (proof expected in client-final-message)");
        auto value = c.any_attr(name);
        if (!value)
            return fail(Failure::Protocol, "malformed SCRAM message (attribute expected in client-final-message)");
        if (name == 'p')
            proof_b64 = value;
    }
    if (!c.at_end())
        return fail(Failure::Protocol, "malformed SCRAM message (garbage at end of client-final-message)");
    auto proof = base64_decode(*proof_b64);
    if (!proof || proof->size() != ossl::kSha256Len)
        return fail(Failure::Protocol, "malformed SCRAM message (malformed proof in client-final-message)");

    // AuthMessage = client-first-message-bare "," server-first-message ","
    //               client-final-message-without-proof
    std::string auth_message = client_first_bare_ + "," + server_first_ + "," +
                               std::string(message.substr(0, proof_comma));
    ossl::Sha256 client_signature = ossl::hmac_sha256(v_.stored_key, octets_of(auth_message));
    ossl::Sha256 client_key{};
    for (size_t i = 0; i < client_key.size(); ++i)
        client_key[i] = (*proof)[i] ^ client_signature[i];
    ossl::Sha256 computed_stored = ossl::sha256(client_key);
    bool match = CRYPTO_memcmp(computed_stored.data(), v_.stored_key.data(), computed_stored.size()) == 0;
    OPENSSL_cleanse(client_key.data(), client_key.size());
    // A doomed exchange (unknown user) has done the same work; now it fails the same way.
    if (!match || doomed_)
        return fail(Failure::WrongPassword, "password authentication failed");

    ossl::Sha256 server_signature = ossl::hmac_sha256(v_.server_key, octets_of(auth_message));
    state_ = State::Done;
    return "v=" + base64_encode(server_signature);
}

std::string make_md5_verifier(std::string_view password, std::string_view user)
{
    std::string input(password);
    input += user;
    std::string out = "md5" + md5_hex(input);
    OPENSSL_cleanse(input.data(), input.size());
    return out;
}

bool md5_response_matches(std::string_view stored, std::span<const std::uint8_t, 4> salt,
                          std::string_view response)
{
    if (stored.size() != 35 || stored.rfind("md5", 0) != 0)
        return false;
    std::string input(stored.substr(3));
    input.append(reinterpret_cast<const char*>(salt.data()), salt.size());
    std::string expected = "md5" + md5_hex(input);
    return response.size() == expected.size() &&
           CRYPTO_memcmp(response.data(), expected.data(), expected.size()) == 0;
}

} // namespace pgw::auth::scram
