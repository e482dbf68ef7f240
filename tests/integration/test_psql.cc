// psql through pgwicket must look exactly like psql connected directly: each case runs the
// same script both ways and compares psql's whole output (stdout and stderr) and exit code.
#include "harness.hh"

#include <boost/test/unit_test.hpp>

#include <regex>
#include <sstream>

using namespace pgw::it;

namespace {

}  // namespace

BOOST_AUTO_TEST_SUITE(psql_transparency)

BOOST_AUTO_TEST_CASE(simple_queries)
{
    auto p = check_same_psql("SELECT 1", "SELECT 1;\n");
    BOOST_TEST(contains(p.out, "?column? \n----------\n        1\n(1 row)"), excerpt(p.out));
    check_same_psql("two statements on one line", "SELECT 1; SELECT 2;\n");
    // -c sends both statements in one Query message: two results before one ReadyForQuery.
    PsqlOptions one_message;
    one_message.args = {"-c", "SELECT 1 AS a; SELECT 2 AS b;"};
    p = check_same_psql("two statements in one Query message", "", "postgres", "postgres",
                        one_message);
    BOOST_TEST(contains(p.out, "b \n---\n 2\n"), excerpt(p.out));
    check_same_psql("empty query and comments", ";\n-- nothing\n/* still nothing */ ;\n");
    check_same_psql("types and NULLs",
                    "SELECT NULL::int AS n, 'x'::text AS t, 1.5::numeric AS num, "
                    "'2024-02-29'::date AS d, '{1,2}'::int[] AS arr, true AS b, "
                    "'\\x00ff'::bytea AS bin, repeat('é', 3) AS utf8;\n");
}

BOOST_AUTO_TEST_CASE(describe_commands)
{
    check_same_psql("\\d", "\\d\n");
    check_same_psql("\\dt", "\\dt\n");
    auto p = check_same_psql("\\d+ shop.orders", "\\d+ shop.orders\n");
    BOOST_TEST(contains(p.out, "orders_customer_idx"), excerpt(p.out));
    check_same_psql("\\d shop.big_orders", "\\d+ shop.big_orders\n");
    check_same_psql("\\l", "\\l\n");
    check_same_psql("\\dn", "\\dn\n");
    check_same_psql("\\du and \\df", "\\du\n\\df shop.*\n\\dx\n");
}

BOOST_AUTO_TEST_CASE(dml_returning)
{
    auto p = check_same_psql("INSERT/UPDATE/DELETE RETURNING", R"(
CREATE TEMP TABLE t (id int PRIMARY KEY, v text);
INSERT INTO t VALUES (1, 'one'), (2, 'two'), (3, 'three') RETURNING *;
INSERT INTO t VALUES (4, 'four');
UPDATE t SET v = upper(v) WHERE id >= 2 RETURNING id, v;
DELETE FROM t WHERE id = 3 RETURNING *;
INSERT INTO t VALUES (1, 'dup') ON CONFLICT (id) DO UPDATE SET v = 'again' RETURNING *;
SELECT * FROM t ORDER BY id;
)");
    BOOST_TEST(contains(p.out, "  2 | TWO\n"), excerpt(p.out));
}

BOOST_AUTO_TEST_CASE(error_syntax)
{
    auto p = check_same_psql("syntax error", "\\set VERBOSITY verbose\nSELECT * FORM items;\n"
                                             "SELECT 1,\n  2,\n  3 +;\n");
    BOOST_TEST(contains(p.out, "ERROR:  42601: syntax error at or near \"FORM\""), excerpt(p.out));
    BOOST_TEST(contains(p.out, "LINE 1: SELECT * FORM items;\n                 ^"), excerpt(p.out));
}

BOOST_AUTO_TEST_CASE(error_unknown_table)
{
    auto p = check_same_psql("unknown table",
                             "\\set VERBOSITY verbose\nSELECT id FROM items JOIN no_such_table "
                             "USING (id);\nSELECT nosuchcol FROM items;\n");
    BOOST_TEST(contains(p.out, "42P01: relation \"no_such_table\" does not exist"), excerpt(p.out));
    BOOST_TEST(contains(p.out, "42703"), excerpt(p.out));
}

