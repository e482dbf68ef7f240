// libFuzzer target for the INI loader (inih + our handler + libpq's conninfo check):
// any text either loads into a Config that honours the options table, or gives an error.
#include "config/config.hh"
#include "config/options.hh"
#include "config/pool_keys.hh"
#include "fuzz_check.hh"

#include <cstdint>
#include <string>

namespace cfg = pgw::config;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    const std::string text(reinterpret_cast<const char*>(data), size);
    auto r = cfg::load_string(text, "fuzz.ini");
    if (!r.ok()) {
        FUZZ_CHECK(r.error().rfind("fuzz.ini", 0) == 0);
        return 0;
    }
    const cfg::Config& c = r.value();
    FUZZ_CHECK(!c.databases.empty());
    for (const auto& o : cfg::options()) {
        if (o.int_field) {
            long v = c.*(o.int_field);
            FUZZ_CHECK(v >= o.min && v <= o.max);
        } else if (o.type == cfg::OptionType::Enum) {
            const std::string& v = c.*(o.str_field);
            const std::string allowed = "|" + std::string(o.enum_values) + "|";
            FUZZ_CHECK(!v.empty() && allowed.find("|" + v + "|") != std::string::npos);
        }
    }
    for (const auto& d : c.databases) {
        const cfg::DatabaseEntry* e = c.find_database(d.name);
        FUZZ_CHECK(e && e->name == d.name);
        FUZZ_CHECK(d.line >= 1);
        // The pool keys are gone from what libpq sees, and a second split changes nothing.
        auto again = cfg::split_pool_keys(d.conninfo);
        FUZZ_CHECK(again.ok() && !again->pool.pooled && again->conninfo == d.conninfo);
        FUZZ_CHECK(!d.pool.pooled || (c.pool_size_for(d) >= 1 && c.min_pool_size_for(d) <= c.pool_size_for(d)));
    }
    FUZZ_CHECK(!c.listen_addresses().empty() || !c.unix_socket_dir.empty());
    for (const auto& a : c.listen_addresses())
        FUZZ_CHECK(!a.empty() && a.find_first_of(", \t") == std::string::npos);
    return 0;
}
