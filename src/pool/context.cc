// SessionContext as length-prefixed fields: a count or a string is a 32-bit length
// (host order: both ends are the same binary) followed by its bytes.
#include "pool/context.hh"

#include <cstring>

namespace pgw::pool {
namespace {

constexpr std::uint32_t kContextTag = 0x50474359;  // "PGCY" (with relayed_by)

void put_u32(std::string& out, std::uint32_t v) { out.append(reinterpret_cast<const char*>(&v), sizeof v); }
void put_str(std::string& out, std::string_view s)
{
    put_u32(out, std::uint32_t(s.size()));
    out.append(s);
}

class Reader {
public:
    explicit Reader(std::string_view in) : in_(in) {}
    bool u32(std::uint32_t& v)
    {
        if (in_.size() < sizeof v)
            return false;
        std::memcpy(&v, in_.data(), sizeof v);
        in_.remove_prefix(sizeof v);
        return true;
    }
    bool str(std::string& s)
    {
        std::uint32_t n;
        if (!u32(n) || n > in_.size())
            return false;
        s.assign(in_.substr(0, n));
        in_.remove_prefix(n);
        return true;
    }
    bool done() const { return in_.empty(); }

private:
    std::string_view in_;
};

} // namespace

std::string encode(const SessionContext& c)
{
    std::string out;
    put_u32(out, kContextTag);
    for (const std::string* s : {&c.route, &c.entry, &c.user, &c.database, &c.identity, &c.rule_policy})
        put_str(out, *s);
    put_u32(out, c.method);
    put_u32(out, c.secret_length);
    put_u32(out, c.protocol_minor);
    put_u32(out, c.relayed_by);
    put_u32(out, std::uint32_t(c.groups.size()));
    for (const auto& g : c.groups)
        put_str(out, g);
    put_u32(out, std::uint32_t(c.startup.size()));
    for (const auto& [k, v] : c.startup) {
        put_str(out, k);
        put_str(out, v);
    }
    return out;
}

Result<SessionContext> decode_context(std::string_view bytes)
{
    const Error bad{"malformed session context"};
    Reader r(bytes);
    SessionContext c;
    std::uint32_t tag = 0, minor = 0, n = 0;
    if (!r.u32(tag) || tag != kContextTag)
        return bad;
    for (std::string* s : {&c.route, &c.entry, &c.user, &c.database, &c.identity, &c.rule_policy})
        if (!r.str(*s))
            return bad;
    if (!r.u32(c.method) || !r.u32(c.secret_length) || !r.u32(minor) || minor > 0xffff || !r.u32(c.relayed_by))
        return bad;
    c.protocol_minor = std::uint16_t(minor);
    if (!r.u32(n) || n > bytes.size())
        return bad;
    c.groups.resize(n);
    for (auto& g : c.groups)
        if (!r.str(g))
            return bad;
    if (!r.u32(n) || n > bytes.size())
        return bad;
    c.startup.resize(n);
    for (auto& [k, v] : c.startup)
        if (!r.str(k) || !r.str(v))
            return bad;
    if (!r.done() || c.user.empty())
        return bad;
    return c;
}

} // namespace pgw::pool

#include <openssl/evp.h>

#include <algorithm>

namespace pgw::pool {

std::string route_key(const std::string& entry, const upstream::Params& params)
{
    upstream::Params sorted;
    std::string user, dbname;
    for (const auto& [k, v] : params) {
        if (k == "application_name")
            continue;
        if (k == "user")
            user = v;
        if (k == "dbname")
            dbname = v;
        sorted.emplace_back(k, v);
    }
    std::sort(sorted.begin(), sorted.end());
    std::string flat;
    for (const auto& [k, v] : sorted) {
        put_str(flat, k);
        put_str(flat, v);
    }
    // Fetched once per process (an implicit fetch looks the algorithm up in the
    // provider's tables at every call; this runs for every pooled session).
    static EVP_MD* const sha256 = EVP_MD_fetch(nullptr, "SHA256", nullptr);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    EVP_Digest(flat.data(), flat.size(), md, &md_len, sha256 ? sha256 : EVP_sha256(), nullptr);
    static const char hex[] = "0123456789abcdef";
    std::string digest;
    for (unsigned i = 0; i < 8 && i < md_len; ++i) {
        digest.push_back(hex[md[i] >> 4]);
        digest.push_back(hex[md[i] & 15]);
    }
    return entry + "/" + user + "/" + dbname + "/" + digest;
}

std::string route_label(const std::string& route)
{
    auto slash = route.rfind('/');
    return slash == std::string::npos ? route : route.substr(0, slash);
}

} // namespace pgw::pool
