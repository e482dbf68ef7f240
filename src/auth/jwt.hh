// JWT (JWS compact serialisation) verification against a JWKS, for SSO access and ID
// tokens from OIDC providers (Azure AD / Entra ID, Auth0): keys, signature, claims.
#pragma once

#include "common/result.hh"

#include <openssl/evp.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace pgw::auth::jwt {

// Checked before any decoding. Azure AD tokens with many claims reach 4-6 KiB.
inline constexpr size_t kMaxTokenBytes = 16384;
inline constexpr size_t kMaxJwksBytes = 1 << 20;
inline constexpr size_t kMaxJwksKeys = 100;
inline constexpr int kMinRsaBits = 2048;
inline constexpr int kMaxRsaBits = 8192;
inline constexpr size_t kMaxGroups = 4096;
inline constexpr size_t kMaxIdentityBytes = 1024;

// The algorithms we verify. HS* is never among them: with a JWKS every key is public,
// and "HMAC keyed with the public key" is the classic forgery.
enum class Alg { RS256, RS384, RS512, PS256, ES256, ES384 };
const char* alg_name(Alg a);

enum class KeyType { Rsa, EcP256, EcP384 };
const char* key_type_name(KeyType t);

struct Key {
    std::string kid;          // may be empty: a JWKS key without "kid"
    KeyType type;
    std::optional<Alg> alg;   // when the JWKS pins the key to one algorithm
    std::shared_ptr<EVP_PKEY> pkey;  // shared so a Jwks copies cheaply; freed by EVP_PKEY_free
};

class Jwks {
public:
    // Parses a JWKS document (the provider's jwks_uri). Keys that cannot be used (use
    // other than "sig", unknown kty or alg, too small, not on the curve) are skipped with
    // a line in notes(); a document without one usable key is an error.
    static Result<Jwks> parse(std::string_view json_text);

    // The key with this kid, or nullptr.
    const Key* find(std::string_view kid) const;
    const std::vector<Key>& keys() const { return keys_; }
    const std::vector<std::string>& notes() const { return notes_; }

private:
    std::vector<Key> keys_;
    std::vector<std::string> notes_;
};

struct VerifyOptions {
    std::vector<std::string> issuers;    // accepted "iss" values, exact match; at least one
    std::vector<std::string> audiences;  // accepted "aud" values, exact match; at least one
    std::chrono::seconds leeway{60};     // clock skew allowed on exp, nbf and iat
    std::optional<std::int64_t> now;     // Unix seconds; unset means the system clock
    // Plain claim names, so any provider fits: "email", "upn" or "unique_name" (Azure AD
    // v1), "preferred_username" (v2), "sub", or an Auth0 namespaced claim such as
    // "https://example.com/email".
    std::string identity_claim = "email";
    // "groups", "roles", or a namespaced claim. A string or an array of strings.
    std::string groups_claim = "groups";
};

struct Identity {
    std::string identity;              // the identity claim's value
    std::string subject;               // "sub", empty if absent
    std::vector<std::string> groups;   // the groups claim, empty if absent
    // Azure AD leaves "groups" out and links to Graph (_claim_names) when a user is in
    // more groups than fit; group-based rules must then not treat the list as complete.
    bool groups_overage = false;
    std::int64_t exp = 0;
    std::string issuer;
    std::string audience;              // the configured audience that matched
    std::string kid;
    Alg alg = Alg::RS256;
};

enum class Failure {
    TooLarge,
    Malformed,
    AlgorithmNotAllowed,
    UnknownKey,
    KeyMismatch,       // alg does not fit the key's type, or the JWKS pins another alg
    BadSignature,
    Expired,
    NotYetValid,
    IssuedInFuture,
    IssuerMismatch,
    AudienceMismatch,
    MissingClaim,
    Misconfigured,     // VerifyOptions without issuer, audience or identity claim
};

struct JwtError {
    Failure kind;
    // For a person to act on. Never contains the token or any part of its encoding;
    // claim values it quotes are cut short and stripped of control characters.
    std::string message;
    // The key id is unknown: the provider may have rotated its keys, so the caller may
    // fetch the JWKS again (rate-limited) and retry once.
    bool reload_jwks = false;
};

std::variant<Identity, JwtError> verify(std::string_view token, const Jwks& jwks, const VerifyOptions& options);

// "2026-11-22T10:00:00Z"; exposed for messages elsewhere and for tests.
std::string format_utc(std::int64_t unix_seconds);
// "3 minutes", "1 second", "2 days": the coarse wording failure messages use.
std::string describe_duration(std::int64_t seconds);

} // namespace pgw::auth::jwt
