// OAUTHBEARER initial client response parsing and the error challenge (see oauthbearer.hh).
// Grammar from RFC 7628 section 3.1; checks as strict as PostgreSQL 18's auth-oauth.c.
#include "auth/oauthbearer.hh"

#include <nlohmann/json.hpp>

#include <optional>

namespace pgw::auth::oauthbearer {

namespace {

constexpr char kKvsep = '\x01';

ProtocolError malformed(std::string why)
{
    return ProtocolError{"malformed OAUTHBEARER message: " + std::move(why)};
}

bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

// RFC 7628: value = *(VCHAR / SP / HTAB / CR / LF)
bool is_value(std::string_view v)
{
    for (char ch : v) {
        auto c = static_cast<unsigned char>(ch);
        if (!((c >= 0x21 && c <= 0x7e) || c == ' ' || c == '\t' || c == '\r' || c == '\n'))
            return false;
    }
    return true;
}

// RFC 5801 saslname: "=2C" for ',' and "=3D" for '='; any other '=' is an error.
bool unescape_saslname(std::string_view in, std::string& out)
{
    out.clear();
    for (size_t i = 0; i < in.size(); ++i) {
        if (in[i] != '=') {
            out += in[i];
            continue;
        }
        std::string_view esc = in.substr(i + 1, 2);
        if (esc == "2C")
            out += ',';
        else if (esc == "3D")
            out += '=';
        else
            return false;
        i += 2;
    }
    return true;
}

// RFC 6750 section 2.1: credentials = "Bearer" 1*SP b64token, the scheme name compared
// without regard to case (RFC 7628 section 4). Returns the token, or empty if malformed.
std::string_view bearer_token(std::string_view auth)
{
    constexpr std::string_view scheme = "bearer ";
    if (auth.size() < scheme.size())
        return {};
    for (size_t i = 0; i < scheme.size(); ++i) {
        char c = auth[i];
        if (c >= 'A' && c <= 'Z')
            c = static_cast<char>(c - 'A' + 'a');
        if (c != scheme[i])
            return {};
    }
    std::string_view token = auth.substr(scheme.size());
    while (!token.empty() && token.front() == ' ')
        token.remove_prefix(1);
    // b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
    size_t i = 0;
    while (i < token.size() && (is_alpha(token[i]) || (token[i] >= '0' && token[i] <= '9') ||
                                std::string_view("-._~+/").find(token[i]) != std::string_view::npos))
        ++i;
    if (i == 0)
        return {};
    while (i < token.size() && token[i] == '=')
        ++i;
    return i == token.size() ? token : std::string_view{};
}

} // namespace

std::variant<ClientResponse, ProtocolError> parse_initial_response(std::string_view message)
{
    if (message.empty())
        return malformed("the message is empty");
    if (message.size() > kMaxMessage)
        return malformed("longer than " + std::to_string(kMaxMessage) + " bytes");
    if (message.find('\0') != std::string_view::npos)
        return malformed("NUL byte in the message");

    ClientResponse out;
    size_t pos = 0;
    // gs2-cbind-flag: OAUTHBEARER defines no channel binding, so "p=" is an error; "y"
    // is accepted as PostgreSQL does, in case a future spec defines one.
    if (message[0] == 'p')
        return malformed("the client sent channel binding data, which OAUTHBEARER does not define");
    if ((message[0] != 'n' && message[0] != 'y') || message.size() < 2 || message[1] != ',')
        return malformed("unexpected channel-binding flag");
    pos = 2;
    if (message.substr(pos, 2) == "a=") {
        size_t comma = message.find(',', pos);
        if (comma == std::string_view::npos)
            return malformed("unterminated authorization identity");
        if (!unescape_saslname(message.substr(pos + 2, comma - pos - 2), out.authzid) || out.authzid.empty())
            return malformed("bad authorization identity");
        pos = comma;
    }
    if (pos >= message.size() || message[pos] != ',')
        return malformed("comma expected after the gs2 header");
    ++pos;
    if (pos >= message.size() || message[pos] != kKvsep)
        return malformed("key-value separator expected after the gs2 header");
    ++pos;

    // kvpair = key "=" value kvsep; the list ends with an empty pair (a second kvsep).
    std::optional<std::string_view> auth;
    for (;;) {
        size_t end = message.find(kKvsep, pos);
        if (end == std::string_view::npos)
            return malformed("unterminated key/value pair, or no final terminator");
        if (end == pos) {
            if (end + 1 != message.size())
                return malformed("additional data after the final terminator");
            break;
        }
        std::string_view pair = message.substr(pos, end - pos);
        size_t eq = pair.find('=');
        if (eq == std::string_view::npos)
            return malformed("a key without a value");
        std::string_view key = pair.substr(0, eq);
        std::string_view value = pair.substr(eq + 1);
        if (key.empty())
            return malformed("an empty key name");
        for (char c : key)
            if (!is_alpha(c))
                return malformed("an invalid key name");
        if (!is_value(value))
            return malformed("an invalid value");
        if (key == "auth") {
            if (auth)
                return malformed("more than one auth value");
            auth = value;
        }
        // host, port and unknown keys are ignored, as RFC 7628 section 3.1 requires.
        pos = end + 1;
    }
    if (!auth)
        return malformed("no auth value");
    if (auth->empty()) {
        out.kind = ClientResponse::Kind::Discovery;
        return out;
    }
    std::string_view token = bearer_token(*auth);
    if (token.empty()) {
        out.kind = ClientResponse::Kind::BadToken;
        return out;
    }
    out.kind = ClientResponse::Kind::Token;
    out.token = std::string(token);
    return out;
}

std::string error_challenge(std::string_view issuer, std::string_view scope)
{
    std::string url(issuer);
    if (url.find("/.well-known/") == std::string::npos) {
        if (!url.empty() && url.back() == '/')
            url.pop_back();
        url += "/.well-known/openid-configuration";
    }
    // ordered_json keeps PostgreSQL's member order, which makes the output easy to compare.
    nlohmann::ordered_json j;
    j["status"] = "invalid_token";
    j["openid-configuration"] = url;
    if (!scope.empty())
        j["scope"] = std::string(scope);
    // dump() throws on invalid UTF-8 unless told otherwise; configuration is not trusted
    // to be valid UTF-8, and this must not throw.
    return j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

} // namespace pgw::auth::oauthbearer