BOOST_AUTO_TEST_CASE(error_permission_as_alice)
{
    auto p = check_same_psql("permission denied",
                             "\\set VERBOSITY verbose\nSELECT current_user;\n"
                             "SELECT * FROM secret;\nSELECT name FROM items ORDER BY id;\n",
                             "postgres", "alice");
    BOOST_TEST(contains(p.out, "ERROR:  42501: permission denied for table secret"),
               excerpt(p.out));
    BOOST_TEST(contains(p.out, " alice\n"), excerpt(p.out));
}

BOOST_AUTO_TEST_CASE(error_detail_hint_context)
{
    auto p = check_same_psql("DETAIL, HINT, CONTEXT", R"(\set VERBOSITY verbose
BEGIN;
INSERT INTO items (name, price) VALUES ('apple', 1);
ROLLBACK;
SELECT no_such_function(1, 'x');
DO $$ BEGIN RAISE EXCEPTION 'custom failure %', 7 USING DETAIL = 'the detail', HINT = 'the hint', ERRCODE = 'P0099'; END $$;
SELECT 1/0;
INSERT INTO items (id, name, price) VALUES (1000, 'negative', -1);
\set VERBOSITY default
SELECT 1/0;
)");
    BOOST_TEST(contains(p.out, "23505: duplicate key value violates unique constraint"),
               excerpt(p.out));
    BOOST_TEST(contains(p.out, "DETAIL:  Key (name)=(apple) already exists."), excerpt(p.out));
    BOOST_TEST(contains(p.out, "HINT:  No function matches the given name and argument types."),
               excerpt(p.out));
    BOOST_TEST(contains(p.out, "ERROR:  P0099: custom failure 7\nDETAIL:  the detail\n"
                               "HINT:  the hint\n"),
               excerpt(p.out));
}

// Transaction state shown in the prompt (%x) comes from ReadyForQuery: idle, in a block (*),
// failed block (!). Only an interactive psql prints prompts, so this one runs on a pty.
BOOST_AUTO_TEST_CASE(transaction_state_in_prompt)
{
    const std::string script = R"(\set PROMPT1 '%x|'
\set PROMPT2 '%x>'
\set VERBOSITY verbose
SELECT 1 AS one;
BEGIN;
CREATE TEMP TABLE tx (a int);
INSERT INTO tx VALUES (1);
SELECT nosuchcolumn FROM tx;
SELECT 2 AS two;
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
SELECT 3 AS three;
\set ON_ERROR_ROLLBACK on
BEGIN;
CREATE TEMP TABLE r (a int);
INSERT INTO r VALUES (1);
INSERT INTO r VALUES ('not a number');
INSERT INTO r VALUES (2);
SELECT count(*) AS kept FROM r;
COMMIT;
SELECT count(*) AS after_commit FROM r;
)";
    PsqlOptions o;
    o.interactive = true;
    o.timeout_s = 60;
    auto d = psql(env().direct(), script, o);
    auto p = psql(env().proxied(), script, o);
    check_same_output("interactive psql with %x prompt", d, p);
    // The harness itself must show the states, or the comparison above proves nothing.
    BOOST_TEST(contains(d.out, "*|"), excerpt(d.out));
    BOOST_TEST(contains(d.out, "!|"), excerpt(d.out));
    BOOST_TEST(contains(p.out, "*|"), excerpt(p.out));
    BOOST_TEST(contains(p.out, "!|"), excerpt(p.out));
    BOOST_TEST(contains(p.out, "25P02"), excerpt(p.out));
    BOOST_TEST(contains(p.out, " after_commit \n--------------\n            2\n"), excerpt(p.out));
}

