// Unit tests for terminated mode's libpq parameters: defaults from the client,
// forced users, startup parameters mapped to options, and server error parsing.
#include "upstream/connect.hh"

#include <boost/test/unit_test.hpp>

using namespace pgw;

namespace {

std::string value_of(const upstream::Params& p, const std::string& key)
{
    for (const auto& [k, v] : p)
        if (k == key)
            return v;
    return "<unset>";
}

protocol::StartupMessage startup(std::vector<std::pair<std::string, std::string>> params)
{
    protocol::StartupMessage m;
    m.major = 3;
    m.params = std::move(params);
    return m;
}

} // namespace

BOOST_AUTO_TEST_SUITE(upstream_params)

BOOST_AUTO_TEST_CASE(client_user_and_database_fill_what_the_entry_leaves_open)
{
    config::DatabaseEntry e{"*", "host=db1 port=5433", 1};
    auto s = startup({{"user", "alice"}, {"database", "orders"}});
    auto p = upstream::build_params(e, {"alice", "orders", "10.0.0.5", &s, "", "", {}}, "pgwicket");
    BOOST_REQUIRE(p.ok());
    BOOST_TEST(value_of(*p, "host") == "db1");
    BOOST_TEST(value_of(*p, "port") == "5433");
    BOOST_TEST(value_of(*p, "dbname") == "orders");
    BOOST_TEST(value_of(*p, "user") == "alice");
    BOOST_TEST(value_of(*p, "gssencmode") == "disable");
    BOOST_TEST(value_of(*p, "application_name") == "pgwicket 10.0.0.5");
}

BOOST_AUTO_TEST_CASE(entry_user_and_dbname_are_forced)
{
    config::DatabaseEntry e{"reports", "host=db1 dbname=warehouse user=readonly", 1};
    auto s = startup({{"user", "alice"}});
    auto p = upstream::build_params(e, {"alice", "reports", "[local]", &s, "", "", {}}, "pgw");
    BOOST_REQUIRE(p.ok());
    BOOST_TEST(value_of(*p, "dbname") == "warehouse");
    BOOST_TEST(value_of(*p, "user") == "readonly");
}

BOOST_AUTO_TEST_CASE(an_entry_that_routes_reads_connects_its_sessions_to_the_primary)
{
    config::DatabaseEntry e{"app", "host=db1,db2", 1};
    auto s = startup({{"user", "alice"}});
    auto plain = upstream::build_params(e, {"alice", "app", "h", &s, "", "", {}}, "pgw");
    BOOST_REQUIRE(plain.ok());
    BOOST_TEST(value_of(*plain, "target_session_attrs") == "<unset>");
    e.replicas.read_routing = true;
    auto routed = upstream::build_params(e, {"alice", "app", "h", &s, "", "", {}}, "pgw");
    BOOST_REQUIRE(routed.ok());
    BOOST_TEST(value_of(*routed, "target_session_attrs") == "primary");
}

BOOST_AUTO_TEST_CASE(startup_parameters_are_applied_upstream)
{
    config::DatabaseEntry e{"*", "host=db1 options='-c work_mem=4MB'", 1};
    auto s = startup({{"user", "bob"},
                      {"application_name", "psql"},
                      {"client_encoding", "LATIN1"},
                      {"options", "-c search_path=app"},
                      {"DateStyle", "ISO, MDY"},
                      {"TimeZone", "Europe/Paris"}});
    auto p = upstream::build_params(e, {"bob", "bob", "192.0.2.1", &s, "", "", {}}, "pgwicket");
    BOOST_REQUIRE(p.ok());
    BOOST_TEST(value_of(*p, "client_encoding") == "LATIN1");
    BOOST_TEST(value_of(*p, "application_name") == "pgwicket 192.0.2.1 psql");
    BOOST_TEST(value_of(*p, "options") ==
               "-c work_mem=4MB -c search_path=app -c DateStyle=ISO,\\ MDY -c TimeZone=Europe/Paris");
}

BOOST_AUTO_TEST_CASE(option_values_escape_blanks_and_backslashes)
{
    BOOST_TEST(upstream::escape_option_value("a b\\c") == "a\\ b\\\\c");
    BOOST_TEST(upstream::escape_option_value("plain") == "plain");
}

BOOST_AUTO_TEST_CASE(describe_never_shows_a_password)
{
    upstream::Params p = {{"host", "db"}, {"port", "5432"}, {"password", "s3cret"},
                          {"user", "u"}, {"dbname", "d"}};
    std::string d = upstream::describe(p);
    BOOST_TEST(d == "host=db port=5432 dbname=d user=u");
    BOOST_TEST(d.find("s3cret") == std::string::npos);
}

BOOST_AUTO_TEST_CASE(invalid_connection_string_is_an_error)
{
    config::DatabaseEntry e{"x", "host='unterminated", 1};
    auto s = startup({{"user", "u"}});
    auto p = upstream::build_params(e, {"u", "x", "h", &s, "", "", {}}, "pgwicket");
    BOOST_TEST(!p.ok());
    BOOST_TEST(p.error().find("database \"x\"") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(server_errors_are_parsed_from_verbose_libpq_text)
{
    std::string code, msg;
    BOOST_TEST(upstream::parse_server_error(
        "connection to server at \"127.0.0.1\", port 5432 failed: FATAL:  3D000: database \"x\" "
        "does not exist\nLOCATION:  InitPostgres, postinit.c:885\n",
        code, msg));
    BOOST_TEST(code == "3D000");
    BOOST_TEST(msg == "database \"x\" does not exist");
    BOOST_TEST(!upstream::parse_server_error(
        "connection to server at \"127.0.0.1\", port 1 failed: Connection refused\n", code, msg));
}

// Only the host's own failures pass it over for every entry (ban_time).
BOOST_AUTO_TEST_CASE(only_failures_of_the_host_ban_it)
{
    auto refused = [](std::string sqlstate, std::string message) {
        return upstream::host_refused(upstream::ConnectFailure{std::move(sqlstate), std::move(message)});
    };
    BOOST_TEST(refused("", "connection to server at \"10.0.0.2\", port 5432 failed: Connection refused"));
    BOOST_TEST(refused("", "timed out connecting (server_connect_timeout)"));
    BOOST_TEST(!refused("28P01", "password authentication failed for user \"app\""));
    BOOST_TEST(!refused("", "connection to server at \"10.0.0.2\", port 5432 failed: SSL error: certificate verify "
                            "failed"));
    BOOST_TEST(!refused("", "connection to server at \"10.0.0.2\", port 5432 failed: server certificate for "
                            "\"pg2\" does not match host name \"10.0.0.2\""));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(upstream_identity)

// The SSO identity names the person in the upstream application_name, and a [roles]
// role replaces every other upstream user.
BOOST_AUTO_TEST_CASE(identity_in_application_name_and_role_forces_user)
{
    pgw::protocol::StartupMessage s;
    s.params = {{"user", "alice"}, {"application_name", "psql"}};
    pgw::config::DatabaseEntry e{"orders", "host=db user=proxy", 1};
    auto p = pgw::upstream::build_params(e, {"alice", "orders", "10.0.0.5", &s, "alice@example.com", "readers", {}},
                                         "pgwicket");
    BOOST_TEST_REQUIRE(p.ok());
    std::string app, user;
    for (const auto& [k, v] : *p) {
        if (k == "application_name")
            app = v;
        if (k == "user")
            user = v;
    }
    BOOST_TEST(app == "pgwicket alice@example.com@10.0.0.5 psql");
    BOOST_TEST(user == "readers");
}

BOOST_AUTO_TEST_SUITE_END()
