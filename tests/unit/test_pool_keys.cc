// Unit tests for the pool keys of [databases] entries (src/config/pool_keys.cc): what is
// cut out of the connection string, what libpq keeps, the errors, and the *_for defaults.
#include "config/config.hh"
#include "config/pool_keys.hh"
#include "upstream/connect.hh"

#include <boost/test/unit_test.hpp>

#include <libpq-fe.h>

#include <map>
#include <string>
#include <vector>

namespace cfg = pgw::config;

namespace {

template <typename R>
std::string why(const R& r)
{
    return r.ok() ? std::string() : r.error();
}

cfg::Config load(const std::string& text)
{
    auto r = cfg::load_string(text, "test.ini");
    BOOST_TEST_REQUIRE(r.ok(), why(r));
    return std::move(r.value());
}

std::string error_of(const std::string& text)
{
    auto r = cfg::load_string(text, "test.ini");
    BOOST_TEST_REQUIRE(!r.ok(), "expected an error for:\n" << text);
    return r.error();
}

// What libpq makes of a connection string: keyword -> value, set ones only.
std::map<std::string, std::string> libpq_view(const std::string& conninfo)
{
    char* err = nullptr;
    PQconninfoOption* opts = PQconninfoParse(conninfo.c_str(), &err);
    std::map<std::string, std::string> out;
    if (!opts) {
        out["<error>"] = err ? err : "";
        PQfreemem(err);
        return out;
    }
    for (PQconninfoOption* o = opts; o->keyword; ++o)
        if (o->val && *o->val)
            out[o->keyword] = o->val;
    PQconninfoFree(opts);
    return out;
}

} // namespace

BOOST_AUTO_TEST_SUITE(config_pool_keys)

BOOST_AUTO_TEST_CASE(pool_keys_are_cut_out_and_parsed)
{
    auto c = load("[databases]\n"
                  "orders = host=10.0.0.5 dbname=orders user=app pool_mode=session pool_size=20\n");
    const auto& d = c.databases.at(0);
    BOOST_TEST(d.conninfo == "host=10.0.0.5 dbname=orders user=app");
    BOOST_TEST(d.pool.pooled);
    BOOST_TEST(d.pool.pool_size == 20);
    BOOST_TEST(d.pool.min_pool_size == -1);
    BOOST_TEST(d.pool.reserve_pool_size == -1);
    BOOST_TEST(d.pool.max_db_connections == -1);
    BOOST_TEST(d.line == 2);
}

BOOST_AUTO_TEST_CASE(pool_keys_on_continuation_lines_and_blanks_around_equals)
{
    auto c = load("[databases]\n"
                  "orders = host=a pool_mode = session\n"
                  "    min_pool_size=2 reserve_pool_size =3\n"
                  "\tmax_db_connections= 50 dbname=o pool_size = 9\n");
    const auto& d = c.databases.at(0);
    BOOST_TEST(d.conninfo == "host=a dbname=o");
    BOOST_TEST(d.pool.pooled);
    BOOST_TEST(d.pool.pool_size == 9);
    BOOST_TEST(d.pool.min_pool_size == 2);
    BOOST_TEST(d.pool.reserve_pool_size == 3);
    BOOST_TEST(d.pool.max_db_connections == 50);
}

BOOST_AUTO_TEST_CASE(bounds_are_inclusive)
{
    auto c = load("[databases]\n"
                  "low = host=a pool_mode=session pool_size=1 min_pool_size=0 reserve_pool_size=0 "
                  "max_db_connections=0\n"
                  "high = host=a pool_mode=session pool_size=10000 min_pool_size=10000\n"
                  "    reserve_pool_size=10000 max_db_connections=100000\n");
    const auto& low = c.databases.at(0).pool;
    BOOST_TEST(low.pool_size == 1);
    BOOST_TEST(low.min_pool_size == 0);
    BOOST_TEST(low.reserve_pool_size == 0);
    BOOST_TEST(low.max_db_connections == 0);
    const auto& high = c.databases.at(1).pool;
    BOOST_TEST(high.pool_size == 10000);
    BOOST_TEST(high.min_pool_size == 10000);
    BOOST_TEST(high.reserve_pool_size == 10000);
    BOOST_TEST(high.max_db_connections == 100000);
}

