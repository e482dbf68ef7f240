// Hostile-input JSON parsing for src/auth/: nlohmann's non-throwing parse behind a nesting
// limit and a duplicate-key check, plus quoting of untrusted strings for messages.
#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <string_view>

namespace pgw::auth::json_util {

using nlohmann::json;

inline constexpr int kMaxDepth = 16;

// Parses `text` into a JSON object. On failure returns nullopt and sets `error` to a
// reason that quotes nothing from the text. Never throws (short of memory exhaustion).
std::optional<json> parse_object(std::string_view text, std::string& error);

// `s` in single quotes for a message: control characters become '?', and anything past
// `max` bytes becomes "..." (cut on a UTF-8 boundary). Claim values come from the
// token's author and end up in logs, so no newline or escape sequence gets through.
std::string quote_untrusted(std::string_view s, size_t max = 80);

} // namespace pgw::auth::json_util
