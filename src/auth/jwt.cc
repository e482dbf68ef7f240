// JWKS parsing into OpenSSL 3 public keys and JWS/JWT verification (see jwt.hh).
// Order of checks: size, shape, header, algorithm, key, signature, then the claims.
#include "auth/jwt.hh"

#include "auth/base64.hh"
#include "auth/json_util.hh"
#include "auth/ossl.hh"

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/rsa.h>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <exception>
#include <limits>

namespace pgw::auth::jwt {

using json_util::json;
using json_util::quote_untrusted;

namespace {

constexpr const char* kAllowedAlgs = "RS256/RS384/RS512/PS256/ES256/ES384";

std::optional<Alg> alg_from_name(std::string_view s)
{
    if (s == "RS256")
        return Alg::RS256;
    if (s == "RS384")
        return Alg::RS384;
    if (s == "RS512")
        return Alg::RS512;
    if (s == "PS256")
        return Alg::PS256;
    if (s == "ES256")
        return Alg::ES256;
    if (s == "ES384")
        return Alg::ES384;
    return std::nullopt;
}

bool alg_fits(Alg a, KeyType t)
{
    switch (a) {
    case Alg::RS256:
    case Alg::RS384:
    case Alg::RS512:
    case Alg::PS256:
        return t == KeyType::Rsa;
    case Alg::ES256:
        return t == KeyType::EcP256;
    case Alg::ES384:
        return t == KeyType::EcP384;
    }
    return false;
}

const EVP_MD* alg_digest(Alg a)
{
    switch (a) {
    case Alg::RS256:
    case Alg::PS256:
    case Alg::ES256:
        return EVP_sha256();
    case Alg::RS384:
    case Alg::ES384:
        return EVP_sha384();
    case Alg::RS512:
        return EVP_sha512();
    }
    return nullptr;
}

std::shared_ptr<EVP_PKEY> share(ossl::PkeyPtr p)
{
    return std::shared_ptr<EVP_PKEY>(p.release(), EVP_PKEY_free);
}

// ---- JWKS ------------------------------------------------------------------------

// A JWK member that must be a base64url string; sets `error` when it is not.
std::optional<Octets> b64url_member(const json& k, const char* name, std::string& error)
{
    auto it = k.find(name);
    if (it == k.end() || !it->is_string()) {
        error = std::string("'") + name + "' is missing or not a string";
        return std::nullopt;
    }
    auto raw = base64url_decode(it->get_ref<const std::string&>());
    if (!raw) {
        error = std::string("'") + name + "': " + raw.error();
        return std::nullopt;
    }
    return std::move(*raw);
}

ossl::PkeyPtr pkey_fromdata(const char* type, const OSSL_PARAM* params)
{
    ossl::PkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr));
    EVP_PKEY* raw = nullptr;
    if (!ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
        EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_PUBLIC_KEY, const_cast<OSSL_PARAM*>(params)) != 1)
        return nullptr;
    return ossl::PkeyPtr(raw);
}

ossl::PkeyPtr rsa_key(const json& k, std::string& error)
{
    auto n = b64url_member(k, "n", error);
    if (!n)
        return nullptr;
    auto e = b64url_member(k, "e", error);
    if (!e)
        return nullptr;
    ossl::BnPtr bn_n(BN_bin2bn(n->data(), static_cast<int>(n->size()), nullptr));
    ossl::BnPtr bn_e(BN_bin2bn(e->data(), static_cast<int>(e->size()), nullptr));
    if (!bn_n || !bn_e) {
        error = "out of memory";
        return nullptr;
    }
    int bits = BN_num_bits(bn_n.get());
    if (bits < kMinRsaBits || bits > kMaxRsaBits) {
        error = "RSA modulus is " + std::to_string(bits) + " bits, accepted are " +
                std::to_string(kMinRsaBits) + " to " + std::to_string(kMaxRsaBits);
        return nullptr;
    }
    // OpenSSL refuses public exponents over 64 bits for moduli over 3072 bits anyway.
    if (!BN_is_odd(bn_e.get()) || BN_num_bits(bn_e.get()) < 2 || BN_num_bits(bn_e.get()) > 64) {
        error = "RSA public exponent is not an odd number of 2 to 64 bits";
        return nullptr;
    }
    ossl::ParamBldPtr bld(OSSL_PARAM_BLD_new());
    if (!bld || OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, bn_n.get()) != 1 ||
        OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, bn_e.get()) != 1) {
        error = "could not build RSA parameters";
        return nullptr;
    }
    ossl::ParamsPtr params(OSSL_PARAM_BLD_to_param(bld.get()));
    ossl::PkeyPtr pkey = params ? pkey_fromdata("RSA", params.get()) : nullptr;
    if (!pkey)
        error = "OpenSSL rejected the RSA key";
    return pkey;
}

