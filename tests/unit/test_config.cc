// Unit tests for src/config: INI parsing into Config, its error messages,
// defaults from the options table, lookups, and the command-line parser.
#include "auth/rules.hh"
#include "config/cli.hh"
#include "config/config.hh"
#include "config/options.hh"

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <unistd.h>
#include <vector>

namespace cfg = pgw::config;

namespace {

// Every config needs a [databases] entry; tests about other things append this.
const std::string kMinimalDatabases = "[databases]\n* = host=127.0.0.1 port=5432\n";

const std::string kGoodConfig = R"(; every option set to something other than its default
# both comment styles
[pgwicket]
listen_addr = 127.0.0.1, ::1
listen_port = 7432
unix_socket_dir = /run/pgwicket
unix_socket_mode = 0700
max_client_conn = 500
listen_backlog = 2048
spare_workers = 8
client_login_timeout = 30
server_connect_timeout = 5
log_level = debug
logfile = /var/log/pgwicket.log
pidfile = /run/pgwicket/pgwicket.pid
application_name_prefix = gate
query_timeout = 30
peer_id = 4
syslog = 1
syslog_ident = gate
syslog_facility = local3
shutdown_timeout = 120
admin_users = alice, bob
stats_users = carol
metrics_listen = 127.0.0.1:9632
client_tls_sslmode = require
client_tls_cert_file = /etc/pgwicket/server.crt
client_tls_key_file = /etc/pgwicket/server.key
client_tls_ca_file = /etc/pgwicket/ca.crt
client_tls_protocols = tlsv1.3
client_tls_ciphers = HIGH
auth_type = reject
auth_hba_file = /etc/pgwicket/hba.conf
auth_file = /etc/pgwicket/users.txt
jwt_jwks_file = /etc/pgwicket/jwks.json
jwt_jwks_uri = https://login.example.com/keys
jwt_ca_file = /etc/pgwicket/idp-ca.pem
jwt_http_proxy = http://proxy.example.com:3128
jwt_jwks_cache = /var/cache/pgwicket
jwt_fetch_connect_timeout = 3
jwt_fetch_timeout = 20
jwt_jwks_min_refresh = 30
jwt_jwks_max_stale = 3600
jwt_issuer = https://login.example.com/
jwt_audience = api://pgwicket
jwt_identity_claim = upn
jwt_groups_claim = roles
jwt_oauth_scope = openid email
jwt_leeway = 30
default_policy = careful
audit_file = /var/log/pgwicket/audit.jsonl
audit_journald = 1
audit_statement_text = full
audit_parameters = on
audit_parameter_max_size = 64
audit_failure = continue
log_statements = 1
default_pool_size = 50
min_pool_size = 5
reserve_pool_size = 3
reserve_pool_timeout = 2
max_db_connections = 200
server_reset_query = RESET ALL
server_check_query = SELECT 1
server_check_delay = 10
server_lifetime = 1800
server_idle_timeout = 60
query_wait_timeout = 30
server_check_period = 2
ban_time = 60

[databases]
* = host=10.0.0.1 port=5432
sales = host=10.0.0.2
    port=5433
	dbname=sales_prod
hr = host=/var/run/postgresql dbname=hr

[policy.careful]
read_only = 1

[peers]
1 = host=10.0.0.11
2 = host=/run/pgwicket port=7432
)";

// The value of an option in a Config, as text, so options of any type compare alike.
std::string value_of(const cfg::Config& c, const cfg::OptionSpec& o) { return cfg::option_value(c, o); }

// Boost evaluates an assertion's message even when it passes; error() throws on success.
template <typename R>
std::string why(const R& r)
{
    return r.ok() ? std::string() : r.error();
}

std::string error_of(const std::string& text, const std::string& name = "test.ini")
{
    auto r = cfg::load_string(text, name);
    BOOST_TEST_REQUIRE(!r.ok(), "expected an error for:\n" << text);
    return r.error();
}

} // namespace

BOOST_AUTO_TEST_SUITE(config_load)

BOOST_AUTO_TEST_CASE(good_config_sets_every_option)
{
    auto r = cfg::load_string(kGoodConfig, "good.ini");
    BOOST_TEST_REQUIRE(r.ok(), why(r));
    const cfg::Config& c = r.value();
    BOOST_TEST(c.path == "good.ini");
    BOOST_TEST(c.listen_addr == "127.0.0.1, ::1");
    BOOST_TEST(c.listen_port == 7432);
    BOOST_TEST(c.unix_socket_dir == "/run/pgwicket");
    BOOST_TEST(c.unix_socket_mode == 0700);
    BOOST_TEST(c.max_client_conn == 500);
    BOOST_TEST(c.listen_backlog == 2048);
    BOOST_TEST(c.spare_workers == 8);
    BOOST_TEST(c.client_login_timeout == 30);
    BOOST_TEST(c.server_connect_timeout == 5);
    BOOST_TEST(c.log_level == "debug");
    BOOST_TEST(c.logfile == "/var/log/pgwicket.log");
    BOOST_TEST(c.pidfile == "/run/pgwicket/pgwicket.pid");
    BOOST_TEST(c.application_name_prefix == "gate");
    BOOST_TEST(c.default_pool_size == 50);
    BOOST_TEST(c.server_reset_query == "RESET ALL");
    BOOST_TEST(c.server_check_query == "SELECT 1");
    BOOST_TEST(c.query_wait_timeout == 30);

    // A new option in the table must get a line in kGoodConfig too.
    const cfg::Config d = cfg::defaults();
    for (const auto& o : cfg::options())
        BOOST_TEST_CONTEXT(o.name) { BOOST_TEST(value_of(c, o) != value_of(d, o)); }
}

