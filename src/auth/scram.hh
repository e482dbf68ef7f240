// SCRAM-SHA-256 (RFC 5802, RFC 7677) on the server side as PostgreSQL speaks it: the
// pg_authid verifier format, verifier creation, and one exchange as a state machine.
#pragma once

#include "auth/base64.hh"
#include "auth/ossl.hh"
#include "common/result.hh"

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>

namespace pgw::auth::scram {

inline constexpr const char* kMechanism = "SCRAM-SHA-256";
inline constexpr int kDefaultIterations = 4096;  // PostgreSQL's scram_iterations default
inline constexpr size_t kDefaultSaltLen = 16;    // PostgreSQL's SCRAM_DEFAULT_SALT_LEN
inline constexpr size_t kServerNonceRawLen = 18; // PostgreSQL's SCRAM_RAW_NONCE_LEN
// Longest client message we read. libpq's are under 150 bytes; PostgreSQL itself takes
// up to 64 KiB, but nothing legitimate comes near 2 KiB and the cap bounds our work.
inline constexpr size_t kMaxClientMessage = 2048;
inline constexpr size_t kMaxSaltLen = 1024;

// What `SELECT rolpassword FROM pg_authid` shows for a SCRAM role:
// SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>
struct Verifier {
    int iterations = 0;
    Octets salt;
    ossl::Sha256 stored_key{};
    ossl::Sha256 server_key{};
};

Result<Verifier> parse_verifier(std::string_view text);
std::string format_verifier(const Verifier& v);

// Computes a verifier for `password` (what a future `pgwicket --hash-password` prints).
// An empty `salt` means 16 random bytes. The password is used as its bytes: that is what
// PostgreSQL's SASLprep yields for every ASCII password, but not for all non-ASCII ones
// (NFKC normalisation), so those are refused rather than hashed into a verifier that a
// client's SASLprep could never match. Hash such passwords with PostgreSQL itself.
Result<std::string> make_verifier(std::string_view password, int iterations = kDefaultIterations,
                                  std::span<const std::uint8_t> salt = {});

// The verifier presented for a user we do not know, so that the exchange looks the same
// as for a real one: a salt derived from `server_secret` and the user name (stable across
// attempts, so probing twice shows nothing) and keys that match no password. PostgreSQL
// does the same with the mock nonce it keeps in pg_control. The secret must be random,
// at least 32 bytes, and stay the same across restarts.
// `iterations` should be what the real verifiers use, or the count gives unknown users away.
Verifier mock_verifier(std::span<const std::uint8_t> server_secret, std::string_view user,
                       int iterations = kDefaultIterations);

enum class Failure {
    Protocol,                // malformed or out-of-order message: 08P01
    Unsupported,             // authzid or a mandatory extension (m=): 0A000, as PostgreSQL
    WrongPassword,           // proof does not verify (or the user is unknown): 28P01
    ChannelBindingDemanded,  // gs2 header p=...: the client insists on channel binding
    Internal,                // no randomness for the nonce: XX000
};

// The SQLSTATE to send for a failure. ChannelBindingDemanded maps to 08P01 with a
// message explaining that a TLS-terminating proxy cannot offer channel binding.
const char* sqlstate(Failure f);

struct ScramError {
    Failure kind;
    // For the log and the client. Never contains a SCRAM message, nonce or proof.
    std::string message;
};

// A server message to send (server-first-message or server-final-message), or a failure.
using Step = std::variant<std::string, ScramError>;

// One exchange. Feed it the SASLInitialResponse data, send what it returns in
// AuthenticationSASLContinue, feed it the SASLResponse data, and on success send the
// returned server-final-message in AuthenticationSASLFinal. The first failure is final.
class ServerExchange {
public:
    explicit ServerExchange(Verifier v);
    // An unknown user: the exchange runs on mock_verifier() and ends in WrongPassword,
    // after the same steps and the same amount of work as a real one.
    static ServerExchange for_unknown_user(std::span<const std::uint8_t> server_secret,
                                           std::string_view user,
                                           int iterations = kDefaultIterations);
    // Tests only: a fixed server nonce, for RFC 7677's test vector.
    static ServerExchange with_server_nonce(Verifier v, std::string server_nonce);

    Step client_first(std::string_view message);
    Step client_final(std::string_view message);

    bool done() const { return state_ == State::Done; }

private:
    enum class State { AwaitFirst, AwaitFinal, Done };

    ScramError fail(Failure kind, std::string message);

    Verifier v_;
    bool doomed_ = false;
    State state_ = State::AwaitFirst;
    std::string fixed_server_nonce_;
    char cbind_flag_ = 0;
    std::string client_nonce_;
    std::string server_nonce_;
    std::string client_first_bare_;
    std::string server_first_;
};

// MD5 password authentication (PostgreSQL's "md5" method), for rules that configure it.
// Stored form: "md5" + hex(md5(password + user)).
std::string make_md5_verifier(std::string_view password, std::string_view user);
// Checks the client's PasswordMessage ("md5" + hex(md5(hex-part-of-stored + salt))) for
// the 4-byte salt we sent. Constant time in the response's content.
bool md5_response_matches(std::string_view stored, std::span<const std::uint8_t, 4> salt,
                          std::string_view response);

} // namespace pgw::auth::scram