ossl::PkeyPtr ec_key(const json& k, KeyType& type, std::string& error)
{
    auto crv = k.find("crv");
    if (crv == k.end() || !crv->is_string()) {
        error = "'crv' is missing or not a string";
        return nullptr;
    }
    const std::string& curve = crv->get_ref<const std::string&>();
    const char* group = nullptr;
    size_t coord = 0;
    if (curve == "P-256") {
        type = KeyType::EcP256;
        group = "prime256v1";
        coord = 32;
    } else if (curve == "P-384") {
        type = KeyType::EcP384;
        group = "secp384r1";
        coord = 48;
    } else {
        error = "curve " + quote_untrusted(curve) + " is not supported (P-256, P-384)";
        return nullptr;
    }
    auto x = b64url_member(k, "x", error);
    if (!x)
        return nullptr;
    auto y = b64url_member(k, "y", error);
    if (!y)
        return nullptr;
    if (x->size() != coord || y->size() != coord) {
        error = "coordinates are not " + std::to_string(coord) + " bytes each, as " + curve + " needs";
        return nullptr;
    }
    // The uncompressed point: 0x04 || x || y.
    Octets point;
    point.reserve(1 + 2 * coord);
    point.push_back(0x04);
    point.insert(point.end(), x->begin(), x->end());
    point.insert(point.end(), y->begin(), y->end());

    ossl::ParamBldPtr bld(OSSL_PARAM_BLD_new());
    if (!bld || OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, group, 0) != 1 ||
        OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(), point.size()) != 1) {
        error = "could not build EC parameters";
        return nullptr;
    }
    ossl::ParamsPtr params(OSSL_PARAM_BLD_to_param(bld.get()));
    ossl::PkeyPtr pkey = params ? pkey_fromdata("EC", params.get()) : nullptr;
    if (!pkey) {
        error = "OpenSSL rejected the EC key (is the point on the curve?)";
        return nullptr;
    }
    // fromdata decodes the point; the explicit check states the requirement (a point off
    // the curve or at infinity invites invalid-curve attacks) instead of relying on it.
    ossl::PkeyCtxPtr check(EVP_PKEY_CTX_new_from_pkey(nullptr, pkey.get(), nullptr));
    if (!check || EVP_PKEY_public_check(check.get()) != 1) {
        error = "EC public key is not a valid point on " + curve;
        return nullptr;
    }
    return pkey;
}

// ---- claims and messages ---------------------------------------------------------

// A NumericDate (RFC 7519: seconds, integer or not). nullopt when it is not a finite number.
constexpr std::int64_t kMaxNumericDate = 253402300799;  // 9999-12-31T23:59:59Z

std::optional<std::int64_t> numeric_date(const json& v)
{
    constexpr std::int64_t kLimit = kMaxNumericDate;
    if (v.is_number_unsigned()) {
        auto u = v.get<std::uint64_t>();
        return u > std::uint64_t(kLimit) ? kLimit : std::int64_t(u);
    }
    if (v.is_number_integer()) {
        auto i = v.get<std::int64_t>();
        return std::clamp(i, -kLimit, kLimit);
    }
    if (v.is_number_float()) {
        double d = v.get<double>();
        if (!std::isfinite(d))
            return std::nullopt;
        d = std::clamp(d, double(-kLimit), double(kLimit));
        return std::int64_t(std::floor(d));
    }
    return std::nullopt;
}