BOOST_AUTO_TEST_CASE(databases_with_wildcard_named_entries_and_continuations)
{
    auto r = cfg::load_string(kGoodConfig, "good.ini");
    BOOST_TEST_REQUIRE(r.ok(), why(r));
    // The line (1-based) of kGoodConfig that starts with `start`.
    auto line_of = [](const std::string& start) {
        const std::string text = kGoodConfig;
        const size_t at = text.find("\n" + start);
        return at == std::string::npos ? -1 : int(std::count(text.begin(), text.begin() + long(at) + 1, '\n')) + 1;
    };
    const auto& dbs = r.value().databases;
    BOOST_TEST_REQUIRE(dbs.size() == 3u);
    BOOST_TEST(dbs[0].name == "*");
    BOOST_TEST(dbs[0].conninfo == "host=10.0.0.1 port=5432");
    BOOST_TEST(dbs[0].line == line_of("* = host"));
    // Indented lines (blank or tab) continue the connection string above them.
    BOOST_TEST(dbs[1].name == "sales");
    BOOST_TEST(dbs[1].conninfo == "host=10.0.0.2 port=5433 dbname=sales_prod");
    BOOST_TEST(dbs[1].line == line_of("sales = "));
    BOOST_TEST(dbs[2].name == "hr");
    BOOST_TEST(dbs[2].conninfo == "host=/var/run/postgresql dbname=hr");
    BOOST_TEST(dbs[2].line == line_of("hr = "));
}

BOOST_AUTO_TEST_CASE(defaults_match_the_options_table)
{
    const cfg::Config d = cfg::defaults();
    BOOST_TEST(d.listen_addr == "127.0.0.1");
    BOOST_TEST(d.listen_port == 6432);
    BOOST_TEST(d.unix_socket_dir == "/tmp");
    BOOST_TEST(d.unix_socket_mode == 0777);
    BOOST_TEST(d.max_client_conn == 100);
    BOOST_TEST(d.spare_workers == 4);
    BOOST_TEST(d.client_login_timeout == 60);
    BOOST_TEST(d.server_connect_timeout == 15);
    BOOST_TEST(d.log_level == "info");
    BOOST_TEST(d.logfile == "");
    BOOST_TEST(d.pidfile == "");
    BOOST_TEST(d.application_name_prefix == "pgwicket");
    BOOST_TEST(d.default_pool_size == 20);
    BOOST_TEST(d.min_pool_size == 0);
    BOOST_TEST(d.reserve_pool_size == 0);
    BOOST_TEST(d.reserve_pool_timeout == 5);
    BOOST_TEST(d.max_db_connections == 0);
    BOOST_TEST(d.server_reset_query == "DISCARD ALL");
    BOOST_TEST(d.server_check_query == "");
    BOOST_TEST(d.server_check_delay == 30);
    BOOST_TEST(d.server_lifetime == 3600);
    BOOST_TEST(d.server_idle_timeout == 600);
    BOOST_TEST(d.query_wait_timeout == 120);
    BOOST_TEST(d.databases.empty());

    // Writing a default out explicitly must change nothing, and it must be within bounds.
    for (const auto& o : cfg::options()) {
        BOOST_TEST_CONTEXT(o.name)
        {
            BOOST_TEST(((o.str_field != nullptr) != (o.int_field != nullptr)));
            auto r = cfg::load_string("[pgwicket]\n" + std::string(o.name) + " = " +
                                      std::string(o.default_value) + "\n" + kMinimalDatabases);
            BOOST_TEST_REQUIRE(r.ok(), why(r));
            BOOST_TEST(value_of(r.value(), o) == value_of(d, o));
            if (o.int_field) {
                const long v = d.*(o.int_field);
                BOOST_TEST(v >= o.min);
                BOOST_TEST(v <= o.max);
            }
        }
    }
}

BOOST_AUTO_TEST_CASE(minimal_config_takes_defaults)
{
    auto r = cfg::load_string(kMinimalDatabases);
    BOOST_TEST_REQUIRE(r.ok(), why(r));
    const cfg::Config d = cfg::defaults();
    for (const auto& o : cfg::options())
        BOOST_TEST_CONTEXT(o.name) { BOOST_TEST(value_of(r.value(), o) == value_of(d, o)); }
}

