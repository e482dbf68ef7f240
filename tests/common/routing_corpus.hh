// The read-routing corpus (tests/data/routing_corpus.txt), for the unit test of the
// verdict and the integration test on a real cluster.
#pragma once

#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace pgw::test {

struct RoutingCase {
    std::string where;  // "standby", "primary" or "pin"
    bool extended = false;  // also run through Parse/Bind/Execute
    std::string sql;
    int line = 0;
};

inline std::vector<RoutingCase> routing_corpus()
{
    const char* dir = std::getenv("top_srcdir");
    const std::string path = std::string(dir ? dir : ".") + "/tests/data/routing_corpus.txt";
    std::ifstream in(path);
    if (!in)
        throw std::runtime_error("cannot open " + path + " (set top_srcdir to the source tree)");
    std::vector<RoutingCase> out;
    std::string line;
    for (int n = 1; std::getline(in, line); ++n) {
        if (line.empty() || line[0] == '#')
            continue;
        const size_t a = line.find('\t'), b = a == std::string::npos ? a : line.find('\t', a + 1);
        if (b == std::string::npos)
            throw std::runtime_error(path + ":" + std::to_string(n) + ": expected <where> TAB <protocols> TAB <sql>");
        RoutingCase c{line.substr(0, a), line.substr(a + 1, b - a - 1) == "both", line.substr(b + 1), n};
        if (c.where != "standby" && c.where != "primary" && c.where != "pin")
            throw std::runtime_error(path + ":" + std::to_string(n) + ": unknown place \"" + c.where + "\"");
        out.push_back(std::move(c));
    }
    return out;
}

} // namespace pgw::test
