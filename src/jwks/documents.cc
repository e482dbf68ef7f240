// Decoders of the identity provider's documents (see documents.hh).
#include "jwks/documents.hh"

#include "auth/json_util.hh"
#include "auth/jwt.hh"

#include <algorithm>
#include <cctype>

namespace pgw::jwks {

using auth::json_util::json;
using auth::json_util::quote_untrusted;

bool iequals_prefix(std::string_view s, std::string_view prefix)
{
    if (s.size() < prefix.size())
        return false;
    for (size_t i = 0; i < prefix.size(); ++i)
        if (std::tolower(static_cast<unsigned char>(s[i])) != prefix[i])
            return false;
    return true;
}

std::string discovery_url(std::string_view issuer)
{
    std::string base(issuer);
    while (!base.empty() && base.back() == '/')
        base.pop_back();
    return base + "/.well-known/openid-configuration";
}

Result<std::string> parse_discovery(std::string_view text, std::string_view issuer)
{
    std::string err;
    auto doc = auth::json_util::parse_object(text, err);
    if (!doc)
        return Error{"discovery document: " + err};
    auto iss = doc->find("issuer");
    if (iss == doc->end() || !iss->is_string())
        return Error{"discovery document has no \"issuer\""};
    if (iss->get_ref<const std::string&>() != issuer)
        return Error{"discovery document names issuer " + quote_untrusted(iss->get_ref<const std::string&>()) +
                     ", not the configured " + quote_untrusted(issuer) +
                     " (they must be equal, trailing slash included)"};
    auto uri = doc->find("jwks_uri");
    if (uri == doc->end() || !uri->is_string())
        return Error{"discovery document has no \"jwks_uri\""};
    const std::string& u = uri->get_ref<const std::string&>();
    if (u.rfind("https://", 0) != 0 || u.size() > 2048 ||
        std::any_of(u.begin(), u.end(), [](char ch) { return static_cast<unsigned char>(ch) <= ' '; }))
        return Error{"discovery document's jwks_uri " + quote_untrusted(u) + " is not an https:// address"};
    return u;
}

void parse_cache_control(std::string_view value, std::optional<long>& max_age, bool& no_cache)
{
    size_t pos = 0;
    while (pos < value.size()) {
        size_t end = value.find(',', pos);
        if (end == std::string_view::npos)
            end = value.size();
        std::string_view item = value.substr(pos, end - pos);
        pos = end + 1;
        while (!item.empty() && std::isspace(static_cast<unsigned char>(item.front())))
            item.remove_prefix(1);
        while (!item.empty() && std::isspace(static_cast<unsigned char>(item.back())))
            item.remove_suffix(1);
        if (iequals_prefix(item, "no-cache") || iequals_prefix(item, "no-store")) {
            no_cache = true;
        } else if (iequals_prefix(item, "max-age=")) {
            std::string_view v = item.substr(8);
            if (v.size() >= 2 && v.front() == '"' && v.back() == '"')
                v = v.substr(1, v.size() - 2);
            if (v.empty() || v.size() > 12)
                continue;
            long seconds = 0;
            bool digits = true;
            for (char ch : v) {
                if (ch < '0' || ch > '9') {
                    digits = false;
                    break;
                }
                seconds = seconds * 10 + (ch - '0');
            }
            if (digits)
                max_age = seconds;
        }
    }
}

std::chrono::seconds lifetime_from(std::optional<long> max_age, bool no_cache)
{
    if (no_cache)
        return kMinLifetime;
    if (!max_age)
        return kDefaultLifetime;
    return std::clamp(std::chrono::seconds(*max_age), kMinLifetime, kMaxLifetime);
}

Result<KeySet> merge_documents(const std::vector<std::pair<std::string, std::string>>& source_and_text)
{
    KeySet set;
    json merged = json::array();
    for (const auto& [source, text] : source_and_text) {
        std::string err;
        auto doc = auth::json_util::parse_object(text, err);
        if (!doc)
            return Error{source + ": not a JWKS: " + err};
        auto keys = doc->find("keys");
        if (keys == doc->end() || !keys->is_array())
            return Error{source + ": not a JWKS: no \"keys\" array"};
        for (const auto& k : *keys)
            if (std::find(merged.begin(), merged.end(), k) == merged.end())
                merged.push_back(k);
        set.sources.push_back(source);
    }
    set.jwks_json = json{{"keys", merged}}.dump();
    auto parsed = auth::jwt::Jwks::parse(set.jwks_json);
    if (!parsed) {
        std::string from;
        for (const auto& s : set.sources)
            from += (from.empty() ? "" : ", ") + s;
        return Error{from + ": " + parsed.error()};
    }
    for (const auto& k : parsed->keys())
        set.kids.push_back(k.kid);
    set.notes = parsed->notes();
    return set;
}

} // namespace pgw::jwks