BOOST_AUTO_TEST_CASE(errors_name_file_line_and_option)
{
    struct Case {
        const char* name;
        std::string text;
        std::vector<std::string> want;  // substrings of the error message
    };
    const std::string pg = "[pgwicket]\n";
    const Case cases[] = {
        {"unknown option", pg + "listen_prot = 1\n" + kMinimalDatabases,
         {"test.ini:2: ", "unknown option \"listen_prot\"", "[pgwicket]"}},
        {"unknown section", kMinimalDatabases + "[pgbouncer]\npool_mode = session\n",
         {"test.ini:4: ", "unknown section [pgbouncer]", "\"pool_mode\""}},
        {"option before any section", "listen_port = 7432\n" + kMinimalDatabases,
         {"test.ini:1: ", "\"listen_port\"", "before any [section]"}},
        {"port above range", pg + "listen_port = 65536\n" + kMinimalDatabases,
         {"test.ini:2: ", "\"listen_port\"", "65536 is out of range (1 to 65535)"}},
        {"port zero", pg + "\n\nlisten_port = 0\n" + kMinimalDatabases,
         {"test.ini:4: ", "\"listen_port\"", "out of range"}},
        {"negative workers", pg + "spare_workers = -1\n" + kMinimalDatabases,
         {"test.ini:2: ", "\"spare_workers\"", "out of range (0 to 256)"}},
        {"socket mode above 0777", pg + "unix_socket_mode = 01000\n" + kMinimalDatabases,
         {"test.ini:2: ", "\"unix_socket_mode\"", "out of range"}},
        {"socket mode not octal", pg + "unix_socket_mode = 0789\n" + kMinimalDatabases,
         {"test.ini:2: ", "\"unix_socket_mode\"", "invalid value \"0789\"", "octal"}},
        {"non-numeric port", pg + "listen_port = abc\n" + kMinimalDatabases,
         {"test.ini:2: ", "\"listen_port\"", "invalid value \"abc\"", "whole number"}},
        {"port with trailing junk", pg + "listen_port = 5432x\n" + kMinimalDatabases,
         {"test.ini:2: ", "invalid value \"5432x\""}},
        {"hex port", pg + "listen_port = 0x10\n" + kMinimalDatabases,
         {"test.ini:2: ", "invalid value \"0x10\""}},
        {"empty integer", pg + "max_client_conn =\n" + kMinimalDatabases,
         {"test.ini:2: ", "\"max_client_conn\"", "invalid value \"\""}},
        {"integer that overflows long", pg + "max_client_conn = 99999999999999999999999\n" +
                                            kMinimalDatabases,
         {"test.ini:2: ", "\"max_client_conn\""}},
        {"seconds with a unit", pg + "client_login_timeout = 10s\n" + kMinimalDatabases,
         {"test.ini:2: ", "\"client_login_timeout\"", "invalid value \"10s\"", "seconds"}},
        {"bad enum value", pg + "log_level = verbose\n" + kMinimalDatabases,
         {"test.ini:2: ", "\"log_level\"", "invalid value \"verbose\"",
          "error,warning,info,debug"}},
        {"enum is case sensitive", pg + "log_level = DEBUG\n" + kMinimalDatabases,
         {"test.ini:2: ", "\"log_level\"", "\"DEBUG\""}},
        {"connection string missing =", "[databases]\nx = host=a port\n",
         {"test.ini:2: ", "database \"x\"", "invalid connection string"}},
        {"connection string with unterminated quote", "[databases]\n\nx = host='a\n",
         {"test.ini:3: ", "database \"x\"", "invalid connection string"}},
        {"connection string with unknown keyword", "[databases]\nx = hots=a\n",
         {"test.ini:2: ", "database \"x\"", "invalid connection string"}},
        {"bad continuation in a connection string",
         "[databases]\nx = host=a\n  port\n",
         {"test.ini:2: ", "database \"x\"", "invalid connection string"}},
        {"duplicate database", "[databases]\nx = host=a\ny = host=b\nx = host=c\n",
         {"test.ini:4: ", "database \"x\" is already defined at line 2"}},
        {"duplicate wildcard", "[databases]\n* = host=a\n* = host=c\n",
         {"test.ini:3: ", "database \"*\" is already defined at line 2"}},
        {"no [databases] section", pg + "listen_port = 7432\n", {"test.ini: ", "no [databases]"}},
        {"empty [databases] section", pg + "[databases]\n", {"test.ini: ", "no [databases]"}},
        {"empty file", "", {"test.ini: ", "no [databases]"}},
        {"nothing to listen on", pg + "listen_addr =\nunix_socket_dir =\n" + kMinimalDatabases,
         {"test.ini: ", "nothing to listen on"}},
        {"line without =", pg + "listen_port 7432\n" + kMinimalDatabases,
         {"test.ini:2: ", "syntax error"}},
        {"unclosed section header", "[databases\n* = host=a\n", {"test.ini:1: ", "syntax error"}},
    };
    for (const auto& c : cases) {
        BOOST_TEST_CONTEXT(c.name)
        {
            const std::string err = error_of(c.text);
            for (const auto& w : c.want)
                BOOST_TEST(err.find(w) != std::string::npos,
                           "\"" << w << "\" not in: " << err);
        }
    }
}

BOOST_AUTO_TEST_CASE(integer_bounds_are_inclusive)
{
    auto text_of = [](const cfg::OptionSpec& o, long v) {
        // unix_socket_mode is written in octal, like chmod.
        char buf[32];
        std::snprintf(buf, sizeof buf, o.name == "unix_socket_mode" ? "%lo" : "%ld", v);
        return "[pgwicket]\n" + std::string(o.name) + " = " + buf + "\n" + kMinimalDatabases;
    };
    int checked = 0;
    for (const auto& o : cfg::options()) {
        if (!o.int_field)
            continue;
        ++checked;
        BOOST_TEST_CONTEXT(o.name)
        {
            BOOST_TEST_REQUIRE(o.min <= o.max);
            for (long v : {o.min, o.max}) {
                auto r = cfg::load_string(text_of(o, v));
                BOOST_TEST_REQUIRE(r.ok(), why(r));
                const long got = r.value().*(o.int_field);
                BOOST_TEST(got == v);
            }
            if (o.min > 0)
                BOOST_TEST(error_of(text_of(o, o.min - 1)).find("out of range") != std::string::npos);
            BOOST_TEST(error_of(text_of(o, o.max + 1)).find("out of range") != std::string::npos);
        }
    }
    BOOST_TEST(checked >= 6);
}

