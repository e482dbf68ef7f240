// Differential wire transparency: PostgreSQL's own regression scripts (../shared/compat) run
// directly twice and once through pgwicket; the proxied psql output must equal the direct one.
#include "harness.hh"

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <sstream>

using namespace pgw::it;
namespace fs = std::filesystem;
namespace utf = boost::unit_test;

namespace {

// Chosen by measuring all 213 scripts on a 2-core machine (three runs each, a fresh database
// per run; total about 11 minutes): the list below takes about 3 minutes. Run others with
// PGWICKET_COMPAT_SCRIPTS=all or =name,name,...
//
// Left out, with the reason:
//   alter_table   volatile: two direct runs differ (it prints OIDs and relfilenodes).
//   triggers      volatile: two direct runs differ. psql prefixes a NOTICE raised during
//                 COPY FROM STDIN with the input line it is reading when libpq happens to parse
//                 the NOTICE, which depends on packet timing (seen at lines 342 vs 345 and
//                 1554 vs 1557, both directly and through pgwicket).
//   join_hash (55 s), partition_prune (15 s), publication (14 s), regex (12 s),
//   privileges (11 s), stats_ext (9 s): too slow for the budget (three runs).
//   the remaining 141 scripts: identical through pgwicket when measured, left out only to
//   keep the whole binary within its time budget; the ones kept cover each protocol feature
//   (COPY in/out, notices, NOTIFY, portals/cursors, prepared statements, two-phase commit,
//   large objects, errors with every field, psql's own \ commands).
// clang-format off
const std::vector<std::string> kChosen = {
    // the starting set
    "boolean", "char", "int2", "int4", "int8", "float4", "float8", "numeric", "text", "strings",
    "case", "select", "select_into", "insert", "update", "delete", "union", "join", "subselect",
    "aggregates", "arrays", "json", "jsonb", "copy2", "transactions", "prepare", "portals",
    "plpgsql", "with", "window", "errors", "rowtypes", "domain", "create_view", "async",
    // more protocol surface for little time
    "copy", "copyselect", "copydml", "portals_p2", "prepared_xacts", "psql", "psql_crosstab",
    "largeobject", "advisory_lock", "guc", "returning", "insert_conflict", "merge", "rangefuncs",
    "sequence", "truncate", "temp", "limit", "explain", "enum", "date", "interval", "timestamptz",
    "namespace", "misc_functions", "event_trigger", "select_distinct", "unicode", "json_encoding",
};
// clang-format on

std::string corpus_dir() { return env().top_srcdir + "/../shared/compat/pg15-regress"; }

std::vector<std::string> selected_scripts()
{
    const char* over = std::getenv("PGWICKET_COMPAT_SCRIPTS");
    if (!over || !*over)
        return kChosen;
    std::vector<std::string> out;
    std::string spec = over;
    if (spec == "all") {
        // The corpus path is only known once the environment exists; top_srcdir is enough.
        const char* src = std::getenv("top_srcdir");
        std::string dir = std::string(src ? src : ".") + "/../shared/compat/pg15-regress";
        std::error_code ec;
        for (const auto& e : fs::directory_iterator(dir, ec))
            if (e.path().extension() == ".sql")
                out.push_back(e.path().stem().string());
        std::sort(out.begin(), out.end());
        return out;
    }
    std::istringstream in(spec);
    std::string name;
    while (std::getline(in, name, ','))
        if (!name.empty())
            out.push_back(name);
    return out;
}

void recreate_regression_db()
{
    direct_exec("DROP DATABASE IF EXISTS regression WITH (FORCE)");
    direct_exec("CREATE DATABASE regression TEMPLATE template0");
}

RunResult run_script(const std::string& conninfo, const std::string& file)
{
    RunOptions o;
    // PGTZ/PGDATESTYLE are unset by client_env(), so both runs use the server's defaults.
    o.env = client_env();
    o.timeout_s = 180;
    return run(
        {env().bin("psql"), "-X", "-a", "-q", "-v", "ON_ERROR_STOP=0", "-d", conninfo, "-f", file},
        o);
}

void compat_case(const std::string& script)
{
    const std::string file = corpus_dir() + "/" + script + ".sql";
    if (!fs::exists(corpus_dir())) {
        BOOST_TEST_MESSAGE("compat: " << corpus_dir() << " is absent (e.g. make distcheck); "
                                      << script << " skipped");
        return;
    }
    BOOST_TEST_REQUIRE(fs::exists(file), file << " is missing from the corpus");
    auto t0 = std::chrono::steady_clock::now();
    recreate_regression_db();
    RunResult d1 = run_script(env().direct("regression"), file);
    recreate_regression_db();
    RunResult d2 = run_script(env().direct("regression"), file);
    recreate_regression_db();
    RunResult p = run_script(env().proxied("regression"), file);
    direct_exec("DROP DATABASE IF EXISTS regression WITH (FORCE)");
    auto secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    BOOST_TEST_REQUIRE(!d1.timed_out, script << ": direct run timed out");
    if (d1.out != d2.out || d1.status() != d2.status()) {
        BOOST_TEST_MESSAGE("compat " << script << ": VOLATILE (two direct runs differ), skipped:\n"
                                     << diff(d1.out, d2.out, 20, "direct1", "direct2"));
        return;
    }
    check_same_output("compat " + script, d2, p);
    BOOST_TEST_MESSAGE("compat " << script << ": " << (d2.out == p.out ? "same" : "DIFFERENT")
                                 << " (" << d2.out.size() << " bytes of psql output, " << secs
                                 << " s for three runs)");
}

// One named test case per script, so a failure names the script and --run_test can pick one.
struct RegisterCompatCases {
    RegisterCompatCases()
    {
        auto* suite = BOOST_TEST_SUITE("compat");
        for (const auto& script : selected_scripts()) {
            std::string name = script;
            for (char& ch : name)
                if (ch == '.' || ch == '-')
                    ch = '_';
            suite->add(
                utf::make_test_case([script] { compat_case(script); }, name, __FILE__, __LINE__));
        }
        utf::framework::master_test_suite().add(suite);
    }
} register_compat_cases;

}  // namespace