std::string join_quoted(const std::vector<std::string>& values, size_t max_items = 5)
{
    std::string out;
    for (size_t i = 0; i < values.size() && i < max_items; ++i) {
        if (i)
            out += ", ";
        out += quote_untrusted(values[i]);
    }
    if (values.size() > max_items)
        out += " and " + std::to_string(values.size() - max_items) + " more";
    return out;
}

std::string expected_list(const std::vector<std::string>& values)
{
    return (values.size() == 1 ? "expected " : "expected one of ") + join_quoted(values);
}

bool has_control_chars(std::string_view s)
{
    for (char ch : s) {
        auto c = static_cast<unsigned char>(ch);
        if (c < 0x20 || c == 0x7f)
            return true;
    }
    return false;
}

JwtError malformed(std::string what)
{
    return JwtError{Failure::Malformed, "malformed token: " + std::move(what)};
}

// Raw r||s (JWS, RFC 7518 section 3.4) to the DER ECDSA-Sig-Value OpenSSL verifies.
std::optional<Octets> ecdsa_raw_to_der(const Octets& raw)
{
    size_t half = raw.size() / 2;
    ossl::EcdsaSigPtr sig(ECDSA_SIG_new());
    BIGNUM* r = BN_bin2bn(raw.data(), static_cast<int>(half), nullptr);
    BIGNUM* s = BN_bin2bn(raw.data() + half, static_cast<int>(half), nullptr);
    if (!sig || !r || !s || ECDSA_SIG_set0(sig.get(), r, s) != 1) {
        BN_free(r);
        BN_free(s);
        return std::nullopt;
    }
    int len = i2d_ECDSA_SIG(sig.get(), nullptr);
    if (len <= 0)
        return std::nullopt;
    Octets der(static_cast<size_t>(len));
    unsigned char* p = der.data();
    if (i2d_ECDSA_SIG(sig.get(), &p) != len)
        return std::nullopt;
    return der;
}

bool signature_verifies(const Key& key, Alg alg, std::string_view signing_input, const Octets& sig)
{
    ossl::MdCtxPtr md(EVP_MD_CTX_new());
    EVP_PKEY_CTX* pctx = nullptr;  // owned by `md`
    if (!md || EVP_DigestVerifyInit(md.get(), &pctx, alg_digest(alg), nullptr, key.pkey.get()) != 1)
        return false;
    if (alg == Alg::PS256) {
        // RFC 7518 section 3.5: MGF1 with the same hash, salt as long as the hash.
        if (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1 ||
            EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, EVP_sha256()) != 1 ||
            EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) != 1)
            return false;
    }
    return EVP_DigestVerify(md.get(), sig.data(), sig.size(),
                            reinterpret_cast<const unsigned char*>(signing_input.data()),
                            signing_input.size()) == 1;
}