BOOST_AUTO_TEST_CASE(every_error_is_reported_at_once)
{
    const std::string err = error_of("[pgwicket]\nlisten_port = x\nlog_level = loud\n"
                                     "bogus = 1\n[databases]\na = host=b c\n");
    BOOST_TEST(err.find("test.ini:2: option \"listen_port\"") != std::string::npos, err);
    BOOST_TEST(err.find("test.ini:3: option \"log_level\"") != std::string::npos, err);
    BOOST_TEST(err.find("test.ini:4: unknown option \"bogus\"") != std::string::npos, err);
    BOOST_TEST(err.find("test.ini:6: database \"a\"") != std::string::npos, err);
    BOOST_TEST(std::count(err.begin(), err.end(), '\n') == 3);
}

BOOST_AUTO_TEST_CASE(long_lines_are_refused_not_split)
{
    // inih reads into a 200-byte buffer (line, newline, NUL); a longer line would be
    // split in two and the tail parsed as a line of its own.
    auto line_of = [](size_t len) {
        std::string l = "x = host=h dbname=";
        l += std::string(len - l.size(), 'd');
        return l;
    };
    for (size_t len : {size_t(150), size_t(198)}) {
        BOOST_TEST_CONTEXT("line of " << len)
        {
            auto r = cfg::load_string("[databases]\n" + line_of(len) + "\n", "long.ini");
            BOOST_TEST_REQUIRE(r.ok(), why(r));
            BOOST_TEST(r.value().databases[0].conninfo.size() == len - 4);
        }
    }
    for (size_t len : {size_t(199), size_t(200), size_t(201), size_t(250), size_t(1000), size_t(100000)}) {
        BOOST_TEST_CONTEXT("line of " << len)
        {
            const std::string err =
                error_of("[databases]\n* = host=a\n" + line_of(len) + "\n", "long.ini");
            BOOST_TEST(err.find("long.ini:3: line is longer than") != std::string::npos, err);
            BOOST_TEST(err.find("continuation") != std::string::npos, err);
            // The tail must not have been parsed as a line of its own.
            BOOST_TEST(err.find("syntax error") == std::string::npos, err);
        }
    }
}

BOOST_AUTO_TEST_CASE(line_limit_does_not_depend_on_the_line_ending)
{
    const std::string ok_line = "x = host=h dbname=" + std::string(198 - 18, 'd');
    const std::string long_line = ok_line + "d";
    for (const char* ending : {"\n", "\r\n", ""}) {
        BOOST_TEST_CONTEXT("ending " << (*ending ? (ending[0] == '\r' ? "CRLF" : "LF") : "none"))
        {
            auto r = cfg::load_string("[databases]\n" + ok_line + ending, "e.ini");
            BOOST_TEST(r.ok(), why(r));
            std::string err = error_of("[databases]\n* = host=a\n" + long_line + ending, "e.ini");
            BOOST_TEST(err.find("e.ini:3: line is longer than 198") != std::string::npos, err);
        }
    }
}

BOOST_AUTO_TEST_CASE(repeated_option_is_an_error_naming_both_lines)
{
    std::string err = error_of("[pgwicket]\nlisten_port = 1\n\nlisten_port = 2\n[databases]\n* = host=a\n");
    BOOST_TEST(err.find("test.ini:4: option \"listen_port\" is already set at line 2") != std::string::npos, err);
}

BOOST_AUTO_TEST_CASE(only_text_options_continue_on_indented_lines)
{
    std::string err = error_of("[pgwicket]\nlisten_port = 1\n  2\n[databases]\n* = host=a\n");
    BOOST_TEST(err.find("test.ini:3: option \"listen_port\": only text values") != std::string::npos, err);
    auto r = cfg::load_string("[pgwicket]\nlisten_addr = 127.0.0.1,\n  ::1\n[databases]\n* = host=a\n");
    BOOST_TEST_REQUIRE(r.ok(), why(r));
    BOOST_TEST(r.value().listen_addresses().size() == 2u);
}

BOOST_AUTO_TEST_CASE(indented_entry_after_a_section_header_is_not_a_continuation)
{
    // inih forgets the previous name at a header: "  x = ..." is a new entry there,
    // so a second x is a duplicate, not more of the first one's string.
    std::string err = error_of("[databases]\nx = host=a\n[databases]\n  x = host=b\n");
    BOOST_TEST(err.find("test.ini:4: database \"x\" is already defined at line 2") != std::string::npos, err);
}

BOOST_AUTO_TEST_CASE(unknown_option_is_reported_once_with_its_continuation)
{
    std::string err = error_of("[pgwicket]\nlisten_prot = 1\n  more\n[databases]\n* = host=a\n");
    BOOST_TEST(err.find("unknown option \"listen_prot\"") != std::string::npos, err);
    BOOST_TEST(err.find("unknown option", err.find("listen_prot") + 1) == std::string::npos, err);
}

