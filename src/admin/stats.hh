// Counters and gauges from the shared session table, named once for both the
// Prometheus endpoint and the admin console's SHOW STATS.
#pragma once

#include "ipc/session_table.hh"

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace pgw::admin {

struct Sample {
    std::string labels;  // Prometheus label set without braces: state="idle"; may be empty
    double value = 0;
};

struct Family {
    std::string name;  // pgwicket_...
    std::string type;  // counter, gauge or histogram
    std::string help;
    std::vector<Sample> samples;
    std::vector<std::string> suffixes;  // per sample: "" or, in a histogram, "_bucket", "_sum", "_count"
};

std::vector<Family> collect(const ipc::SessionTable& table);

// A label value as the text format wants it between its double quotes: backslash,
// double quote and newline escaped; bytes that are not UTF-8 replaced by U+FFFD.
std::string label_value(std::string_view v);

// The text exposition format (version 0.0.4).
std::string render_prometheus(const std::vector<Family>& families);

} // namespace pgw::admin
