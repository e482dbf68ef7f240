// pgbench through pgwicket: initialization (COPY), the simple, extended and prepared query
// protocols under concurrency, read-only load, and a new session per transaction.
#include "harness.hh"

#include <boost/test/unit_test.hpp>

#include <regex>
#include <sstream>

using namespace pgw::it;

namespace {

RunResult pgbench(const std::vector<std::string>& args)
{
    std::vector<std::string> argv = {env().bin("pgbench"),
                                     "-h",
                                     "127.0.0.1",
                                     "-p",
                                     std::to_string(env().proxy->port()),
                                     "-U",
                                     "postgres"};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.push_back("bench");
    RunOptions o;
    o.env = client_env({{"PGSSLMODE", "disable"}});
    o.timeout_s = 180;
    return run(argv, o);
}

// `pgbench -i -s 1` through the proxy into a fresh database; done once per binary run, by
// whichever test needs it first (tests run in random order).
void ensure_initialized()
{
    static bool done = false;
    if (done)
        return;
    direct_exec("DROP DATABASE IF EXISTS bench WITH (FORCE)");
    direct_exec("CREATE DATABASE bench");
    RunResult r = pgbench({"-i", "-s", "1", "-q"});
    BOOST_TEST_REQUIRE(r.ok(), "pgbench -i failed (" << r.status() << "):\n" << excerpt(r.out));
    BOOST_TEST_REQUIRE(direct_scalar("SELECT count(*) FROM pgbench_accounts", "bench") == "100000");
    done = true;
}

long long field(const std::string& out, const std::string& pattern)
{
    std::smatch m;
    if (!std::regex_search(out, m, std::regex(pattern)))
        return -1;
    return std::stoll(m[1]);
}

// Runs pgbench and checks it finished every transaction without a failure.
void check_run(const std::vector<std::string>& args, long long expected)
{
    ensure_initialized();
    RunResult r = pgbench(args);
    BOOST_TEST_INFO("pgbench output:\n" << excerpt(r.out));
    BOOST_TEST(r.exit_code == 0, r.status());
    BOOST_TEST(field(r.out, "number of transactions actually processed: (\\d+)/") == expected);
    BOOST_TEST(field(r.out, "number of failed transactions: (\\d+)") == 0);
    std::string line = "pgbench";
    for (const auto& arg : args)
        line += " " + arg;
    BOOST_TEST_MESSAGE(line << ": "
                            << field(r.out, "number of transactions actually processed: (\\d+)/")
                            << " transactions");
}

}  // namespace

BOOST_AUTO_TEST_SUITE(pgbench_load)

BOOST_AUTO_TEST_CASE(protocol_simple)
{
    check_run({"-M", "simple", "-c", "4", "-j", "2", "-t", "200"}, 800);
}

BOOST_AUTO_TEST_CASE(protocol_extended)
{
    check_run({"-M", "extended", "-c", "4", "-j", "2", "-t", "200"}, 800);
}

BOOST_AUTO_TEST_CASE(protocol_prepared)
{
    check_run({"-M", "prepared", "-c", "4", "-j", "2", "-t", "200"}, 800);
}

BOOST_AUTO_TEST_CASE(select_only)
{
    check_run({"-S", "-M", "extended", "-c", "8", "-t", "100"}, 800);
    check_run({"-S", "-c", "8", "-t", "100"}, 800);
}

BOOST_AUTO_TEST_CASE(new_session_per_transaction)
{
    // -C: every transaction opens and closes its own session, which exercises accept, hand-off
    // to spare workers, and reaping far more than the cases above.
    check_run({"-C", "-S", "-c", "2", "-t", "50"}, 100);
}

BOOST_AUTO_TEST_CASE(balances_are_consistent)
{
    // Every TPC-B transaction adds the same delta to an account, a teller and a branch, so the
    // three totals stay equal; a lost or doubled statement in the relay would break that.
    // (pgbench truncates pgbench_history before each run, so it only holds this run.)
    check_run({"-M", "prepared", "-c", "2", "-j", "2", "-t", "50"}, 100);
    std::string sums = direct_scalar(
        "SELECT format('%s %s %s', (SELECT sum(abalance) FROM pgbench_accounts), (SELECT "
        "sum(tbalance) FROM pgbench_tellers), (SELECT sum(bbalance) FROM pgbench_branches))",
        "bench");
    std::istringstream in(sums);
    std::string accounts, tellers, branches;
    in >> accounts >> tellers >> branches;
    BOOST_TEST(accounts == tellers, sums);
    BOOST_TEST(accounts == branches, sums);
    BOOST_TEST(direct_scalar("SELECT count(*) FROM pgbench_history", "bench") == "100");
}

BOOST_AUTO_TEST_SUITE_END()
