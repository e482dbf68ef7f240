// Test-only JWT minting behind jwt_mint.hh: key generation, JWK export, JWS signatures and
// the forged tokens. Errors throw std::runtime_error, which Boost.Test reports as such.
#include "jwt_mint.hh"

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include <algorithm>
#include <fstream>
#include <stdexcept>

namespace pgw::testing {

namespace {

void must(bool ok, const char* what)
{
    if (!ok)
        throw std::runtime_error(std::string("jwt_mint: ") + what + " failed");
}

auth::Octets bn_bytes(const BIGNUM* bn, int pad = 0)
{
    auth::Octets out(pad ? size_t(pad) : size_t(BN_num_bytes(bn)));
    if (pad)
        must(BN_bn2binpad(bn, out.data(), pad) == pad, "BN_bn2binpad");
    else
        BN_bn2bin(bn, out.data());
    return out;
}

auth::Octets bn_param(EVP_PKEY* key, const char* name, int pad = 0)
{
    BIGNUM* bn = nullptr;
    must(EVP_PKEY_get_bn_param(key, name, &bn) == 1, name);
    auth::ossl::BnPtr owner(bn);
    return bn_bytes(bn, pad);
}

auth::ossl::PkeyPtr keygen(const char* type, const char* curve_or_null, size_t bits)
{
    EVP_PKEY* k = curve_or_null ? EVP_PKEY_Q_keygen(nullptr, nullptr, type, curve_or_null)
                                : EVP_PKEY_Q_keygen(nullptr, nullptr, type, bits);
    must(k != nullptr, "EVP_PKEY_Q_keygen");
    return auth::ossl::PkeyPtr(k);
}

} // namespace

std::string b64u(std::string_view s) { return auth::base64url_encode(auth::octets_of(s)); }

std::string b64u(const auth::Octets& o) { return auth::base64url_encode(o); }

TestKeys::TestKeys()
    : rsa(keygen("RSA", nullptr, 2048)), rsa_other(keygen("RSA", nullptr, 2048)),
      ec256(keygen("EC", "P-256", 0)), ec384(keygen("EC", "P-384", 0))
{
}

const TestKeys& TestKeys::get()
{
    static const TestKeys keys;
    return keys;
}

json rsa_jwk(EVP_PKEY* key, const std::string& kid)
{
    return {{"kty", "RSA"},
            {"use", "sig"},
            {"kid", kid},
            {"n", b64u(bn_param(key, OSSL_PKEY_PARAM_RSA_N))},
            {"e", b64u(bn_param(key, OSSL_PKEY_PARAM_RSA_E))}};
}

json ec_jwk(EVP_PKEY* key, const std::string& kid, const char* crv, int coord)
{
    return {{"kty", "EC"},
            {"kid", kid},
            {"crv", crv},
            {"x", b64u(bn_param(key, OSSL_PKEY_PARAM_EC_PUB_X, coord))},
            {"y", b64u(bn_param(key, OSSL_PKEY_PARAM_EC_PUB_Y, coord))}};
}

json test_jwks_json()
{
    const auto& k = TestKeys::get();
    return {{"keys", json::array({rsa_jwk(k.rsa.get(), "rsa-1"), ec_jwk(k.ec256.get(), "ec-1", "P-256", 32),
                                  ec_jwk(k.ec384.get(), "ec-384", "P-384", 48)})}};
}

void write_jwks_file(const std::string& path, const json& jwks)
{
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << jwks.dump(2) << "\n";
    if (!out)
        throw std::runtime_error("jwt_mint: cannot write " + path);
}

std::string public_key_pem(EVP_PKEY* key)
{
    std::unique_ptr<BIO, auth::ossl::Deleter<BIO, BIO_free_all>> bio(BIO_new(BIO_s_mem()));
    must(bio && PEM_write_bio_PUBKEY(bio.get(), key) == 1, "PEM_write_bio_PUBKEY");
    char* pem = nullptr;
    long len = BIO_get_mem_data(bio.get(), &pem);
    return std::string(pem, size_t(len));
}

auth::Octets sign(EVP_PKEY* key, const std::string& alg, std::string_view input)
{
    const EVP_MD* md = alg.ends_with("384") ? EVP_sha384() : alg.ends_with("512") ? EVP_sha512() : EVP_sha256();
    auth::ossl::MdCtxPtr ctx(EVP_MD_CTX_new());
    EVP_PKEY_CTX* pctx = nullptr;
    must(ctx && EVP_DigestSignInit(ctx.get(), &pctx, md, nullptr, key) == 1, "EVP_DigestSignInit");
    if (alg.starts_with("PS")) {
        must(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) == 1, "PSS padding");
        must(EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) == 1, "PSS salt length");
    }
    size_t len = 0;
    auto data = reinterpret_cast<const unsigned char*>(input.data());
    must(EVP_DigestSign(ctx.get(), nullptr, &len, data, input.size()) == 1, "EVP_DigestSign (size)");
    auth::Octets sig(len);
    must(EVP_DigestSign(ctx.get(), sig.data(), &len, data, input.size()) == 1, "EVP_DigestSign");
    sig.resize(len);
    if (!alg.starts_with("ES"))
        return sig;
    // OpenSSL gives DER; JWS wants raw r||s, each as wide as the curve's order.
    int coord = alg == "ES256" ? 32 : 48;
    const unsigned char* p = sig.data();
    auth::ossl::EcdsaSigPtr ecsig(d2i_ECDSA_SIG(nullptr, &p, long(sig.size())));
    must(ecsig != nullptr, "d2i_ECDSA_SIG");
    auth::Octets raw = bn_bytes(ECDSA_SIG_get0_r(ecsig.get()), coord);
    auth::Octets s = bn_bytes(ECDSA_SIG_get0_s(ecsig.get()), coord);
    raw.insert(raw.end(), s.begin(), s.end());
    return raw;
}

