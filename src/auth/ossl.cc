// One-shot SHA-256 and HMAC-SHA-256 over OpenSSL (see ossl.hh).
// SHA256() and HMAC() are the one-shot calls OpenSSL 3 keeps undeprecated.
#include "auth/ossl.hh"

#include <openssl/hmac.h>
#include <openssl/sha.h>

#include <stdexcept>

namespace pgw::auth::ossl {

Sha256 sha256(std::span<const std::uint8_t> data)
{
    Sha256 out{};
    if (!SHA256(data.data(), data.size(), out.data()))
        throw std::runtime_error("SHA256 failed");
    return out;
}

Sha256 hmac_sha256(std::span<const std::uint8_t> key, std::span<const std::uint8_t> data)
{
    Sha256 out{};
    unsigned int len = 0;
    // HMAC() takes an int key length; keys here are 32-byte SCRAM keys or test secrets.
    if (key.size() > 0x7fffffff ||
        !HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), data.data(), data.size(),
              out.data(), &len) ||
        len != out.size())
        throw std::runtime_error("HMAC-SHA-256 failed");
    return out;
}

} // namespace pgw::auth::ossl