BOOST_AUTO_TEST_CASE(peers_section_is_parsed_and_checked)
{
    auto r = cfg::load_string(kGoodConfig);
    BOOST_TEST_REQUIRE(r.ok(), why(r));
    const auto& c = r.value();
    BOOST_TEST_REQUIRE(c.peers.size() == 2u);
    BOOST_TEST(c.peers[0].id == 1);
    BOOST_TEST(c.peers[0].host == "10.0.0.11");
    BOOST_TEST(c.peers[0].port == "6432");
    BOOST_TEST(c.peers[1].id == 2);
    BOOST_TEST(c.peers[1].host == "/run/pgwicket");
    BOOST_TEST(c.peers[1].port == "7432");

    const std::string db = "[databases]\n* = host=a\n";
    struct Case {
        std::string text, expected;
    };
    const Case cases[] = {
        {"[pgwicket]\npeer_id = 1\n[peers]\n64 = host=x\n" + db, "test.ini:4: peer \"64\": the name must be a peer_id from 1 to 63"},
        {"[pgwicket]\npeer_id = 1\n[peers]\nabc = host=x\n" + db, "test.ini:4: peer \"abc\""},
        {"[pgwicket]\npeer_id = 1\n[peers]\n2 = port=1\n" + db, "test.ini:4: peer 2: host= is missing"},
        {"[pgwicket]\npeer_id = 1\n[peers]\n2 = host=x dbname=y\n" + db, "only host and port may be given (not \"dbname\")"},
        {"[pgwicket]\npeer_id = 2\n[peers]\n2 = host=x\n" + db, "test.ini:4: peer 2 is this instance's own peer_id"},
        {"[peers]\n2 = host=x\n" + db, "[peers] is set but peer_id is 0"},
        {"[pgwicket]\npeer_id = 1\n[peers]\n2 = host=x\n2 = host=y\n" + db, "test.ini:5: peer 2 is already defined at line 4"},
    };
    for (const auto& c2 : cases) {
        BOOST_TEST_CONTEXT(c2.text)
        {
            std::string err = error_of(c2.text);
            BOOST_TEST(err.find(c2.expected) != std::string::npos, err);
        }
    }
}

BOOST_AUTO_TEST_CASE(long_connection_string_over_continuation_lines)
{
    std::string text = "[databases]\nbig = host=h\n";
    std::string want = "host=h";
    for (int i = 0; i < 20; ++i) {
        std::string part = "application_name=" + std::string(150, char('a' + i));
        text += "    " + part + "\n";
        want += " " + part;
    }
    // A later part overrides an earlier one in libpq, but each part is still checked.
    auto r = cfg::load_string(text);
    BOOST_TEST_REQUIRE(r.ok(), why(r));
    BOOST_TEST(r.value().databases.at(0).conninfo == want);
}

BOOST_AUTO_TEST_CASE(comments_and_blank_lines_keep_line_numbers)
{
    const std::string err = error_of("; c\n\n# c\n[pgwicket]\n\n; c\nlisten_port = -5\n" +
                                     kMinimalDatabases);
    BOOST_TEST(err.find("test.ini:7: option \"listen_port\"") != std::string::npos, err);
}

BOOST_AUTO_TEST_CASE(crlf_line_endings_are_accepted)
{
    auto r = cfg::load_string("[pgwicket]\r\nlisten_port = 7000\r\n[databases]\r\n* = host=a\r\n");
    BOOST_TEST_REQUIRE(r.ok(), why(r));
    BOOST_TEST(r.value().listen_port == 7000);
    BOOST_TEST(r.value().databases.at(0).conninfo == "host=a");
}

BOOST_AUTO_TEST_CASE(load_file_reads_a_file_and_names_a_missing_one)
{
    char path[] = "/tmp/pgwicket-test-config-XXXXXX";
    int fd = mkstemp(path);
    BOOST_TEST_REQUIRE(fd >= 0);
    const std::string text = "[pgwicket]\nlisten_port = 7777\n" + kMinimalDatabases;
    BOOST_TEST_REQUIRE(write(fd, text.data(), text.size()) == ssize_t(text.size()));
    close(fd);
    auto r = cfg::load_file(path);
    BOOST_TEST(r.ok(), why(r));
    if (r.ok()) {
        BOOST_TEST(r.value().listen_port == 7777);
        BOOST_TEST(r.value().path == path);
    }

    // The error names the path and the reason.
    unlink(path);
    auto missing = cfg::load_file(path);
    BOOST_TEST_REQUIRE(!missing.ok());
    BOOST_TEST(missing.error().find(std::string(path) + ": ") == 0u, missing.error());
    BOOST_TEST(missing.error().find("No such file") != std::string::npos, missing.error());
}

