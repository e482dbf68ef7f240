// Test-only JWT minting shared by the unit and integration tests: RSA/EC keys made once per
// binary, their JWKS, JWS signing (ES* as raw r||s), and the forged tokens the tests refuse.
#pragma once

#include "auth/base64.hh"
#include "auth/ossl.hh"

#include <nlohmann/json.hpp>
#include <openssl/evp.h>

#include <cstddef>
#include <string>
#include <string_view>

namespace pgw::testing {

using nlohmann::json;

std::string b64u(std::string_view s);
std::string b64u(const auth::Octets& o);

// Keys made once for the whole binary (RSA generation costs ~100 ms per key). The JWKS of
// test_jwks_json() holds rsa (kid "rsa-1"), ec256 ("ec-1") and ec384 ("ec-384");
// rsa_other is in no JWKS, for signatures by the wrong key.
struct TestKeys {
    auth::ossl::PkeyPtr rsa;
    auth::ossl::PkeyPtr rsa_other;
    auth::ossl::PkeyPtr ec256;
    auth::ossl::PkeyPtr ec384;

    static const TestKeys& get();

private:
    TestKeys();
};

// JWKs for a public key. `coord` is the width of one EC coordinate (32 for P-256, 48 for
// P-384). Throws std::runtime_error when OpenSSL fails.
json rsa_jwk(EVP_PKEY* key, const std::string& kid);
json ec_jwk(EVP_PKEY* key, const std::string& kid, const char* crv, int coord);
json test_jwks_json();
// Writes `jwks` (default: test_jwks_json()) to `path`, replacing it.
void write_jwks_file(const std::string& path, const json& jwks = test_jwks_json());

// The public key in PEM ("-----BEGIN PUBLIC KEY-----..."), the bytes an HS256 forger
// keys the HMAC with.
std::string public_key_pem(EVP_PKEY* key);

// The JWS signature over `input` for alg RS256/384/512, PS256 or ES256/384.
auth::Octets sign(EVP_PKEY* key, const std::string& alg, std::string_view input);

// header.payload.signature, signed with `key`, or by default the test key that fits alg
// (rsa for RS and PS, ec256 for ES256, ec384 for ES384). An empty kid leaves "kid" out.
std::string mint(const json& claims, const std::string& alg = "RS256", const std::string& kid = "rsa-1",
                 EVP_PKEY* key = nullptr);
// Any header: its "alg" picks the signature as for mint().
std::string mint_with_header(const json& header, const json& claims, EVP_PKEY* key = nullptr);

// header.payload.sig, with no signing at all (alg none, or a made-up signature).
std::string unsigned_token(const json& header, const json& claims, const std::string& sig = "");
// `token` with its payload swapped for `claims` and the old signature kept.
std::string with_payload(const std::string& token, const json& claims);
// `token` with one bit of its signature flipped (still valid base64url).
std::string with_flipped_signature(const std::string& token);
// The classic key-confusion forgery: alg HS256, HMAC keyed with the PEM of the RSA test
// key that the JWKS publishes under `kid`.
std::string hs256_with_public_key(const json& claims, const std::string& kid = "rsa-1");
// A validly signed RS256 token of at least `size` bytes, padded with a "padding" claim.
std::string oversized(const json& claims, size_t size);

} // namespace pgw::testing
