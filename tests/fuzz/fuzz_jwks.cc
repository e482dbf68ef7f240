// libFuzzer target for the identity provider's documents (src/jwks/documents.cc): the
// discovery document, Cache-Control values and merged JWKS documents, with the
// properties each promises.
#include "jwks/documents.hh"
#include "auth/jwt.hh"
#include "fuzz_check.hh"

#include <cstdint>
#include <string>
#include <string_view>

namespace j = pgw::jwks;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, size_t size)
{
    if (size == 0)
        return 0;
    const std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);
    switch (data[0] % 3) {
    case 0: {
        // An accepted discovery document gives an https address without blanks.
        auto r = j::parse_discovery(in, "https://idp.example/");
        if (r.ok()) {
            FUZZ_CHECK(r.value().rfind("https://", 0) == 0);
            FUZZ_CHECK(r.value().find(' ') == std::string::npos);
        }
        break;
    }
    case 1: {
        // Whatever the header says, the lifetime stays within its bounds.
        std::optional<long> max_age;
        bool no_cache = false;
        j::parse_cache_control(in, max_age, no_cache);
        const auto life = j::lifetime_from(max_age, no_cache);
        FUZZ_CHECK(life >= j::kMinLifetime && life <= j::kMaxLifetime);
        break;
    }
    case 2: {
        // Two documents split at the first NUL; a merged set has a usable key and is a
        // JWKS that parses again to the same key ids.
        const size_t nul = in.find('\0');
        std::vector<std::pair<std::string, std::string>> docs = {{"https://a/keys", std::string(in.substr(0, nul))}};
        if (nul != std::string_view::npos)
            docs.emplace_back("https://b/keys", std::string(in.substr(nul + 1)));
        auto r = j::merge_documents(docs);
        if (r.ok()) {
            FUZZ_CHECK(!r.value().kids.empty());
            auto again = pgw::auth::jwt::Jwks::parse(r.value().jwks_json);
            FUZZ_CHECK(again.ok());
            FUZZ_CHECK(again.value().keys().size() == r.value().kids.size());
        }
        break;
    }
    }
    return 0;
}