BOOST_AUTO_TEST_CASE(load_file_errors_cite_the_path)
{
    char path[] = "/tmp/pgwicket-test-config-XXXXXX";
    int fd = mkstemp(path);
    BOOST_TEST_REQUIRE(fd >= 0);
    const std::string text = "[pgwicket]\nlisten_port = none\n" + kMinimalDatabases;
    BOOST_TEST_REQUIRE(write(fd, text.data(), text.size()) == ssize_t(text.size()));
    close(fd);
    auto r = cfg::load_file(path);
    unlink(path);
    BOOST_TEST_REQUIRE(!r.ok());
    BOOST_TEST(r.error().find(std::string(path) + ":2: option \"listen_port\"") == 0u, r.error());
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(config_lookup)

BOOST_AUTO_TEST_CASE(listen_addresses_split_on_commas_and_blanks)
{
    struct Case {
        std::string listen_addr;
        std::vector<std::string> want;
    };
    const Case cases[] = {
        {"127.0.0.1", {"127.0.0.1"}},
        {"*", {"*"}},
        {"", {}},
        {" , ,\t", {}},
        {"::1", {"::1"}},
        {"127.0.0.1,::1", {"127.0.0.1", "::1"}},
        {"127.0.0.1, ::1", {"127.0.0.1", "::1"}},
        {"  10.0.0.1 \t fe80::1%eth0 ,, localhost ", {"10.0.0.1", "fe80::1%eth0", "localhost"}},
    };
    for (const auto& c : cases) {
        BOOST_TEST_CONTEXT("\"" << c.listen_addr << "\"")
        {
            cfg::Config conf;
            conf.listen_addr = c.listen_addr;
            BOOST_TEST(conf.listen_addresses() == c.want, boost::test_tools::per_element());
        }
    }
}

BOOST_AUTO_TEST_CASE(find_database_prefers_exact_then_wildcard)
{
    cfg::Config with_star;
    with_star.databases = {{"sales", "host=a", 2}, {"*", "host=b", 3}, {"hr", "host=c", 4}};
    cfg::Config without_star;
    without_star.databases = {{"sales", "host=a", 2}};

    struct Case {
        const cfg::Config* conf;
        std::string name;
        const char* want;  // conninfo, or nullptr for no entry
    };
    const Case cases[] = {
        {&with_star, "sales", "host=a"},
        {&with_star, "hr", "host=c"},  // listed after "*", still exact
        {&with_star, "other", "host=b"},
        {&with_star, "*", "host=b"},
        {&with_star, "", "host=b"},
        {&with_star, "Sales", "host=b"},  // names are case sensitive, as in PostgreSQL
        {&without_star, "sales", "host=a"},
        {&without_star, "other", nullptr},
    };
    for (const auto& c : cases) {
        BOOST_TEST_CONTEXT("\"" << c.name << "\"")
        {
            const cfg::DatabaseEntry* e = c.conf->find_database(c.name);
            if (!c.want) {
                BOOST_TEST(e == nullptr);
            } else {
                BOOST_TEST_REQUIRE(e != nullptr);
                BOOST_TEST(e->conninfo == c.want);
            }
        }
    }
    BOOST_TEST(cfg::Config{}.find_database("x") == nullptr);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(config_cli)

BOOST_AUTO_TEST_CASE(parse_command_line_accepts_gnu_forms)
{
    struct Case {
        const char* name;
        std::vector<std::string> args;
        cfg::CommandLine want;
    };
    const std::string def(cfg::kDefaultConfigPath);
    const Case cases[] = {
        {"no arguments", {}, {def, false, false, false, ""}},
        {"-c FILE", {"-c", "/x.ini"}, {"/x.ini", false, false, false, ""}},
        {"--config=FILE", {"--config=/x.ini"}, {"/x.ini", false, false, false, ""}},
        {"--config FILE", {"--config", "/x.ini"}, {"/x.ini", false, false, false, ""}},
        {"--config=FILE with = in it", {"--config=/a=b.ini"}, {"/a=b.ini", false, false, false, ""}},
        {"last -c wins", {"-c", "/a", "-c", "/b"}, {"/b", false, false, false, ""}},
        {"--check-config", {"--check-config"}, {def, true, false, false, ""}},
        {"--check-config -c FILE", {"--check-config", "-c", "/y"}, {"/y", true, false, false, ""}},
        {"-V", {"-V"}, {def, false, true, false, ""}},
        {"--version", {"--version"}, {def, false, true, false, ""}},
        {"-h", {"-h"}, {def, false, false, true, ""}},
        {"--help", {"--help"}, {def, false, false, true, ""}},
        {"--hash-password USER", {"--hash-password", "alice"}, {def, false, false, false, "alice"}},
        {"--hash-password=USER", {"--hash-password=bob"}, {def, false, false, false, "bob"}},
    };
    for (const auto& c : cases) {
        BOOST_TEST_CONTEXT(c.name)
        {
            auto r = cfg::parse_command_line(c.args);
            BOOST_TEST_REQUIRE(r.ok(), why(r));
            BOOST_TEST(r.value().config_path == c.want.config_path);
            BOOST_TEST(r.value().check_config == c.want.check_config);
            BOOST_TEST(r.value().hash_password_user == c.want.hash_password_user);
            BOOST_TEST(r.value().version == c.want.version);
            BOOST_TEST(r.value().help == c.want.help);
        }
    }
}

BOOST_AUTO_TEST_CASE(parse_command_line_errors_name_the_flag)
{
    struct Case {
        const char* name;
        std::vector<std::string> args;
        std::string want;
    };
    const Case cases[] = {
        {"unknown long flag", {"--bogus"}, "unknown option \"--bogus\""},
        {"unknown short flag", {"-x"}, "unknown option \"-x\""},
        {"unknown flag after a good one", {"-V", "--verbose"}, "unknown option \"--verbose\""},
        {"-c without FILE", {"-c"}, "option \"-c\" requires an argument FILE"},
        {"--config without FILE", {"--config"}, "option \"--config\" requires an argument FILE"},
        {"argument to a plain flag", {"--help=yes"}, "option \"--help\" takes no argument"},
        {"stray argument", {"pgwicket.ini"}, "unexpected argument \"pgwicket.ini\""},
        {"stray argument after -c FILE", {"-c", "/a", "extra"}, "unexpected argument \"extra\""},
    };
    for (const auto& c : cases) {
        BOOST_TEST_CONTEXT(c.name)
        {
            auto r = cfg::parse_command_line(c.args);
            BOOST_TEST_REQUIRE(!r.ok());
            BOOST_TEST(r.error() == c.want);
        }
    }
}

BOOST_AUTO_TEST_CASE(getopt_forms_and_double_dash)
{
    auto r = cfg::parse_command_line({"-c/etc/x.ini"});
    BOOST_TEST_REQUIRE(r.ok(), why(r));
    BOOST_TEST(r.value().config_path == "/etc/x.ini");
    auto e = cfg::parse_command_line({"--config="});
    BOOST_TEST_REQUIRE(!e.ok());
    BOOST_TEST(e.error().find("non-empty FILE") != std::string::npos, e.error());
    auto v = cfg::parse_command_line({"-Vx"});
    BOOST_TEST_REQUIRE(!v.ok());
    BOOST_TEST(v.error().find("\"-V\" takes no argument") != std::string::npos, v.error());
    auto dd = cfg::parse_command_line({"--check-config", "--", "stray"});
    BOOST_TEST_REQUIRE(!dd.ok());
    BOOST_TEST(dd.error().find("unexpected argument \"stray\"") != std::string::npos, dd.error());
    auto ok = cfg::parse_command_line({"--check-config", "--"});
    BOOST_TEST(ok.ok(), why(ok));
}

BOOST_AUTO_TEST_CASE(usage_text_lists_every_flag)
{
    const std::string u = cfg::usage_text("pgwicket");
    BOOST_TEST(u.find("Usage:\n  pgwicket [OPTION]...") != std::string::npos, u);
    BOOST_TEST(u.find("-c, --config FILE") != std::string::npos, u);
    BOOST_TEST(u.find(std::string(cfg::kDefaultConfigPath)) != std::string::npos, u);
    BOOST_TEST(std::string(cfg::kDefaultConfigPath).find("/pgwicket/pgwicket.ini") !=
               std::string::npos);
    BOOST_TEST(cfg::flags().size() >= 4u);
    for (const auto& f : cfg::flags()) {
        BOOST_TEST_CONTEXT(f.long_name)
        {
            // The help text starts in the same column for every flag.
            const std::string flag = "--" + std::string(f.long_name);
            size_t at = u.find(flag);
            BOOST_TEST_REQUIRE(at != std::string::npos, u);
            size_t line_start = u.rfind('\n', at) + 1;
            size_t help_at = u.find(std::string(f.help), at);
            BOOST_TEST_REQUIRE(help_at != std::string::npos, u);
            BOOST_TEST(help_at - line_start == 28u);
            if (f.short_name)
                BOOST_TEST(u.substr(line_start, 6) == "  -" + std::string(1, f.short_name) + ", ");
            // Whatever usage_text lists, the parser accepts.
            std::vector<std::string> args = {flag};
            if (!f.argument.empty())
                args.push_back("/some/file");
            BOOST_TEST(cfg::parse_command_line(args).ok());
        }
    }
}

BOOST_AUTO_TEST_CASE(usage_text_uses_the_program_name)
{
    const std::string u = cfg::usage_text("/usr/sbin/pgw");
    BOOST_TEST(u.find("  /usr/sbin/pgw [OPTION]...") != std::string::npos, u);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(config_operations)

BOOST_AUTO_TEST_CASE(admin_and_stats_users)
{
    auto r = cfg::load_string("[pgwicket]\nadmin_users = alice,bob  carol\nstats_users = dave\n" + kMinimalDatabases);
    BOOST_TEST_REQUIRE(r.ok(), why(r));
    for (const char* u : {"alice", "bob", "carol"}) {
        BOOST_TEST(r->is_admin_user(u), u);
        BOOST_TEST(r->is_stats_user(u), u << " (admins may SHOW too)");
    }
    BOOST_TEST(!r->is_admin_user("dave"));
    BOOST_TEST(r->is_stats_user("dave"));
    BOOST_TEST(!r->is_stats_user("eve"));
    BOOST_TEST(!r->is_admin_user(""));
    BOOST_TEST(!r->is_stats_user("ali"));  // whole names only
}

BOOST_AUTO_TEST_CASE(metrics_listen_forms_and_errors)
{
    auto hp = cfg::parse_host_port("127.0.0.1:9632");
    BOOST_TEST_REQUIRE(hp.ok());
    BOOST_TEST(hp->host == "127.0.0.1");
    BOOST_TEST(hp->port == "9632");
    auto v6 = cfg::parse_host_port("[::1]:9632");
    BOOST_TEST_REQUIRE(v6.ok());
    BOOST_TEST(v6->host == "::1");
    auto any = cfg::parse_host_port(":9632");
    BOOST_TEST_REQUIRE(any.ok());
    BOOST_TEST(any->host.empty());
    for (const char* bad : {"127.0.0.1", "127.0.0.1:", "host:http", "host:0", "host:70000"})
        BOOST_TEST(!cfg::parse_host_port(bad).ok(), bad);

    std::string e = error_of("[pgwicket]\nlog_level = info\nmetrics_listen = localhost\n" + kMinimalDatabases);
    BOOST_TEST(e.find("test.ini:3: option \"metrics_listen\"") != std::string::npos, e);
    BOOST_TEST(e.find("has no port") != std::string::npos, e);
}

BOOST_AUTO_TEST_CASE(option_values_read_back_as_written)
{
    auto r = cfg::load_string("[pgwicket]\nunix_socket_mode = 0700\nshutdown_timeout = 5\nsyslog_facility = local7\n" +
                              kMinimalDatabases);
    BOOST_TEST_REQUIRE(r.ok(), why(r));
    BOOST_TEST(cfg::option_value(*r, *cfg::find_option("unix_socket_mode")) == "0700");
    BOOST_TEST(cfg::option_value(*r, *cfg::find_option("shutdown_timeout")) == "5");
    BOOST_TEST(cfg::option_value(*r, *cfg::find_option("syslog_facility")) == "local7");
    std::string e = error_of("[pgwicket]\nsyslog_facility = kern\n" + kMinimalDatabases);
    BOOST_TEST(e.find("local7") != std::string::npos, e);
    e = error_of("[pgwicket]\nsyslog = yes\n" + kMinimalDatabases);
    BOOST_TEST(e.find("syslog") != std::string::npos, e);
}

BOOST_AUTO_TEST_CASE(log_settings_follow_the_config)
{
    auto r = cfg::load_string("[pgwicket]\nlog_level = debug\nlogfile = /tmp/x.log\nsyslog = 1\nsyslog_ident = gate\n" +
                              kMinimalDatabases);
    BOOST_TEST_REQUIRE(r.ok(), why(r));
    auto s = cfg::log_settings(*r);
    BOOST_TEST(int(s.level) == int(pgw::log::Level::Debug));
    BOOST_TEST(s.logfile == "/tmp/x.log");
    BOOST_TEST(s.syslog);
    BOOST_TEST(s.syslog_ident == "gate");
    BOOST_TEST(s.syslog_facility == "daemon");
}

BOOST_AUTO_TEST_SUITE_END()

// The auth files behind the options: rules, users and their errors with file and line.
BOOST_AUTO_TEST_SUITE(config_auth)

namespace {
std::string write_temp(const std::string& text)
{
    char path[] = "/tmp/pgwicket-unit-XXXXXX";
    int fd = mkstemp(path);
    BOOST_REQUIRE(fd >= 0);
    BOOST_REQUIRE(::write(fd, text.data(), text.size()) == ssize_t(text.size()));
    ::close(fd);
    return path;
}
} // namespace

BOOST_AUTO_TEST_CASE(hba_rules_match_in_order)
{
    std::string hba = write_temp("# rules\nhost all bob all reject\nhostssl orders all 10.0.0.0/8 scram-sha-256\n"
                                 "host all all 127.0.0.1 trust\nlocal all all md5\n");
    std::string users = write_temp("\"alice\" \"md5" + std::string(32, 'a') + "\"\n");
    auto r = cfg::load_string("[pgwicket]\nauth_type = hba\nauth_hba_file = " + hba + "\nauth_file = " + users +
                              "\n" + kMinimalDatabases);
    BOOST_TEST_REQUIRE(r.ok(), why(r));
    BOOST_TEST(r->rules.size() == 4u);
    BOOST_TEST(r->users.count("alice") == 1u);
    sockaddr_storage lo{}, ten{};
    auto set4 = [](sockaddr_storage& ss, const char* a) {
        auto* v4 = reinterpret_cast<sockaddr_in*>(&ss);
        v4->sin_family = AF_INET;
        inet_pton(AF_INET, a, &v4->sin_addr);
    };
    set4(lo, "127.0.0.1");
    set4(ten, "10.1.2.3");
    using pgw::auth::Method;
    auto method = [&](bool local, bool tls, const sockaddr_storage* peer, const char* db, const char* user) {
        const auto* rule = pgw::auth::match_rule(r->rules, {local, tls, peer, db, user});
        return rule ? int(rule->method) : -1;
    };
    BOOST_TEST(method(false, false, &lo, "orders", "bob") == int(Method::Reject));
    BOOST_TEST(method(false, true, &ten, "orders", "alice") == int(Method::Scram));
    BOOST_TEST(method(false, false, &ten, "orders", "alice") == -1);  // hostssl needs TLS
    BOOST_TEST(method(false, true, &ten, "sales", "alice") == -1);
    BOOST_TEST(method(false, false, &lo, "sales", "alice") == int(Method::Trust));
    BOOST_TEST(method(true, false, nullptr, "sales", "alice") == int(Method::Md5));
    ::unlink(hba.c_str());
    ::unlink(users.c_str());
}

BOOST_AUTO_TEST_CASE(auth_file_errors_name_file_and_line)
{
    std::string hba = write_temp("host all all all bogus\n");
    std::string e = error_of("[pgwicket]\nauth_type = hba\nauth_hba_file = " + hba + "\n" + kMinimalDatabases);
    BOOST_TEST(e.find(hba + ":1: unknown method \"bogus\"") != std::string::npos, e);
    std::string users = write_temp("\"alice\" \"SCRAM-SHA-256$4096:bad\"\n\"bob\" \"plaintext\"\n");
    e = error_of("[pgwicket]\nauth_type = scram-sha-256\nauth_file = " + users + "\n" + kMinimalDatabases);
    BOOST_TEST(e.find(users + ":1: user \"alice\"") != std::string::npos, e);
    e = error_of("[pgwicket]\nauth_type = scram-sha-256\n" + kMinimalDatabases);
    BOOST_TEST(e.find("need auth_file") != std::string::npos, e);
    e = error_of("[pgwicket]\nauth_type = jwt\n" + kMinimalDatabases);
    BOOST_TEST(e.find("the jwt method needs jwt_issuer and jwt_audience") != std::string::npos, e);
    ::unlink(hba.c_str());
    ::unlink(users.c_str());
}

BOOST_AUTO_TEST_CASE(identity_map_and_roles)
{
    auto r = cfg::load_string(kMinimalDatabases + "[identity_map]\nalice@example.com = alice, readonly\n"
                                                  "[roles]\ndba = postgres\nanalysts = reader\n");
    BOOST_TEST_REQUIRE(r.ok(), why(r));
    BOOST_TEST((r->identity_map.at("alice@example.com") == std::vector<std::string>{"alice", "readonly"}));
    BOOST_TEST(*r->role_for({"analysts", "dba"}) == "postgres");  // file order, not token order
    BOOST_TEST(*r->role_for({"analysts"}) == "reader");
    BOOST_TEST(r->role_for({"others"}) == nullptr);
    std::string e = error_of(kMinimalDatabases + "[roles]\ndba = two words\n");
    BOOST_TEST(e.find("one upstream role") != std::string::npos, e);
}

BOOST_AUTO_TEST_SUITE_END()