std::string mint_with_header(const json& header, const json& claims, EVP_PKEY* key)
{
    const std::string alg = header.value("alg", "RS256");
    if (!key) {
        const auto& k = TestKeys::get();
        key = alg.starts_with("ES") ? (alg == "ES256" ? k.ec256.get() : k.ec384.get()) : k.rsa.get();
    }
    std::string input = b64u(header.dump()) + "." + b64u(claims.dump());
    return input + "." + b64u(sign(key, alg, input));
}

std::string mint(const json& claims, const std::string& alg, const std::string& kid, EVP_PKEY* key)
{
    json header = {{"alg", alg}, {"typ", "JWT"}};
    if (!kid.empty())
        header["kid"] = kid;
    return mint_with_header(header, claims, key);
}

std::string unsigned_token(const json& header, const json& claims, const std::string& sig)
{
    return b64u(header.dump()) + "." + b64u(claims.dump()) + "." + sig;
}

std::string with_payload(const std::string& token, const json& claims)
{
    size_t d1 = token.find('.'), d2 = token.rfind('.');
    return token.substr(0, d1 + 1) + b64u(claims.dump()) + token.substr(d2);
}

std::string with_flipped_signature(const std::string& token)
{
    size_t dot = token.rfind('.');
    auto sig = auth::base64url_decode(token.substr(dot + 1));
    must(sig.ok() && sig->size() > 10, "decoding the signature to flip");
    (*sig)[10] ^= 0x01;
    return token.substr(0, dot + 1) + b64u(*sig);
}

std::string hs256_with_public_key(const json& claims, const std::string& kid)
{
    const std::string pem = public_key_pem(TestKeys::get().rsa.get());
    json header = {{"alg", "HS256"}, {"kid", kid}, {"typ", "JWT"}};
    std::string input = b64u(header.dump()) + "." + b64u(claims.dump());
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    must(HMAC(EVP_sha256(), pem.data(), int(pem.size()), reinterpret_cast<const unsigned char*>(input.data()),
              input.size(), mac, &mac_len) != nullptr,
         "HMAC");
    return input + "." + b64u(auth::Octets(mac, mac + mac_len));
}

std::string oversized(const json& claims, size_t size)
{
    // Grow the claim by what is still missing (4 token bytes per 3 claim bytes) until the
    // token reaches `size`; it ends at most a few bytes over.
    json padded = claims;
    padded["padding"] = "";
    size_t pad = 0;
    for (;;) {
        std::string token = mint(padded);
        if (token.size() >= size)
            return token;
        pad += std::max<size_t>((size - token.size()) * 3 / 4, 1);
        padded["padding"] = std::string(pad, 'x');
    }
}

} // namespace pgw::testing