BOOST_AUTO_TEST_CASE(helpers_fall_back_to_the_pgwicket_options)
{
    auto c = load("[pgwicket]\n"
                  "default_pool_size = 30\nmin_pool_size = 2\nreserve_pool_size = 4\nmax_db_connections = 100\n"
                  "[databases]\n"
                  "plain = host=a pool_mode=session\n"
                  "own = host=a pool_mode=session pool_size=8 min_pool_size=1 reserve_pool_size=0\n"
                  "    max_db_connections=0\n");
    const auto& plain = c.databases.at(0);
    BOOST_TEST(c.pool_size_for(plain) == 30);
    BOOST_TEST(c.min_pool_size_for(plain) == 2);
    BOOST_TEST(c.reserve_pool_size_for(plain) == 4);
    BOOST_TEST(c.max_db_connections_for(plain) == 100);
    // An entry's own 0 is a value, not "unset".
    const auto& own = c.databases.at(1);
    BOOST_TEST(c.pool_size_for(own) == 8);
    BOOST_TEST(c.min_pool_size_for(own) == 1);
    BOOST_TEST(c.reserve_pool_size_for(own) == 0);
    BOOST_TEST(c.max_db_connections_for(own) == 0);

    auto d = load("[databases]\nx = host=a pool_mode=session\n");
    const auto& x = d.databases.at(0);
    BOOST_TEST(d.pool_size_for(x) == 20);
    BOOST_TEST(d.min_pool_size_for(x) == 0);
    BOOST_TEST(d.reserve_pool_size_for(x) == 0);
    BOOST_TEST(d.max_db_connections_for(x) == 0);
}

BOOST_AUTO_TEST_CASE(entry_without_pool_mode_is_unchanged)
{
    const std::string conninfo = "host = a  port=5433\tdbname='my db' options='-c work_mem=4MB'";
    auto c = load("[databases]\nx = " + conninfo + "\n");
    const auto& d = c.databases.at(0);
    BOOST_TEST(d.conninfo == conninfo);
    BOOST_TEST(!d.pool.pooled);
    BOOST_TEST(d.pool.pool_size == -1);
    BOOST_TEST(d.pool.min_pool_size == -1);
    BOOST_TEST(d.pool.reserve_pool_size == -1);
    BOOST_TEST(d.pool.max_db_connections == -1);
}

BOOST_AUTO_TEST_CASE(quoted_values_are_one_token)
{
    // pool_mode=x inside options' quoted value is text of options, not a key.
    auto c = load("[databases]\n"
                  "a = host=h options='-c pool_mode=x' dbname=d\n"
                  "b = host=h options='-c pool_mode=x' pool_mode=session application_name='a b c'\n"
                  "c = host=h pool_mode='session' pool_size='7' application_name='it\\'s pool_size=3'\n");
    const auto& a = c.databases.at(0);
    BOOST_TEST(!a.pool.pooled);
    BOOST_TEST(a.conninfo == "host=h options='-c pool_mode=x' dbname=d");

    const auto& b = c.databases.at(1);
    BOOST_TEST(b.pool.pooled);
    BOOST_TEST(b.pool.pool_size == -1);
    BOOST_TEST(b.conninfo == "host=h options='-c pool_mode=x' application_name='a b c'");
    BOOST_TEST(libpq_view(b.conninfo)["options"] == "-c pool_mode=x");
    BOOST_TEST(libpq_view(b.conninfo)["application_name"] == "a b c");

    const auto& cc = c.databases.at(2);
    BOOST_TEST(cc.pool.pooled);
    BOOST_TEST(cc.pool.pool_size == 7);
    BOOST_TEST(libpq_view(cc.conninfo)["application_name"] == "it's pool_size=3");
}

BOOST_AUTO_TEST_CASE(what_libpq_sees_is_the_entry_without_the_pool_keys)
{
    // Escapes and quoting of the other keys survive the cut exactly.
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"pool_mode=session host=a", "host=a"},
        {"host=a pool_mode=session", "host=a"},
        {"host='a'pool_mode=session port=1", "host='a' port=1"},
        {"host=a\\ b pool_mode=session password='x\\\\y'", "host=a\\ b password='x\\\\y'"},
        {"  host=a   pool_mode=session   pool_size=3  ", "host=a"},
        {"application_name=pool_mode=session pool_mode=session", "application_name=pool_mode=session"},
    };
    for (const auto& [in, want] : cases) {
        BOOST_TEST_CONTEXT(in)
        {
            auto s = cfg::split_pool_keys(in);
            BOOST_TEST_REQUIRE(s.ok(), why(s));
            BOOST_TEST(s->pool.pooled);
            BOOST_TEST(s->conninfo == want);
            BOOST_TEST((libpq_view(s->conninfo) == libpq_view(want)));
            BOOST_TEST(!libpq_view(s->conninfo).count("<error>"));
        }
    }
}