BOOST_AUTO_TEST_CASE(transaction_state_in_script)
{
    auto p = check_same_psql("transaction states, ON_ERROR_ROLLBACK", R"(
BEGIN;
SELECT 1/0;
SELECT 1;
\echo last error: :LAST_ERROR_SQLSTATE
ROLLBACK;
\set ON_ERROR_ROLLBACK on
BEGIN;
CREATE TEMP TABLE r (a int);
INSERT INTO r VALUES (1);
INSERT INTO r VALUES ('x');
\echo last error: :LAST_ERROR_SQLSTATE
INSERT INTO r VALUES (2);
COMMIT;
SELECT count(*) FROM r;
BEGIN; SAVEPOINT s1; SELECT 1/0; ROLLBACK TO SAVEPOINT s1; SELECT 'recovered' AS state; COMMIT;
)");
    BOOST_TEST(contains(p.out, "last error: 25P02"), excerpt(p.out));
    BOOST_TEST(contains(p.out, "last error: 22P02"), excerpt(p.out));
    BOOST_TEST(contains(p.out, " recovered\n"), excerpt(p.out));
}

BOOST_AUTO_TEST_CASE(copy_round_trip)
{
    // Rows with escapes, NULLs and UTF-8, so a relay that touches bytes shows.
    std::ostringstream rows;
    for (int i = 1; i <= 3000; ++i) {
        rows << i << "\tname " << i;
        if (i % 10 == 0)
            rows << "\\twith\\ttabs\\\\and\\\\backslash";
        if (i % 13 == 0)
            rows << " caf\xc3\xa9";
        rows << "\t";
        if (i % 11 == 0)
            rows << "\\N";
        else
            rows << i << ".25";
        rows << "\n";
    }
    const std::string data = rows.str();
    const std::string file = env().tmpdir + "/copy_round_trip.tsv";
    const std::string sum =
        "SELECT count(*), md5(string_agg(id || ':' || coalesce(t, '<null>') || ':' || "
        "coalesce(n::text, '<null>'), ',' ORDER BY id)) FROM ";
    const std::string script =
        "CREATE TEMP TABLE c (id int, t text, n numeric);\n"
        "COPY c FROM STDIN;\n" +
        data + "\\.\n" + sum + "c;\n" +
        "COPY c TO STDOUT;\n"
        "COPY (SELECT * FROM c WHERE id % 7 = 0) TO STDOUT WITH (FORMAT csv, "
        "HEADER);\n"
        "COPY (SELECT * FROM c WHERE id < 50) TO STDOUT WITH (FORMAT binary);\n"
        "\\copy c TO '" +
        file +
        "'\n"
        "CREATE TEMP TABLE c2 (LIKE c);\n"
        "\\copy c2 FROM '" +
        file + "'\n" + sum + "c2;\n" +
        "\\set VERBOSITY verbose\n"
        "COPY c FROM STDIN;\n1\tok\t1\n2\tbad\tnot-a-number\n\\.\n"
        "SELECT count(*) FROM c;\n";
    auto p = check_same_psql("COPY and \\copy round trip", script);
    // The table went in and came back out byte for byte.
    BOOST_TEST(contains(p.out, data), "COPY TO STDOUT did not return the rows sent");
    BOOST_TEST(read_file(file) == data);
    std::regex sums("\\s+3000 \\| ([0-9a-f]{32})\n");
    std::vector<std::string> found;
    for (auto it = std::sregex_iterator(p.out.begin(), p.out.end(), sums);
         it != std::sregex_iterator(); ++it)
        found.push_back((*it)[1]);
    BOOST_TEST_REQUIRE(found.size() == 2u, excerpt(p.out));
    BOOST_TEST(found[0] == found[1], "\\copy round trip changed the data");
    BOOST_TEST(contains(p.out, "22P02: invalid input syntax for type numeric: \"not-a-number\""),
               tail(p.out, 10));
}