std::variant<Identity, JwtError> verify_impl(std::string_view token, const Jwks& jwks,
                                             const VerifyOptions& opt)
{
    if (opt.issuers.empty() || opt.audiences.empty() || opt.identity_claim.empty())
        return JwtError{Failure::Misconfigured,
                        "JWT verification needs at least one issuer, one audience and an identity claim"};
    if (token.size() > kMaxTokenBytes)
        return JwtError{Failure::TooLarge, "token too large (" + std::to_string(token.size()) +
                                               " bytes, limit " + std::to_string(kMaxTokenBytes) + ")"};

    // ---- shape: header.payload.signature
    size_t dots = 0;
    for (char c : token)
        dots += c == '.';
    if (dots == 4)
        return malformed("five parts, an encrypted token (JWE); only signed tokens (JWS) are accepted");
    if (dots != 2)
        return malformed("expected three dot-separated parts, found " + std::to_string(dots + 1) +
                         " (is this a JWT at all? opaque access tokens cannot be verified here)");
    size_t d1 = token.find('.');
    size_t d2 = token.find('.', d1 + 1);
    std::string_view header_b64 = token.substr(0, d1);
    std::string_view payload_b64 = token.substr(d1 + 1, d2 - d1 - 1);
    std::string_view sig_b64 = token.substr(d2 + 1);
    if (header_b64.empty() || payload_b64.empty())
        return malformed("empty header or payload");

    // ---- header
    auto header_raw = base64url_decode(header_b64);
    if (!header_raw)
        return malformed("header: " + header_raw.error());
    std::string err;
    auto header = json_util::parse_object(
        std::string_view(reinterpret_cast<const char*>(header_raw->data()), header_raw->size()), err);
    if (!header)
        return malformed("header: " + err);
    auto alg_it = header->find("alg");
    if (alg_it == header->end() || !alg_it->is_string())
        return malformed("header has no 'alg'");
    const std::string& alg_text = alg_it->get_ref<const std::string&>();
    std::optional<Alg> alg = alg_from_name(alg_text);
    if (!alg) {
        std::string lower;
        for (char c : alg_text)
            lower += static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
        if (lower == "none")
            return JwtError{Failure::AlgorithmNotAllowed, "algorithm 'none' is not allowed"};
        return JwtError{Failure::AlgorithmNotAllowed,
                        "algorithm " + quote_untrusted(alg_text, 20) + " is not allowed (only " + kAllowedAlgs + ")"};
    }
    // RFC 7515 section 4.1.11: extensions listed in "crit" must be understood; we know none.
    if (header->contains("crit"))
        return malformed("header lists critical extensions ('crit'), which are not supported");
    std::string kid;
    bool has_kid = false;
    if (auto it = header->find("kid"); it != header->end()) {
        if (!it->is_string())
            return malformed("header's 'kid' is not a string");
        kid = it->get<std::string>();
        has_kid = true;
    }

    // ---- key
    const Key* key = nullptr;
    if (has_kid) {
        key = jwks.find(kid);
        if (!key)
            return JwtError{Failure::UnknownKey,
                            "unknown signing key id " + quote_untrusted(kid) + " (the JWKS has " +
                                std::to_string(jwks.keys().size()) +
                                " keys; the provider may have rotated them)",
                            true};
    } else {
        // No kid: usable only when exactly one key could have made this signature.
        size_t fitting = 0;
        for (const auto& k : jwks.keys())
            if (alg_fits(*alg, k.type) && (!k.alg || *k.alg == *alg)) {
                key = &k;
                ++fitting;
            }
        if (fitting == 0)
            return JwtError{Failure::UnknownKey,
                            std::string("token has no key id and no key in the JWKS fits ") + alg_name(*alg),
                            true};
        if (fitting > 1)
            return malformed("token has no key id ('kid') and " + std::to_string(fitting) +
                             " keys in the JWKS fit " + alg_name(*alg));
    }
    std::string key_label = key->kid.empty() ? std::string("(without kid)") : quote_untrusted(key->kid);
    if (!alg_fits(*alg, key->type))
        return JwtError{Failure::KeyMismatch, std::string("algorithm ") + alg_name(*alg) +
                                                  " does not fit key " + key_label + " (" +
                                                  key_type_name(key->type) + ")"};
    if (key->alg && *key->alg != *alg)
        return JwtError{Failure::KeyMismatch, "key " + key_label + " is for " + alg_name(*key->alg) +
                                                  ", but the token says " + alg_name(*alg)};

    // ---- signature, over the encoded header and payload as sent
    auto sig = base64url_decode(sig_b64);
    if (!sig)
        return malformed("signature: " + sig.error());
    if (sig->empty())
        return malformed("the signature is empty");
    if (key->type != KeyType::Rsa) {
        size_t want = key->type == KeyType::EcP256 ? 64 : 96;
        if (sig->size() != want)
            return JwtError{Failure::BadSignature, std::string("signature does not verify (") +
                                                       alg_name(*alg) + " signatures are " +
                                                       std::to_string(want) + " bytes, this one has " +
                                                       std::to_string(sig->size()) + ")"};
        auto der = ecdsa_raw_to_der(*sig);
        if (!der)
            return JwtError{Failure::BadSignature, "signature does not verify"};
        *sig = std::move(*der);
    }
    bool good = signature_verifies(*key, *alg, token.substr(0, d2), *sig);
    // Failed verifications leave entries on OpenSSL's per-thread error queue; a later
    // SSL_get_error() on this thread would read them as its own.
    ERR_clear_error();
    if (!good)
        return JwtError{Failure::BadSignature, "signature does not verify with key " + key_label + " (" +
                                                   alg_name(*alg) + ")"};

    // ---- claims
    auto payload_raw = base64url_decode(payload_b64);
    if (!payload_raw)
        return malformed("payload: " + payload_raw.error());
    auto claims = json_util::parse_object(
        std::string_view(reinterpret_cast<const char*>(payload_raw->data()), payload_raw->size()), err);
    if (!claims)
        return malformed("payload: " + err);

    Identity id;
    id.alg = *alg;
    id.kid = key->kid;

    auto iss = claims->find("iss");
    if (iss == claims->end() || !iss->is_string())
        return JwtError{Failure::MissingClaim, "token has no 'iss' (issuer) string claim"};
    id.issuer = iss->get<std::string>();
    if (std::find(opt.issuers.begin(), opt.issuers.end(), id.issuer) == opt.issuers.end())
        return JwtError{Failure::IssuerMismatch, "issuer mismatch: token is from " + quote_untrusted(id.issuer) +
                                                     ", " + expected_list(opt.issuers)};

    auto aud = claims->find("aud");
    if (aud == claims->end())
        return JwtError{Failure::MissingClaim, "token has no 'aud' (audience) claim"};
    std::vector<std::string> token_auds;
    if (aud->is_string()) {
        token_auds.push_back(aud->get<std::string>());
    } else if (aud->is_array()) {
        for (const auto& a : *aud) {
            if (!a.is_string())
                return malformed("'aud' array holds a value that is not a string");
            token_auds.push_back(a.get<std::string>());
        }
    } else {
        return malformed("'aud' is neither a string nor an array of strings");
    }
    for (const auto& a : token_auds)
        if (std::find(opt.audiences.begin(), opt.audiences.end(), a) != opt.audiences.end()) {
            id.audience = a;
            break;
        }
    if (id.audience.empty())
        return JwtError{Failure::AudienceMismatch,
                        "audience mismatch: token is for " +
                            (token_auds.empty() ? std::string("no audience") : join_quoted(token_auds)) + ", " +
                            expected_list(opt.audiences)};

    // Clamped so that no sum below can overflow, whatever the configuration says.
    const std::int64_t now = std::clamp<std::int64_t>(
        opt.now ? *opt.now : static_cast<std::int64_t>(std::time(nullptr)), 0, kMaxNumericDate);
    const std::int64_t leeway = std::clamp<std::int64_t>(opt.leeway.count(), 0, 86400);
    auto exp_it = claims->find("exp");
    if (exp_it == claims->end())
        return JwtError{Failure::MissingClaim, "token has no 'exp' (expiry) claim; tokens that never expire are refused"};
    auto exp = numeric_date(*exp_it);
    if (!exp)
        return malformed("'exp' is not a number");
    if (now >= *exp + leeway)
        return JwtError{Failure::Expired, "token expired " + describe_duration(now - *exp) + " ago (exp " +
                                              format_utc(*exp) + "); get a new one"};
    id.exp = *exp;
    if (auto it = claims->find("nbf"); it != claims->end()) {
        auto nbf = numeric_date(*it);
        if (!nbf)
            return malformed("'nbf' is not a number");
        if (now + leeway < *nbf)
            return JwtError{Failure::NotYetValid, "token not valid until " + format_utc(*nbf) + " (in " +
                                                      describe_duration(*nbf - now) +
                                                      "); is this server's clock right?"};
    }
    if (auto it = claims->find("iat"); it != claims->end()) {
        auto iat = numeric_date(*it);
        if (!iat)
            return malformed("'iat' is not a number");
        if (now + leeway < *iat)
            return JwtError{Failure::IssuedInFuture, "token issued in the future (iat " + format_utc(*iat) + ", " +
                                                         describe_duration(*iat - now) +
                                                         " ahead of this server's clock); is the clock right?"};
    }

    auto ident = claims->find(opt.identity_claim);
    if (ident == claims->end())
        return JwtError{Failure::MissingClaim,
                        "token has no " + quote_untrusted(opt.identity_claim) +
                            " claim (the configured identity claim; Azure AD v1 tokens carry 'upn', "
                            "v2 tokens 'preferred_username', Auth0 'sub' or a namespaced claim)"};
    if (!ident->is_string() || ident->get_ref<const std::string&>().empty())
        return malformed("identity claim " + quote_untrusted(opt.identity_claim) + " is not a non-empty string");
    id.identity = ident->get<std::string>();
    if (id.identity.size() > kMaxIdentityBytes || has_control_chars(id.identity))
        return malformed("identity claim " + quote_untrusted(opt.identity_claim) +
                         " is too long or contains control characters");
    if (auto it = claims->find("sub"); it != claims->end() && it->is_string())
        id.subject = it->get<std::string>();

    if (!opt.groups_claim.empty()) {
        auto groups = claims->find(opt.groups_claim);
        if (groups == claims->end()) {
            // Azure AD "groups overage": {"_claim_names": {"groups": "src1"}, ...}
            auto names = claims->find("_claim_names");
            id.groups_overage = names != claims->end() && names->is_object() && names->contains(opt.groups_claim);
        } else if (groups->is_string()) {
            id.groups.push_back(groups->get<std::string>());
        } else if (groups->is_array()) {
            if (groups->size() > kMaxGroups)
                return malformed("more than " + std::to_string(kMaxGroups) + " groups");
            for (const auto& g : *groups) {
                if (!g.is_string())
                    return malformed("groups claim " + quote_untrusted(opt.groups_claim) +
                                     " holds a value that is not a string");
                id.groups.push_back(g.get<std::string>());
            }
        } else {
            return malformed("groups claim " + quote_untrusted(opt.groups_claim) +
                             " is neither a string nor an array of strings");
        }
    }
    return id;
}

} // namespace