BOOST_AUTO_TEST_CASE(syntax_errors_are_libpqs)
{
    // The tokenizer refuses what libpq refuses, so no entry is read two ways.
    for (const std::string in : {"host=a port", "host=a pool_mode=session port", "host='a pool_mode=session",
                                 "pool_mode=session host x=1", "pool_mode='session"}) {
        BOOST_TEST_CONTEXT(in)
        {
            BOOST_TEST(!cfg::split_pool_keys(in).ok());
            BOOST_TEST(libpq_view(in).count("<error>") == 1u);
        }
    }
    for (const std::string in : {"", "   ", "host=a port=", "=x", "host=a\\"}) {
        BOOST_TEST_CONTEXT(in)
        {
            auto s = cfg::split_pool_keys(in);
            BOOST_TEST_REQUIRE(s.ok(), why(s));
            BOOST_TEST(s->conninfo == in);
            BOOST_TEST(!s->pool.pooled);
        }
    }
    // A URI takes no pool keys and is left to libpq.
    auto uri = cfg::split_pool_keys("postgresql://h/db?application_name=x");
    BOOST_TEST_REQUIRE(uri.ok(), why(uri));
    BOOST_TEST(uri->conninfo == "postgresql://h/db?application_name=x");
    BOOST_TEST(!uri->pool.pooled);
}

BOOST_AUTO_TEST_CASE(errors_name_file_line_and_entry)
{
    struct Case {
        const char* name;
        std::string entry;  // on line 3, after "[databases]" and one good entry
        std::vector<std::string> want;
    };
    const Case cases[] = {
        {"transaction pooling", "orders = host=a pool_mode=transaction",
         {"test.ini:3: database \"orders\": pool_mode \"transaction\" is not supported yet (only session)"}},
        {"statement pooling", "orders = host=a pool_mode=statement",
         {"test.ini:3: database \"orders\": pool_mode \"statement\" is not supported yet (only session)"}},
        {"unknown mode", "orders = host=a pool_mode=Session",
         {"test.ini:3: database \"orders\": pool_mode \"Session\" is not a pool mode (only session)"}},
        {"empty mode", "orders = host=a pool_mode=", {"test.ini:3: ", "pool_mode \"\""}},
        {"size not a number", "orders = host=a pool_mode=session pool_size=x",
         {"test.ini:3: database \"orders\": pool_size \"x\" is not a whole number"}},
        {"size with a unit", "orders = host=a pool_mode=session pool_size=5k",
         {"test.ini:3: database \"orders\": pool_size \"5k\" is not a whole number"}},
        {"size empty", "orders = host=a pool_mode=session pool_size=''",
         {"test.ini:3: database \"orders\": pool_size \"\" is not a whole number"}},
        {"size zero", "orders = host=a pool_mode=session pool_size=0",
         {"test.ini:3: database \"orders\": pool_size 0 is out of range (1 to 10000)"}},
        {"size too big", "orders = host=a pool_mode=session pool_size=10001",
         {"test.ini:3: ", "pool_size 10001 is out of range (1 to 10000)"}},
        {"size overflows long", "orders = host=a pool_mode=session pool_size=99999999999999999999999",
         {"test.ini:3: ", "pool_size 99999999999999999999999 is out of range"}},
        {"negative min", "orders = host=a pool_mode=session min_pool_size=-1",
         {"test.ini:3: ", "min_pool_size -1 is out of range (0 to 10000)"}},
        {"min too big", "orders = host=a pool_mode=session min_pool_size=10001",
         {"test.ini:3: ", "min_pool_size 10001 is out of range (0 to 10000)"}},
        {"reserve too big", "orders = host=a pool_mode=session reserve_pool_size=10001",
         {"test.ini:3: ", "reserve_pool_size 10001 is out of range (0 to 10000)"}},
        {"max_db too big", "orders = host=a pool_mode=session max_db_connections=100001",
         {"test.ini:3: ", "max_db_connections 100001 is out of range (0 to 100000)"}},
        {"size without mode", "orders = host=a pool_size=5",
         {"test.ini:3: database \"orders\": pool_size needs pool_mode=session"}},
        {"max_db without mode", "orders = host=a max_db_connections=5 min_pool_size=1",
         {"test.ini:3: database \"orders\": max_db_connections needs pool_mode=session"}},
        {"min above the entry's size", "orders = host=a pool_mode=session pool_size=5 min_pool_size=6",
         {"test.ini:3: database \"orders\": min_pool_size 6 is more than the pool size 5"}},
        {"misspelt key stays libpq's error", "orders = host=a pool_mode=session pool_sise=3",
         {"test.ini:3: database \"orders\": invalid connection string: ", "pool_sise"}},
        {"misspelt key without pool_mode", "orders = host=a pool_sise=3",
         {"test.ini:3: database \"orders\": invalid connection string: ", "pool_sise"}},
        {"key with another case", "orders = host=a Pool_Mode=session",
         {"test.ini:3: ", "invalid connection string", "Pool_Mode"}},
        {"missing =", "orders = host=a pool_mode=session port",
         {"test.ini:3: database \"orders\": invalid connection string: missing \"=\" after \"port\""}},
        {"unterminated quote", "orders = host=a pool_mode='session",
         {"test.ini:3: database \"orders\": invalid connection string: unterminated quoted string"}},
        {"cut must not make a URI", "orders = pool_mode=session postgresql://h=1",
         {"test.ini:3: ", "invalid connection option \"postgresql://h\""}},
        {"error on a continuation line cites the entry",
         "orders = host=a pool_mode=session\n    pool_size=x",
         {"test.ini:3: database \"orders\": pool_size \"x\""}},
    };
    for (const auto& c : cases) {
        BOOST_TEST_CONTEXT(c.name)
        {
            const std::string err = error_of("[databases]\nok = host=b pool_mode=session\n" + c.entry + "\n");
            for (const auto& w : c.want)
                BOOST_TEST(err.find(w) != std::string::npos, "\"" << w << "\" not in: " << err);
            // One message for the entry, none for the good one.
            BOOST_TEST(err.find('\n') == std::string::npos, err);
        }
    }
}