BOOST_AUTO_TEST_CASE(notices_and_warnings)
{
    auto p = check_same_psql("NOTICE/WARNING/INFO from RAISE", R"(
DO $$ BEGIN
  RAISE NOTICE 'hello % from DO', 42;
  RAISE WARNING 'careful' USING DETAIL = 'some detail', HINT = 'some hint';
  RAISE INFO 'for your information';
END $$;
SET client_min_messages = warning;
DO $$ BEGIN RAISE NOTICE 'hidden'; RAISE WARNING 'shown'; END $$;
RESET client_min_messages;
\set VERBOSITY verbose
DO $$ BEGIN RAISE NOTICE 'verbose notice'; END $$;
CREATE TEMP TABLE IF NOT EXISTS n1 (a int);
CREATE TEMP TABLE IF NOT EXISTS n1 (a int);
SELECT 'after notices' AS done;
)");
    BOOST_TEST(contains(p.out, "NOTICE:  hello 42 from DO\n"), excerpt(p.out));
    BOOST_TEST(contains(p.out, "WARNING:  careful\nDETAIL:  some detail\nHINT:  some hint\n"),
               excerpt(p.out));
    BOOST_TEST(!contains(p.out, "hidden"), excerpt(p.out));
    BOOST_TEST(contains(p.out, "NOTICE:  42P07: relation \"n1\" already exists, skipping"),
               excerpt(p.out));
}

BOOST_AUTO_TEST_CASE(listen_notify)
{
    // The second session is started by the first one's psql (\!), through the same route, so
    // the notification is in flight before the first session's next query.
    auto script = [](const std::string& conninfo) {
        return "LISTEN ch;\n\\! '" + env().bin("psql") + "' -X -q -d '" + conninfo +
               "' -c \"NOTIFY ch, 'x'\"\nSELECT 1 AS after_notify;\n"
               "UNLISTEN ch;\n\\! '" +
               env().bin("psql") + "' -X -q -d '" + conninfo +
               "' -c \"NOTIFY ch, 'y'\"\nSELECT 2 AS after_unlisten;\n"
               "SELECT pg_notify('ch', 'not listening');\n";
    };
    auto d = psql(env().direct(), script(env().direct()));
    auto p = psql(env().proxied(), script(env().proxied()));
    // Only the backend PID in the message differs by nature (another backend answers).
    std::regex pid("server process with PID [0-9]+");
    auto dm = d;
    auto pm = p;
    dm.out = std::regex_replace(d.out, pid, "server process with PID N");
    pm.out = std::regex_replace(p.out, pid, "server process with PID N");
    check_same_output("LISTEN/NOTIFY between two sessions", dm, pm);
    BOOST_TEST(contains(p.out, "Asynchronous notification \"ch\" with payload \"x\" received from "
                               "server process with PID "),
               excerpt(p.out));
    BOOST_TEST(!contains(p.out, "payload \"y\""), excerpt(p.out));
}

BOOST_AUTO_TEST_CASE(set_and_show)
{
    auto p = check_same_psql("SET/SHOW, client_encoding, DateStyle", R"(
SET work_mem TO '3MB';
SHOW work_mem;
SET search_path TO shop, public;
SHOW search_path;
SELECT count(*) FROM orders;
RESET ALL;
SHOW work_mem;
SET client_encoding TO 'LATIN1';
SHOW client_encoding;
\encoding
SELECT 'caf' || chr(233) AS word, length('caf' || chr(233)) AS len;
RESET client_encoding;
\encoding
SET DateStyle TO 'German';
SHOW DateStyle;
SELECT '2024-01-31'::date;
SET TimeZone TO 'Asia/Kolkata';
SELECT '2024-01-31 12:00:00+00'::timestamptz AS ts;
SET intervalstyle TO 'iso_8601';
SELECT '1 day 2 hours'::interval AS iv;
)");
    BOOST_TEST(contains(p.out, " LATIN1\n"), excerpt(p.out));
    BOOST_TEST(contains(p.out, "\nLATIN1\n"),
               "\\encoding must follow ParameterStatus: " << excerpt(p.out));
    BOOST_TEST(contains(p.out, "31.01.2024"), excerpt(p.out));
    BOOST_TEST(contains(p.out, "caf\xe9"), "server-side conversion to LATIN1: " << excerpt(p.out));
}