const char* alg_name(Alg a)
{
    switch (a) {
    case Alg::RS256:
        return "RS256";
    case Alg::RS384:
        return "RS384";
    case Alg::RS512:
        return "RS512";
    case Alg::PS256:
        return "PS256";
    case Alg::ES256:
        return "ES256";
    case Alg::ES384:
        return "ES384";
    }
    return "?";
}

const char* key_type_name(KeyType t)
{
    switch (t) {
    case KeyType::Rsa:
        return "an RSA key";
    case KeyType::EcP256:
        return "an EC P-256 key";
    case KeyType::EcP384:
        return "an EC P-384 key";
    }
    return "?";
}

Result<Jwks> Jwks::parse(std::string_view json_text)
{
    try {
        if (json_text.size() > kMaxJwksBytes)
            return Error{"JWKS too large (" + std::to_string(json_text.size()) + " bytes, limit " +
                         std::to_string(kMaxJwksBytes) + ")"};
        std::string err;
        auto doc = json_util::parse_object(json_text, err);
        if (!doc)
            return Error{"JWKS: " + err};
        auto keys = doc->find("keys");
        if (keys == doc->end() || !keys->is_array())
            return Error{"JWKS has no 'keys' array"};
        if (keys->size() > kMaxJwksKeys)
            return Error{"JWKS has " + std::to_string(keys->size()) + " keys, limit " +
                         std::to_string(kMaxJwksKeys)};

        Jwks out;
        size_t index = 0;
        for (const auto& k : *keys) {
            std::string label = "key #" + std::to_string(index++);
            auto skip = [&](const std::string& why) { out.notes_.push_back(label + " skipped: " + why); };
            if (!k.is_object()) {
                skip("not a JSON object");
                continue;
            }
            Key key;
            if (auto it = k.find("kid"); it != k.end()) {
                if (!it->is_string()) {
                    skip("'kid' is not a string");
                    continue;
                }
                key.kid = it->get<std::string>();
                label = "key " + quote_untrusted(key.kid);
            }
            if (auto it = k.find("use"); it != k.end() && !(it->is_string() && it->get_ref<const std::string&>() == "sig")) {
                skip("'use' is not \"sig\"");
                continue;
            }
            if (auto it = k.find("alg"); it != k.end()) {
                if (!it->is_string()) {
                    skip("'alg' is not a string");
                    continue;
                }
                key.alg = alg_from_name(it->get_ref<const std::string&>());
                if (!key.alg) {
                    skip("algorithm " + quote_untrusted(it->get_ref<const std::string&>(), 20) + " is not accepted (only " +
                         kAllowedAlgs + ")");
                    continue;
                }
            }
            auto kty = k.find("kty");
            if (kty == k.end() || !kty->is_string()) {
                skip("no 'kty'");
                continue;
            }
            const std::string& type = kty->get_ref<const std::string&>();
            ossl::PkeyPtr pkey;
            if (type == "RSA") {
                key.type = KeyType::Rsa;
                pkey = rsa_key(k, err);
            } else if (type == "EC") {
                pkey = ec_key(k, key.type, err);
            } else {
                skip("key type " + quote_untrusted(type, 20) + " is not supported (RSA, EC)");
                continue;
            }
            ERR_clear_error();
            if (!pkey) {
                skip(err);
                continue;
            }
            if (key.alg && !alg_fits(*key.alg, key.type)) {
                skip(std::string("its 'alg' ") + alg_name(*key.alg) + " does not fit " + key_type_name(key.type));
                continue;
            }
            if (!key.kid.empty() && out.find(key.kid)) {
                skip("a key with this kid came earlier; the first one is used");
                continue;
            }
            key.pkey = share(std::move(pkey));
            out.keys_.push_back(std::move(key));
        }
        if (out.keys_.empty()) {
            std::string why;
            for (const auto& n : out.notes_)
                why += "; " + n;
            return Error{"JWKS has no usable signing key" + why};
        }
        return out;
    } catch (const std::exception& e) {
        ERR_clear_error();
        return Error{std::string("JWKS: internal error: ") + e.what()};
    }
}