BOOST_AUTO_TEST_CASE(min_pool_size_is_checked_against_the_resolved_pool_size)
{
    // The [pgwicket] values count too, but only for pooled entries.
    const std::string err = error_of("[pgwicket]\nmin_pool_size = 30\n[databases]\n"
                                     "plain = host=a\npooled = host=a pool_mode=session\n"
                                     "big = host=a pool_mode=session pool_size=40\n");
    BOOST_TEST(err == "test.ini:5: database \"pooled\": min_pool_size 30 is more than the pool size 20");
    load("[pgwicket]\nmin_pool_size = 30\n[databases]\nplain = host=a\n");
    load("[pgwicket]\nmin_pool_size = 30\ndefault_pool_size = 30\n[databases]\nx = host=a pool_mode=session\n");
}

BOOST_AUTO_TEST_CASE(every_entry_is_checked_at_once)
{
    const std::string err = error_of("[databases]\na = host=a pool_size=1\nb = host=b pool_mode=transaction\n"
                                     "c = host=c pool_sise=1\n");
    BOOST_TEST(err.find("test.ini:2: database \"a\"") != std::string::npos, err);
    BOOST_TEST(err.find("test.ini:3: database \"b\"") != std::string::npos, err);
    BOOST_TEST(err.find("test.ini:4: database \"c\"") != std::string::npos, err);
}

BOOST_AUTO_TEST_CASE(upstream_parameters_never_carry_pool_keys)
{
    auto c = load("[databases]\norders = host=db dbname=orders user=app pool_mode=session pool_size=20\n");
    auto s = pgw::protocol::StartupMessage{};
    s.major = 3;
    s.params = {{"user", "alice"}, {"database", "orders"}};
    auto p = pgw::upstream::build_params(c.databases.at(0), {"alice", "orders", "10.0.0.5", &s, "", "", {}},
                                         "pgwicket");
    BOOST_TEST_REQUIRE(p.ok(), why(p));
    for (const auto& [k, v] : *p)
        BOOST_TEST(k.find("pool") == std::string::npos, k << "=" << v);
}

BOOST_AUTO_TEST_SUITE_END()