BOOST_AUTO_TEST_CASE(startup_parameters_applied_upstream)
{
    PsqlOptions o;
    o.env = {{"PGOPTIONS", "-c work_mem=7MB -c DateStyle=German"}, {"PGCLIENTENCODING", "LATIN1"}};
    auto p = check_same_psql("PGOPTIONS and PGCLIENTENCODING",
                             "SHOW work_mem;\nSHOW DateStyle;\nSHOW client_encoding;\n\\encoding\n"
                             "SELECT '2024-01-31'::date;\n",
                             "postgres", "postgres", o);
    BOOST_TEST(contains(p.out, " 7MB\n"), excerpt(p.out));
    BOOST_TEST(contains(p.out, "31.01.2024"), excerpt(p.out));
    BOOST_TEST(contains(p.out, "\nLATIN1\n"), excerpt(p.out));

    // The upstream application_name names the client: "pgwicket <addr> <client's name>".
    Conn c = connect_ok(env().proxied("postgres", "postgres", "application_name=pgw_it_appname"));
    std::string own = scalar(c.get(), "SELECT application_name FROM pg_stat_activity "
                                      "WHERE pid = pg_backend_pid()");
    std::string seen = direct_scalar("SELECT string_agg(application_name, ',') FROM "
                                     "pg_stat_activity WHERE application_name LIKE "
                                     "'%pgw_it_appname%'");
    BOOST_TEST(own == seen);
    BOOST_TEST(seen.rfind("pgwicket ", 0) == 0u, seen);
    BOOST_TEST(contains(seen, "127.0.0.1"), seen);
    BOOST_TEST(contains(seen, "pgw_it_appname"), seen);

    // psql's PGAPPNAME reaches upstream too (a name of its own, so no other session counts).
    PsqlOptions named;
    named.env = {{"PGAPPNAME", "pgw_it_psql_appname"}};
    auto r = psql(env().proxied(),
                  "\\! '" + env().bin("psql") + "' -X -A -t -d '" + env().direct() +
                      "' -c \"SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE "
                      "'pgwicket %pgw_it_psql_appname'\"\n",
                  named);
    BOOST_TEST(r.out == "1\n", "sessions upstream named after PGAPPNAME: " << excerpt(r.out));
}

BOOST_AUTO_TEST_CASE(unix_socket)
{
    const std::string script = "SELECT 1 AS via_socket;\n\\set VERBOSITY verbose\nSELECT 1/0;\n"
                               "SELECT current_database(), current_user;\n";
    auto d = psql("host=" + env().tmpdir + " port=" + std::to_string(env().pg_port) +
                      " dbname=postgres user=postgres",
                  script);
    auto p = psql("host=" + env().tmpdir + " port=" + std::to_string(env().proxy->port()) +
                      " dbname=postgres user=postgres",
                  script);
    check_same_output("psql -h <socket dir> -p <port>", d, p);
    BOOST_TEST(contains(p.out, " via_socket \n------------\n          1\n"), excerpt(p.out));
}

BOOST_AUTO_TEST_CASE(tls_upstream)
{
    const std::string script = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid();\n"
                               "SELECT g, md5(g::text) FROM generate_series(1, 100000) g;\n";
    auto d = psql(env().direct("postgres", "postgres", "sslmode=require"), script);
    auto p = psql(env().proxied("tlsdb"), script);
    check_same_output("tlsdb: TLS to the upstream, 100k rows", d, p);
    BOOST_TEST(p.out.rfind(" ssl \n-----\n t\n(1 row)\n", 0) == 0u, excerpt(p.out));
    BOOST_TEST(contains(p.out, "(100000 rows)"), tail(p.out, 3));
    // The plain route must not be TLS, or the check above could not tell them apart.
    auto plain =
        psql(env().proxied(), "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid();\n");
    BOOST_TEST(contains(plain.out, " f\n"), excerpt(plain.out));
}

BOOST_AUTO_TEST_CASE(forced_upstream_user)
{
    const std::string script = "SELECT current_user, session_user, current_database();\n"
                               "\\set VERBOSITY verbose\nSELECT * FROM secret;\n";
    auto d = psql(env().direct("postgres", "alice"), script);
    auto p = psql(env().proxied("asalice", "postgres"), script);
    check_same_output("user= in the route forces the upstream user", d, p);
    BOOST_TEST(contains(p.out, " alice        | alice        | postgres\n"), excerpt(p.out));
}

BOOST_AUTO_TEST_SUITE_END()