const Key* Jwks::find(std::string_view kid) const
{
    for (const auto& k : keys_)
        if (!k.kid.empty() && k.kid == kid)
            return &k;
    return nullptr;
}

std::variant<Identity, JwtError> verify(std::string_view token, const Jwks& jwks, const VerifyOptions& options)
{
    // No exception may reach the session: nlohmann's accessors throw on a type we failed
    // to check, and allocation can fail. Either becomes a refusal, never a crash.
    try {
        return verify_impl(token, jwks, options);
    } catch (const std::exception&) {
        ERR_clear_error();
        return JwtError{Failure::Malformed, "malformed token: internal error while reading it"};
    }
}

std::string format_utc(std::int64_t unix_seconds)
{
    std::time_t t = static_cast<std::time_t>(unix_seconds);
    std::tm tm{};
    char buf[64];
    if (!gmtime_r(&t, &tm) || std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        return std::to_string(unix_seconds);
    return buf;
}

std::string describe_duration(std::int64_t seconds)
{
    if (seconds < 0)
        seconds = -seconds;
    auto unit = [](std::int64_t n, const char* name) {
        return std::to_string(n) + " " + name + (n == 1 ? "" : "s");
    };
    if (seconds < 120)
        return unit(seconds, "second");
    if (seconds < 120 * 60)
        return unit(seconds / 60, "minute");
    if (seconds < 48 * 3600)
        return unit(seconds / 3600, "hour");
    return unit(seconds / 86400, "day");
}

} // namespace pgw::auth::jwt
