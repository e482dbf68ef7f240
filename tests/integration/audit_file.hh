// Reading the audit file in integration tests: one JSON object per line, and the
// lines that are not (torn, interleaved or not JSON), for the audit and caps tests.
#pragma once

#include "harness.hh"

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace pgw::it {

struct AuditLines {
    std::vector<nlohmann::json> records;  // lines that are one JSON object each, in file order
    std::vector<std::string> bad;         // the others: torn, interleaved or not JSON
    bool ends_with_newline = true;
};

inline AuditLines read_audit(const std::string& path)
{
    AuditLines out;
    const std::string all = read_file(path);
    out.ends_with_newline = all.empty() || all.back() == '\n';
    size_t at = 0;
    while (at < all.size()) {
        size_t nl = all.find('\n', at);
        std::string line = all.substr(at, nl == std::string::npos ? std::string::npos : nl - at);
        at = nl == std::string::npos ? all.size() : nl + 1;
        nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
        if (j.is_discarded() || !j.is_object())
            out.bad.push_back(line);
        else
            out.records.push_back(std::move(j));
    }
    return out;
}

// A field as text for comparisons and messages: "<missing>", "<null>", a string's value, or
// the JSON of anything else (numbers, booleans).
inline std::string text(const nlohmann::json& r, const char* key)
{
    auto it = r.find(key);
    if (it == r.end())
        return "<missing>";
    if (it->is_null())
        return "<null>";
    if (it->is_string())
        return it->get<std::string>();
    return it->dump();
}

} // namespace pgw::it
