// Hostile-input JSON parsing and message quoting for src/auth/ (see json_util.hh).
// nlohmann's parser is iterative, but a nesting cap keeps every later walk shallow too.
#include "auth/json_util.hh"

#include <set>
#include <vector>

namespace pgw::auth::json_util {

namespace {

// Deepest nesting of arrays and objects, counted outside strings; stops early past `cap`.
int nesting_depth(std::string_view text, int cap)
{
    int depth = 0, deepest = 0;
    bool in_string = false, escaped = false;
    for (char c : text) {
        if (in_string) {
            if (escaped)
                escaped = false;
            else if (c == '\\')
                escaped = true;
            else if (c == '"')
                in_string = false;
            continue;
        }
        if (c == '"') {
            in_string = true;
        } else if (c == '{' || c == '[') {
            if (++depth > deepest && (deepest = depth) > cap)
                return deepest;
        } else if (c == '}' || c == ']') {
            --depth;
        }
    }
    return deepest;
}

} // namespace

std::optional<json> parse_object(std::string_view text, std::string& error)
{
    if (nesting_depth(text, kMaxDepth) > kMaxDepth) {
        error = "JSON nested deeper than " + std::to_string(kMaxDepth) + " levels";
        return std::nullopt;
    }
    // nlohmann keeps the last of duplicate keys; other parsers keep the first. A token
    // that two verifiers read differently is an attack on one of them, so refuse it.
    std::vector<std::set<std::string>> seen;
    bool duplicate = false;
    json::parser_callback_t cb = [&](int, json::parse_event_t event, json& parsed) {
        switch (event) {
        case json::parse_event_t::object_start:
            seen.emplace_back();
            break;
        case json::parse_event_t::object_end:
            if (!seen.empty())
                seen.pop_back();
            break;
        case json::parse_event_t::key:
            if (!seen.empty() && parsed.is_string() && !seen.back().insert(parsed.get<std::string>()).second)
                duplicate = true;
            break;
        default:
            break;
        }
        return true;
    };
    json j = json::parse(text.begin(), text.end(), cb, /*allow_exceptions=*/false);
    if (j.is_discarded()) {
        error = "not valid JSON";
        return std::nullopt;
    }
    if (duplicate) {
        error = "JSON object with a duplicate key";
        return std::nullopt;
    }
    if (!j.is_object()) {
        error = "JSON is not an object";
        return std::nullopt;
    }
    return j;
}

std::string quote_untrusted(std::string_view s, size_t max)
{
    bool cut = false;
    if (s.size() > max) {
        size_t end = max;
        // Back up over UTF-8 continuation bytes so a character is never split.
        while (end > 0 && (static_cast<unsigned char>(s[end]) & 0xc0) == 0x80)
            --end;
        s = s.substr(0, end);
        cut = true;
    }
    std::string out = "'";
    for (size_t i = 0; i < s.size(); ++i) {
        auto c = static_cast<unsigned char>(s[i]);
        // C1 controls (U+0080-U+009F, UTF-8 C2 80-9F) include CSI, an escape to terminals.
        bool c1 = c == 0xc2 && i + 1 < s.size() && static_cast<unsigned char>(s[i + 1]) >= 0x80 &&
                  static_cast<unsigned char>(s[i + 1]) <= 0x9f;
        if (c1)
            ++i;
        out += (c < 0x20 || c == 0x7f || c1) ? '?' : s[i];
    }
    if (cut)
        out += "...";
    out += "'";
    return out;
}

} // namespace pgw::auth::json_util
