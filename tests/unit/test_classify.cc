// Unit tests for src/policy/classify: a table of statements (kinds, writes, read-only),
// evasion attempts, function names, parse errors, normalize/fingerprint, the cache.
#include "policy/classify.hh"
#include "policy/deep_stack.hh"

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace pol = pgw::policy;
using pol::Kind;

namespace {

struct Row {
    const char* sql;
    std::vector<Kind> kinds;  // one per statement
    bool writes;              // does any statement write?
    bool read_only;           // is every statement read-only under the built-in allowlist?
};

constexpr bool W = true;   // writes
constexpr bool NW = false;  // does not write
constexpr bool RO = true;  // read-only
constexpr bool NR = false;  // not read-only

// clang-format off
const std::vector<Row> kCorpus = {
    // ---- plain reads
    {"SELECT 1", {Kind::Select}, NW, RO},
    {"select 1", {Kind::Select}, NW, RO},
    {"SELECT * FROM t WHERE a = 1", {Kind::Select}, NW, RO},
    {"VALUES (1), (2)", {Kind::Select}, NW, RO},
    {"TABLE t", {Kind::Select}, NW, RO},
    {"SELECT a FROM t UNION SELECT b FROM u EXCEPT SELECT c FROM v", {Kind::Select}, NW, RO},
    {"SELECT count(*), sum(a), avg(a), min(a), max(a) FROM t", {Kind::Select}, NW, RO},
    {"SELECT lower(name), upper(name), length(name), concat(a, b) FROM t", {Kind::Select}, NW, RO},
    {"SELECT now(), current_timestamp, current_user, current_database()", {Kind::Select}, NW, RO},
    {"SELECT pg_size_pretty(pg_total_relation_size('t')), pg_relation_size('t')", {Kind::Select}, NW, RO},
    {"SELECT * FROM pg_stat_activity", {Kind::Select}, NW, RO},
    {"SELECT coalesce(a, 0), nullif(a, 1), greatest(a, b), least(a, b) FROM t", {Kind::Select}, NW, RO},
    {"SELECT date_trunc('day', ts), extract(year FROM ts), to_char(ts, 'YYYY') FROM t", {Kind::Select}, NW, RO},
    {"SELECT * FROM generate_series(1, 10) AS g(n)", {Kind::Select}, NW, RO},
    {"SELECT jsonb_build_object('a', 1) -> 'a', to_jsonb(t) FROM t", {Kind::Select}, NW, RO},
    {"SELECT string_agg(name, ',' ORDER BY name), array_agg(a) FROM t", {Kind::Select}, NW, RO},
    {"SELECT row_number() OVER (ORDER BY a), lag(a) OVER w FROM t WINDOW w AS (ORDER BY a)", {Kind::Select}, NW, RO},
    {"SELECT substring(s FROM 1 FOR 3), trim(both ' ' FROM s), position('a' IN s) FROM t", {Kind::Select}, NW, RO},
    {"SELECT ts AT TIME ZONE 'UTC', (a, b) OVERLAPS (c, d) FROM t", {Kind::Select}, NW, RO},
    {"SELECT CASE WHEN a > 0 THEN 'p' ELSE 'n' END FROM t", {Kind::Select}, NW, RO},
    {"SELECT EXISTS (SELECT 1 FROM u WHERE u.id = t.id) FROM t", {Kind::Select}, NW, RO},
    {"WITH x AS (SELECT 1 AS a) SELECT a FROM x", {Kind::Select}, NW, RO},
    {"WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 10) SELECT * FROM r", {Kind::Select}, NW, RO},
    {"SELECT pg_catalog.lower('A'), PG_CATALOG.upper('a')", {Kind::Select}, NW, RO},
    {"SELECT version()", {Kind::Select}, NW, RO},
    {"SELECT a::text, CAST(b AS int) FROM t LIMIT 10 OFFSET 5", {Kind::Select}, NW, RO},
    {"SELECT abalance FROM pgbench_accounts WHERE aid = $1", {Kind::Select}, NW, RO},
    {"SELECT LOWER('A')", {Kind::Select}, NW, RO},
    {"SELECT c.relname, pg_catalog.pg_get_userbyid(c.relowner) FROM pg_catalog.pg_class c "
     "WHERE pg_catalog.pg_table_is_visible(c.oid) ORDER BY 1", {Kind::Select}, NW, RO},

    // ---- row locks
    {"SELECT * FROM t FOR UPDATE", {Kind::SelectForUpdate}, W, NR},
    {"SELECT * FROM t FOR NO KEY UPDATE NOWAIT", {Kind::SelectForUpdate}, W, NR},
    {"SELECT * FROM t FOR SHARE", {Kind::SelectForShare}, W, NR},
    {"SELECT * FROM t FOR KEY SHARE SKIP LOCKED", {Kind::SelectForShare}, W, NR},
    {"SELECT * FROM t, u FOR SHARE OF t FOR UPDATE OF u", {Kind::SelectForUpdate}, W, NR},
    {"SELECT * FROM (SELECT * FROM t FOR UPDATE) s", {Kind::SelectForUpdate}, W, NR},
    {"WITH l AS (SELECT * FROM t FOR SHARE) SELECT * FROM l", {Kind::SelectForShare}, W, NR},

    // ---- SELECT INTO
    {"SELECT * INTO newtable FROM t", {Kind::SelectInto}, W, NR},
    {"SELECT a INTO TEMP tmp FROM t", {Kind::SelectInto}, W, NR},
    {"SELECT 1 AS x INTO UNLOGGED t2", {Kind::SelectInto}, W, NR},

    // ---- DML
    {"INSERT INTO t VALUES (1)", {Kind::Insert}, W, NR},
    {"INSERT INTO t SELECT * FROM u", {Kind::Insert}, W, NR},
    {"INSERT INTO t (a) VALUES (1) ON CONFLICT (a) DO UPDATE SET b = 2", {Kind::Insert}, W, NR},
    {"INSERT INTO t VALUES (1) RETURNING *", {Kind::Insert}, W, NR},
    {"UPDATE t SET a = 1 WHERE b = 2", {Kind::Update}, W, NR},
    {"UPDATE t SET a = u.a FROM u WHERE t.id = u.id", {Kind::Update}, W, NR},
    {"DELETE FROM t WHERE a = 1", {Kind::Delete}, W, NR},
    {"DELETE FROM t USING u WHERE t.id = u.id RETURNING t.*", {Kind::Delete}, W, NR},
    {"MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a "
     "WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.a)", {Kind::Merge}, W, NR},
    {"MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", {Kind::Merge}, W, NR},

    // ---- data-modifying WITH
    {"WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", {Kind::Select}, W, NR},
    {"WITH u AS (UPDATE t SET a = 1 RETURNING a) SELECT count(*) FROM u", {Kind::Select}, W, NR},
    {"WITH i AS (INSERT INTO t VALUES (1) RETURNING *) SELECT 1", {Kind::Select}, W, NR},
    {"WITH a AS (SELECT 1), b AS (DELETE FROM t) SELECT * FROM a", {Kind::Select}, W, NR},
    {"WITH m AS (MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE) SELECT 1", {Kind::Select}, W, NR},
    {"WITH d AS (DELETE FROM t RETURNING *) INSERT INTO archive SELECT * FROM d", {Kind::Insert}, W, NR},
    {"SELECT * FROM (WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d) s", {Kind::Select}, W, NR},

    // ---- CREATE TABLE AS
    {"CREATE TABLE t2 AS SELECT * FROM t", {Kind::CreateTableAs}, W, NR},
    {"CREATE TEMP TABLE t2 AS SELECT 1", {Kind::CreateTableAs}, W, NR},
    {"CREATE MATERIALIZED VIEW mv AS SELECT * FROM t", {Kind::CreateTableAs}, W, NR},
    {"CREATE TABLE t2 AS SELECT * FROM t WITH NO DATA", {Kind::CreateTableAs}, W, NR},

    // ---- DDL
    {"CREATE TABLE t (a int)", {Kind::Ddl}, W, NR},
    {"CREATE TEMP TABLE tmp (a int)", {Kind::Ddl}, W, NR},
    {"CREATE TEMPORARY TABLE tmp2 (a int DEFAULT nextval('s'))", {Kind::Ddl}, W, NR},
    {"ALTER TABLE t ADD COLUMN b int", {Kind::Ddl}, W, NR},
    {"DROP TABLE IF EXISTS t CASCADE", {Kind::Ddl}, W, NR},
    {"CREATE INDEX CONCURRENTLY i ON t (a)", {Kind::Ddl}, W, NR},
    {"CREATE VIEW v AS SELECT * FROM t", {Kind::Ddl}, W, NR},
    {"CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$", {Kind::Ddl}, W, NR},
    {"COMMENT ON TABLE t IS 'x'", {Kind::Ddl}, W, NR},
    {"CREATE SCHEMA s", {Kind::Ddl}, W, NR},
    {"CREATE ROLE r LOGIN", {Kind::Ddl}, W, NR},
    {"ALTER ROLE r SET search_path = s", {Kind::Ddl}, W, NR},
    {"CREATE EXTENSION IF NOT EXISTS pgcrypto", {Kind::Ddl}, W, NR},
    {"CREATE SEQUENCE s", {Kind::Ddl}, W, NR},
    {"ALTER SEQUENCE s RESTART", {Kind::Ddl}, W, NR},
    {"CREATE TRIGGER tr AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()", {Kind::Ddl}, W, NR},
    {"CREATE RULE r AS ON INSERT TO t DO INSTEAD DELETE FROM u", {Kind::Ddl}, W, NR},
    {"CREATE DATABASE d", {Kind::Ddl}, W, NR},
    {"DROP DATABASE d", {Kind::Ddl}, W, NR},
    {"ALTER TABLE t RENAME TO t2", {Kind::Ddl}, W, NR},
    {"CREATE POLICY p ON t USING (true)", {Kind::Ddl}, W, NR},
    {"SECURITY LABEL ON TABLE t IS 'x'", {Kind::Ddl}, W, NR},
    {"REASSIGN OWNED BY a TO b", {Kind::Ddl}, W, NR},
    {"CREATE TYPE mood AS ENUM ('a', 'b')", {Kind::Ddl}, W, NR},
    {"ALTER DATABASE d SET work_mem = '64MB'", {Kind::Ddl}, W, NR},
    {"CREATE PUBLICATION p FOR ALL TABLES", {Kind::Ddl}, W, NR},

    // ---- TRUNCATE and maintenance
    {"TRUNCATE t", {Kind::Truncate}, W, NR},
    {"TRUNCATE TABLE t, u RESTART IDENTITY CASCADE", {Kind::Truncate}, W, NR},
    {"VACUUM", {Kind::Vacuum}, W, NR},
    {"VACUUM (VERBOSE, ANALYZE) t", {Kind::Vacuum}, W, NR},
    {"VACUUM FULL t", {Kind::Vacuum}, W, NR},
    {"ANALYZE t", {Kind::Analyze}, W, NR},
    {"ANALYZE", {Kind::Analyze}, W, NR},
    {"REINDEX TABLE t", {Kind::Reindex}, W, NR},
    {"REINDEX INDEX CONCURRENTLY i", {Kind::Reindex}, W, NR},
    {"CLUSTER t USING i", {Kind::Cluster}, W, NR},
    {"CLUSTER", {Kind::Cluster}, W, NR},
    {"CHECKPOINT", {Kind::Checkpoint}, W, NR},

    // ---- COPY: to the client it reads, to a server file or program it writes
    {"COPY t TO STDOUT", {Kind::CopyTo}, NW, RO},
    {"COPY t (a, b) TO STDOUT WITH (FORMAT csv, HEADER)", {Kind::CopyTo}, NW, RO},
    {"COPY (SELECT * FROM t WHERE a > 1) TO STDOUT", {Kind::CopyTo}, NW, RO},
    {"COPY (SELECT nextval('s')) TO STDOUT", {Kind::CopyTo}, NW, NR},
    {"COPY (DELETE FROM t RETURNING *) TO STDOUT", {Kind::CopyTo}, W, NR},
    {"COPY (WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d) TO STDOUT", {Kind::CopyTo}, W, NR},
    {"COPY (SELECT * FROM t FOR UPDATE) TO STDOUT", {Kind::CopyTo}, W, NR},
    {"COPY t TO '/tmp/t.csv'", {Kind::CopyTo}, W, NR},
    {"COPY t TO PROGRAM 'gzip > /tmp/t.gz'", {Kind::CopyTo}, W, NR},
    {"COPY t FROM STDIN", {Kind::CopyFrom}, W, NR},
    {"COPY t FROM '/tmp/t.csv' WITH (FORMAT csv)", {Kind::CopyFrom}, W, NR},
    {"COPY t FROM PROGRAM 'cat /etc/passwd'", {Kind::CopyFrom}, W, NR},
    {"COPY t FROM STDIN WHERE a > 0", {Kind::CopyFrom}, W, NR},

    // ---- CALL, DO, ALTER SYSTEM
    {"CALL p()", {Kind::Call}, W, NR},
    {"CALL s.p(1, 'a')", {Kind::Call}, W, NR},
    {"DO $$ BEGIN DELETE FROM t; END $$", {Kind::Do}, W, NR},
    {"DO $body$ BEGIN PERFORM 1; END $body$", {Kind::Do}, W, NR},
    {"DO LANGUAGE plpgsql 'BEGIN NULL; END'", {Kind::Do}, W, NR},
    {"ALTER SYSTEM SET work_mem = '1GB'", {Kind::AlterSystem}, W, NR},
    {"ALTER SYSTEM RESET ALL", {Kind::AlterSystem}, W, NR},

    // ---- roles
    {"SET ROLE admin", {Kind::SetRole}, NW, NR},
    {"SET LOCAL ROLE admin", {Kind::SetRole}, NW, NR},
    {"RESET ROLE", {Kind::SetRole}, NW, NR},
    {"SET ROLE NONE", {Kind::SetRole}, NW, NR},
    {R"(SET "Role" TO admin)", {Kind::SetRole}, NW, NR},
    {"SET role = 'admin'", {Kind::SetRole}, NW, NR},
    {"SET SESSION AUTHORIZATION bob", {Kind::SetSessionAuthorization}, NW, NR},
    {"SET SESSION AUTHORIZATION DEFAULT", {Kind::SetSessionAuthorization}, NW, NR},
    {"RESET SESSION AUTHORIZATION", {Kind::SetSessionAuthorization}, NW, NR},

    // ---- settings
    {"SET search_path = public", {Kind::Set}, NW, RO},
    {"SET statement_timeout TO '5s'", {Kind::Set}, NW, RO},
    {"SET LOCAL work_mem = '64MB'", {Kind::Set}, NW, RO},
    {"SET TIME ZONE 'UTC'", {Kind::Set}, NW, RO},
    {"SET NAMES 'UTF8'", {Kind::Set}, NW, RO},
    {"SET application_name = 'x'", {Kind::Set}, NW, RO},
    {"SET default_transaction_read_only = off", {Kind::Set}, NW, NR},
    {"SET default_transaction_read_only = on", {Kind::Set}, NW, RO},
    {"SET transaction_read_only TO false", {Kind::Set}, NW, NR},
    {"SET default_transaction_read_only TO DEFAULT", {Kind::Set}, NW, NR},
    {"SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", {Kind::Set}, NW, NR},
    {"SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", {Kind::Set}, NW, RO},
    {"SET TRANSACTION READ WRITE", {Kind::Set}, NW, NR},
    {"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", {Kind::Set}, NW, RO},
    {"SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY", {Kind::Set}, NW, RO},
    {"SET CONSTRAINTS ALL DEFERRED", {Kind::Set}, NW, RO},
    {"SET standard_conforming_strings = off", {Kind::Set}, NW, NR},
    {"SET standard_conforming_strings = on", {Kind::Set}, NW, RO},
    {"SET client_encoding = 'Shift_JIS'", {Kind::Set}, NW, NR},
    {"SET NAMES 'GBK'", {Kind::Set}, NW, NR},
    {"RESET search_path", {Kind::Reset}, NW, RO},
    {"RESET ALL", {Kind::Reset}, NW, RO},
    {"RESET default_transaction_read_only", {Kind::Reset}, NW, NR},
    {"RESET standard_conforming_strings", {Kind::Reset}, NW, NR},
    {"SHOW search_path", {Kind::Show}, NW, RO},
    {"SHOW ALL", {Kind::Show}, NW, RO},
    {"SHOW transaction_read_only", {Kind::Show}, NW, RO},

    // ---- LOCK, GRANT, REVOKE
    {"LOCK TABLE t IN ACCESS EXCLUSIVE MODE", {Kind::Lock}, NW, NR},
    {"LOCK t", {Kind::Lock}, NW, NR},
    {"GRANT SELECT ON t TO bob", {Kind::Grant}, W, NR},
    {"GRANT admin TO bob", {Kind::Grant}, W, NR},
    {"REVOKE ALL ON t FROM bob", {Kind::Revoke}, W, NR},
    {"REVOKE admin FROM bob", {Kind::Revoke}, W, NR},
    {"ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO bob", {Kind::Grant}, W, NR},
    {"ALTER DEFAULT PRIVILEGES REVOKE SELECT ON TABLES FROM bob", {Kind::Revoke}, W, NR},

    // ---- transaction control
    {"BEGIN", {Kind::Transaction}, NW, RO},
    {"BEGIN ISOLATION LEVEL SERIALIZABLE", {Kind::Transaction}, NW, RO},
    {"BEGIN READ ONLY", {Kind::Transaction}, NW, RO},
    {"START TRANSACTION READ ONLY, DEFERRABLE", {Kind::Transaction}, NW, RO},
    {"BEGIN READ WRITE", {Kind::Transaction}, NW, NR},
    {"START TRANSACTION ISOLATION LEVEL READ COMMITTED READ WRITE", {Kind::Transaction}, NW, NR},
    {"COMMIT", {Kind::Transaction}, NW, RO},
    {"END", {Kind::Transaction}, NW, RO},
    {"ROLLBACK", {Kind::Transaction}, NW, RO},
    {"ABORT", {Kind::Transaction}, NW, RO},
    {"SAVEPOINT s1", {Kind::Transaction}, NW, RO},
    {"RELEASE SAVEPOINT s1", {Kind::Transaction}, NW, RO},
    {"ROLLBACK TO SAVEPOINT s1", {Kind::Transaction}, NW, RO},
    {"COMMIT AND CHAIN", {Kind::Transaction}, NW, RO},
    {"PREPARE TRANSACTION 'x'", {Kind::Transaction}, W, NR},
    {"COMMIT PREPARED 'x'", {Kind::Transaction}, W, NR},
    {"ROLLBACK PREPARED 'x'", {Kind::Transaction}, W, NR},

    // ---- prepared statements: PREPARE is judged by what it prepares
    {"PREPARE p AS SELECT * FROM t WHERE a = $1", {Kind::Prepare}, NW, RO},
    {"PREPARE p (int) AS DELETE FROM t WHERE a = $1", {Kind::Prepare}, NW, NR},
    {"PREPARE p AS WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", {Kind::Prepare}, NW, NR},
    {"PREPARE p AS SELECT nextval('s')", {Kind::Prepare}, NW, NR},
    {"EXECUTE p", {Kind::Execute}, W, NR},
    {"EXECUTE p(1, 'a')", {Kind::Execute}, W, NR},
    {"DEALLOCATE p", {Kind::Deallocate}, NW, RO},
    {"DEALLOCATE ALL", {Kind::Deallocate}, NW, RO},

    // ---- cursors (psql's FETCH_COUNT uses them)
    {"DECLARE c CURSOR FOR SELECT * FROM t", {Kind::Declare}, NW, RO},
    {"DECLARE _psql_cursor NO SCROLL CURSOR WITH HOLD FOR SELECT * FROM t", {Kind::Declare}, NW, RO},
    {"DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE", {Kind::Declare}, W, NR},
    {"DECLARE c CURSOR FOR SELECT pg_sleep(10)", {Kind::Declare}, NW, NR},
    {"FETCH 10 FROM c", {Kind::Fetch}, NW, RO},
    {"FETCH ALL IN c", {Kind::Fetch}, NW, RO},
    {"MOVE NEXT IN c", {Kind::Fetch}, NW, RO},
    {"CLOSE c", {Kind::Close}, NW, RO},
    {"CLOSE ALL", {Kind::Close}, NW, RO},

    // ---- EXPLAIN: without ANALYZE nothing runs
    {"EXPLAIN SELECT * FROM t", {Kind::Explain}, NW, RO},
    {"EXPLAIN DELETE FROM t", {Kind::Explain}, NW, RO},
    {"EXPLAIN (ANALYZE false) DELETE FROM t", {Kind::Explain}, NW, RO},
    {"EXPLAIN (ANALYZE off, COSTS off) UPDATE t SET a = 1", {Kind::Explain}, NW, RO},
    {"EXPLAIN (FORMAT JSON) INSERT INTO t VALUES (1)", {Kind::Explain}, NW, RO},
    {"EXPLAIN CREATE TABLE t2 AS SELECT 1", {Kind::Explain}, NW, RO},
    {"EXPLAIN EXECUTE p", {Kind::Explain}, NW, RO},
    {"EXPLAIN SELECT * FROM t FOR UPDATE", {Kind::Explain}, NW, RO},
    {"EXPLAIN SELECT nextval('s')", {Kind::Explain}, NW, NR},
    {"EXPLAIN ANALYZE SELECT * FROM t", {Kind::ExplainAnalyze}, NW, RO},
    {"EXPLAIN ANALYZE DELETE FROM t", {Kind::ExplainAnalyze}, W, NR},
    {"EXPLAIN (ANALYZE) UPDATE t SET a = 1", {Kind::ExplainAnalyze}, W, NR},
    {"EXPLAIN (ANALYZE true, BUFFERS) INSERT INTO t VALUES (1)", {Kind::ExplainAnalyze}, W, NR},
    {"EXPLAIN (ANALYZE 1) DELETE FROM t", {Kind::ExplainAnalyze}, W, NR},
    {"EXPLAIN (ANALYZE maybe) DELETE FROM t", {Kind::ExplainAnalyze}, W, NR},
    {"EXPLAIN ANALYZE VERBOSE WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", {Kind::ExplainAnalyze}, W, NR},
    {"EXPLAIN ANALYZE SELECT * INTO n FROM t", {Kind::ExplainAnalyze}, W, NR},
    {"EXPLAIN ANALYZE CREATE TABLE t2 AS SELECT 1", {Kind::ExplainAnalyze}, W, NR},
    {"EXPLAIN ANALYZE EXECUTE p", {Kind::ExplainAnalyze}, W, NR},
    {"EXPLAIN ANALYZE SELECT * FROM t FOR UPDATE", {Kind::ExplainAnalyze}, W, NR},

    // ---- LISTEN / NOTIFY / UNLISTEN / DISCARD / other utilities
    {"LISTEN ch", {Kind::Listen}, NW, RO},
    {"NOTIFY ch", {Kind::Notify}, W, NR},
    {"NOTIFY ch, 'payload'", {Kind::Notify}, W, NR},
    {"UNLISTEN *", {Kind::Unlisten}, NW, RO},
    {"UNLISTEN ch", {Kind::Unlisten}, NW, RO},
    {"DISCARD ALL", {Kind::Discard}, NW, NR},
    {"DISCARD PLANS", {Kind::Discard}, NW, RO},
    {"DISCARD TEMP", {Kind::Discard}, NW, RO},
    {"DISCARD SEQUENCES", {Kind::Discard}, NW, RO},
    {"LOAD 'auto_explain'", {Kind::Other}, W, NR},
    {"REFRESH MATERIALIZED VIEW mv", {Kind::Other}, W, NR},
    {"REFRESH MATERIALIZED VIEW CONCURRENTLY mv", {Kind::Other}, W, NR},

    // ---- functions: read-only only when every call is allowlisted, wherever it is
    {"SELECT f()", {Kind::Select}, NW, NR},
    {"SELECT nextval('s')", {Kind::Select}, NW, NR},
    {"SELECT setval('s', 1)", {Kind::Select}, NW, NR},
    {"SELECT pg_terminate_backend(123)", {Kind::Select}, NW, NR},
    {"SELECT pg_cancel_backend(123)", {Kind::Select}, NW, NR},
    {"SELECT lo_import('/etc/passwd')", {Kind::Select}, NW, NR},
    {"SELECT pg_advisory_lock(1)", {Kind::Select}, NW, NR},
    {"SELECT set_config('role', 'admin', false)", {Kind::Select}, NW, NR},
    {"SELECT * FROM dblink('host=x', 'DELETE FROM t') AS r(a int)", {Kind::Select}, NW, NR},
    {"SELECT pg_sleep(1)", {Kind::Select}, NW, NR},
    {"SELECT query_to_xml('DELETE FROM t RETURNING 1', true, false, '')", {Kind::Select}, NW, NR},
    {"SELECT txid_current()", {Kind::Select}, NW, NR},
    {"SELECT * FROM t WHERE a = f(1)", {Kind::Select}, NW, NR},
    {"SELECT (SELECT f())", {Kind::Select}, NW, NR},
    {"SELECT * FROM t WHERE a IN (SELECT g(b) FROM u)", {Kind::Select}, NW, NR},
    {"WITH x AS (SELECT f() AS a) SELECT * FROM x", {Kind::Select}, NW, NR},
    {"SELECT * FROM f()", {Kind::Select}, NW, NR},
    {"SELECT * FROM ROWS FROM (generate_series(1, 2), f())", {Kind::Select}, NW, NR},
    {"SELECT * FROM t, LATERAL f(t.a)", {Kind::Select}, NW, NR},
    {"SELECT sum(a) FILTER (WHERE f(a)) FROM t", {Kind::Select}, NW, NR},
    {"SELECT * FROM t ORDER BY f(a)", {Kind::Select}, NW, NR},
    {"SELECT a FROM t GROUP BY a HAVING f(count(*))", {Kind::Select}, NW, NR},
    {"SELECT lower(f(a)) FROM t", {Kind::Select}, NW, NR},
    {"SELECT CASE WHEN a THEN f() END FROM t", {Kind::Select}, NW, NR},
    {"SELECT ARRAY[f()]", {Kind::Select}, NW, NR},
    {"SELECT myschema.lower('a')", {Kind::Select}, NW, NR},
    {R"(SELECT "LOWER"('a'))", {Kind::Select}, NW, NR},
    {R"(SELECT "pg_catalog.lower"('a'))", {Kind::Select}, NW, NR},

    // ---- evasion: several statements, comments, quoting, case, dollar quotes
    {"SELECT 1; DELETE FROM t", {Kind::Select, Kind::Delete}, W, NR},
    {"SELECT 1; SELECT 2", {Kind::Select, Kind::Select}, NW, RO},
    {"select 1;delete from t;", {Kind::Select, Kind::Delete}, W, NR},
    {"SELECT 1;;; DELETE FROM t", {Kind::Select, Kind::Delete}, W, NR},
    {"BEGIN; DELETE FROM t; COMMIT", {Kind::Transaction, Kind::Delete, Kind::Transaction}, W, NR},
    {"BEGIN; SELECT 1; COMMIT", {Kind::Transaction, Kind::Select, Kind::Transaction}, NW, RO},
    {"SET search_path = public; SELECT 1", {Kind::Set, Kind::Select}, NW, RO},
    {"SELECT 1; SET ROLE admin", {Kind::Select, Kind::SetRole}, NW, NR},
    {"SHOW x; EXPLAIN ANALYZE DELETE FROM t", {Kind::Show, Kind::ExplainAnalyze}, W, NR},
    {"/* DELETE FROM t */ SELECT 1", {Kind::Select}, NW, RO},
    {"/* outer /* nested */ still a comment; DELETE FROM t */ SELECT 1", {Kind::Select}, NW, RO},
    {"/* a /* b */ */ DELETE FROM t", {Kind::Delete}, W, NR},
    {"SELECT 1 /* ; DELETE FROM t */", {Kind::Select}, NW, RO},
    {"-- DELETE FROM t\nSELECT 1", {Kind::Select}, NW, RO},
    {"SELECT 1 -- ; DELETE FROM t", {Kind::Select}, NW, RO},
    {"SELECT 1; -- comment\nDELETE FROM t", {Kind::Select, Kind::Delete}, W, NR},
    {"/* c */ DELETE /* c */ FROM t", {Kind::Delete}, W, NR},
    {"DeLeTe FrOm t", {Kind::Delete}, W, NR},
    {R"(SELECT "DELETE" FROM t)", {Kind::Select}, NW, RO},
    {R"(SELECT * FROM "DELETE")", {Kind::Select}, NW, RO},
    {R"(DELETE FROM "select")", {Kind::Delete}, W, NR},
    {"SELECT 'DELETE FROM t'", {Kind::Select}, NW, RO},
    {"SELECT 'it''s; DELETE FROM t'", {Kind::Select}, NW, RO},
    {R"(SELECT E'\'; DELETE FROM t; --')", {Kind::Select}, NW, RO},
    // standard_conforming_strings on: the backslash is a plain character
    {R"(SELECT '\'; DELETE FROM t; --')", {Kind::Select, Kind::Delete}, W, NR},
    {"SELECT $$; DELETE FROM t; $$", {Kind::Select}, NW, RO},
    {"SELECT $tag$ $$; DELETE FROM t; $$ $tag$", {Kind::Select}, NW, RO},
    {"SELECT $a$x$a$; DELETE FROM t", {Kind::Select, Kind::Delete}, W, NR},
    {"CREATE FUNCTION g() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END; SELECT 3",
     {Kind::Ddl, Kind::Select}, W, NR},
    {"\n\t  SELECT 1  \n", {Kind::Select}, NW, RO},
};
// clang-format on

std::vector<pol::Statement> must_classify(const std::string& sql)
{
    auto r = pol::classify(sql);
    BOOST_TEST_REQUIRE(r.ok(), "classify failed for <" << sql << ">: " << (r.ok() ? "" : r.error()));
    return r.value();
}

pol::Statement one(const std::string& sql)
{
    auto v = must_classify(sql);
    BOOST_TEST_REQUIRE(v.size() == 1u, "<" << sql << "> gave " << v.size() << " statements");
    return v[0];
}

std::string kinds_text(const std::vector<Kind>& kinds)
{
    std::string out;
    for (Kind k : kinds)
        out += (out.empty() ? "" : ",") + std::string(pol::kind_name(k));
    return out;
}

} // namespace

BOOST_AUTO_TEST_SUITE(policy_classify)

BOOST_AUTO_TEST_CASE(corpus)
{
    BOOST_TEST(kCorpus.size() >= 150u);
    const auto& allow = pol::FunctionAllowlist::builtin();
    for (const Row& row : kCorpus) {
        BOOST_TEST_CONTEXT("<" << row.sql << ">")
        {
            auto r = pol::classify(row.sql);
            BOOST_TEST_REQUIRE(r.ok(), (r.ok() ? "" : r.error()));
            std::vector<Kind> kinds;
            bool writes = false;
            bool read_only = true;
            for (const pol::Statement& s : r.value()) {
                kinds.push_back(s.kind);
                writes = writes || s.writes;
                read_only = read_only && pol::is_read_only(s, allow);
                // Invariants every statement keeps.
                BOOST_TEST(s.involves(s.kind));
                BOOST_TEST(s.involves(s.inner));
                if (s.writes)
                    BOOST_TEST(!s.not_read_only.empty());
                BOOST_TEST(pol::is_read_only(s, allow) == pol::read_only_violation(s, allow).empty());
            }
            BOOST_TEST(kinds_text(kinds) == kinds_text(row.kinds));
            BOOST_TEST(writes == row.writes);
            BOOST_TEST(read_only == row.read_only);
        }
    }
}

BOOST_AUTO_TEST_CASE(corpus_covers_every_kind)
{
    std::set<Kind> seen;
    for (const Row& row : kCorpus)
        seen.insert(row.kinds.begin(), row.kinds.end());
    for (Kind k : pol::all_kinds())
        BOOST_TEST(seen.count(k) == 1u, "no corpus row of kind " << pol::kind_name(k));
}

BOOST_AUTO_TEST_CASE(kind_names_round_trip)
{
    std::set<std::string_view> names;
    BOOST_TEST(pol::all_kinds().size() == std::size_t(Kind::Other) + 1);
    for (std::size_t i = 0; i < pol::all_kinds().size(); ++i) {
        Kind k = pol::all_kinds()[i];
        BOOST_TEST(std::size_t(k) == i);
        std::string_view name = pol::kind_name(k);
        BOOST_TEST(names.insert(name).second, "duplicate name " << name);
        BOOST_TEST(std::none_of(name.begin(), name.end(), [](char c) { return c >= 'A' && c <= 'Z'; }));
        BOOST_TEST((pol::kind_from_name(name) == k));
    }
    BOOST_TEST((pol::kind_from_name("DELETE") == Kind::Delete));
    BOOST_TEST((pol::kind_from_name("Explain_Analyze") == Kind::ExplainAnalyze));
    BOOST_TEST(!pol::kind_from_name("remove").has_value());
    BOOST_TEST(!pol::kind_from_name("").has_value());
    BOOST_TEST(pol::kind_name(Kind::SetSessionAuthorization) == "set_session_authorization");
}

BOOST_AUTO_TEST_CASE(empty_and_comment_only_text_has_no_statements)
{
    for (const char* sql : {"", "   ", "\n\t", "-- just a comment", "/* only */", "/* a */ -- b\n", ";", ";;"}) {
        BOOST_TEST_CONTEXT("<" << sql << ">")
        {
            auto r = pol::classify(sql);
            BOOST_TEST_REQUIRE(r.ok());
            BOOST_TEST(r.value().empty());
        }
    }
}

BOOST_AUTO_TEST_CASE(parse_errors_fail_closed)
{
    for (const char* sql : {"SELEC 1", "SELECT 1; DELET FROM t", "SELECT 'unterminated",
                            "SELECT $$never closed", "SELECT (1", "/* unterminated comment",
                            "DELETE", "SELECT * FROM", R"(SELECT "unterminated)",
                            "SELECT 1 /* /* nested but closed once */"}) {
        BOOST_TEST_CONTEXT("<" << sql << ">")
        {
            auto r = pol::classify(sql);
            BOOST_TEST(!r.ok());
            if (!r.ok())
                BOOST_TEST(!r.error().empty());
        }
    }
    auto r = pol::classify("SELECT 1 FROM t WHERE");
    BOOST_TEST_REQUIRE(!r.ok());
    BOOST_TEST(r.error().find("syntax error") != std::string::npos, r.error());
    BOOST_TEST(r.error().find("at character") != std::string::npos, r.error());

    auto nul = pol::classify(std::string("SELECT 1\0; DELETE FROM t", 24));
    BOOST_TEST_REQUIRE(!nul.ok());
    BOOST_TEST(nul.error().find("NUL") != std::string::npos);

    auto huge = pol::classify(std::string(pol::kMaxClassifyBytes + 1, ' '));
    BOOST_TEST_REQUIRE(!huge.ok());
    BOOST_TEST(huge.error().find("limit") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(statement_ranges)
{
    std::string sql = "SELECT 1; DELETE FROM t; /* c */ SHOW x";
    auto v = must_classify(sql);
    BOOST_TEST_REQUIRE(v.size() == 3u);
    BOOST_TEST(sql.substr(v[0].offset, v[0].length) == "SELECT 1");
    BOOST_TEST(sql.substr(v[1].offset, v[1].length).find("DELETE FROM t") != std::string::npos);
    BOOST_TEST(sql.substr(v[2].offset, v[2].length).find("SHOW x") != std::string::npos);
    for (const auto& s : v)
        BOOST_TEST(s.offset + s.length <= sql.size());
}

BOOST_AUTO_TEST_CASE(inner_and_nested_kinds)
{
    auto s = one("EXPLAIN ANALYZE DELETE FROM t");
    BOOST_TEST(pol::kind_name(s.inner) == "delete");
    s = one("PREPARE p AS UPDATE t SET a = 1");
    BOOST_TEST(pol::kind_name(s.inner) == "update");
    BOOST_TEST(s.involves(Kind::Update));
    s = one("DECLARE c CURSOR FOR SELECT 1");
    BOOST_TEST(pol::kind_name(s.inner) == "select");
    s = one("COPY (SELECT 1) TO STDOUT");
    BOOST_TEST(pol::kind_name(s.inner) == "select");
    s = one("COPY t TO STDOUT");
    BOOST_TEST(pol::kind_name(s.inner) == "copy_to");
    s = one("DELETE FROM t");
    BOOST_TEST(pol::kind_name(s.inner) == "delete");

    // A deny list entry "delete" must see the DELETE inside WITH, EXPLAIN and COPY.
    s = one("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d");
    BOOST_TEST(s.involves(Kind::Delete));
    BOOST_TEST(s.involves(Kind::Select));
    BOOST_TEST(!s.involves(Kind::Insert));
    BOOST_TEST(one("EXPLAIN DELETE FROM t").involves(Kind::Delete));
    BOOST_TEST(one("COPY (DELETE FROM t RETURNING *) TO STDOUT").involves(Kind::Delete));
    BOOST_TEST(one("INSERT INTO t SELECT * FROM u FOR UPDATE").involves(Kind::SelectForUpdate));
    BOOST_TEST(one("EXPLAIN SELECT * INTO x FROM t").involves(Kind::SelectInto));
    BOOST_TEST(!one("SELECT 1").involves(Kind::Delete));
}

BOOST_AUTO_TEST_CASE(settings)
{
    BOOST_TEST(one("SET search_path = x").setting == "search_path");
    BOOST_TEST(one(R"(SET "Search_Path" = x)").setting == "search_path");
    BOOST_TEST(one("RESET ALL").setting == "all");
    BOOST_TEST(one("SHOW ALL").setting == "all");
    BOOST_TEST(one("SHOW Work_Mem").setting == "work_mem");
    BOOST_TEST(one("ALTER SYSTEM SET work_mem = 1").setting == "work_mem");
    BOOST_TEST(one("SET NAMES 'UTF8'").setting == "client_encoding");
    BOOST_TEST(one("SET SESSION AUTHORIZATION bob").setting == "session_authorization");
    BOOST_TEST(one("SELECT 1").setting.empty());
}

BOOST_AUTO_TEST_CASE(function_names)
{
    auto fns = [](const std::string& sql) { return one(sql).functions; };
    using V = std::vector<std::string>;

    // Order of first appearance, each once.
    BOOST_TEST((fns("SELECT f(g(1)), f(2), h() FROM k()") == V{"f", "g", "h", "k"}));
    // Unquoted names fold to lower case, schema qualification is kept.
    BOOST_TEST((fns("SELECT MySchema.MyFunc(1)") == V{"myschema.myfunc"}));
    // Quoted names keep their case and are quoted so they cannot pass for another name.
    BOOST_TEST((fns(R"(SELECT "MySchema"."MyFunc"(1))") == V{R"("MySchema"."MyFunc")"}));
    BOOST_TEST((fns(R"(SELECT "a.b"(1), a.b(1))") == V{R"("a.b")", "a.b"}));
    BOOST_TEST((fns(R"(SELECT "lower"('x'))") == V{"lower"}));
    BOOST_TEST((fns(R"(SELECT "we""ird"())") == V{R"("we""ird")"}));
    BOOST_TEST((fns("SELECT café()") == V{R"("café")"}));
    // Syntax the grammar turns into calls.
    BOOST_TEST((fns("SELECT EXTRACT(year FROM ts), ts AT TIME ZONE 'UTC' FROM t") ==
                V{"pg_catalog.extract", "pg_catalog.timezone"}));
    // Everywhere in the statement.
    std::set<std::string> everywhere;
    for (const auto& f : fns("WITH x AS (SELECT a1() FROM a2()) SELECT a3(), (SELECT a4()) "
                             "FROM x JOIN a5() ON a6() WHERE a7() IN (SELECT a8()) "
                             "GROUP BY a9() HAVING a10() ORDER BY a11() LIMIT a12()"))
        everywhere.insert(f);
    for (int i = 1; i <= 12; ++i)
        BOOST_TEST(everywhere.count("a" + std::to_string(i)) == 1u, "a" << i);
    BOOST_TEST((fns("CREATE TABLE t (a int DEFAULT nextval('s'), b text DEFAULT lower('X'))") ==
                V{"nextval", "lower"}));
    BOOST_TEST((fns("INSERT INTO t VALUES (f()) RETURNING g()") == V{"f", "g"}));
    BOOST_TEST((fns("UPDATE t SET a = f() WHERE g()") == V{"f", "g"}));
    BOOST_TEST((fns("CALL s.proc(f())") == V{"s.proc", "f"}));
    BOOST_TEST((fns("SELECT count(*) OVER ()") == V{"count"}));
    BOOST_TEST(fns("SELECT a FROM t").empty());
    // Identifiers are cut at 63 bytes, as the server does.
    std::string longname(70, 'x');
    BOOST_TEST((fns("SELECT " + longname + "()") == V{std::string(63, 'x')}));
}

BOOST_AUTO_TEST_CASE(canonical_function_names_from_config)
{
    auto canon = [](const std::string& s) {
        auto r = pol::canonical_function_name(s);
        return r.ok() ? r.value() : "ERROR";
    };
    BOOST_TEST(canon("lower") == "lower");
    BOOST_TEST(canon("  Lower ") == "lower");
    BOOST_TEST(canon("MySchema.Report") == "myschema.report");
    BOOST_TEST(canon(R"("Report")") == R"("Report")");
    BOOST_TEST(canon(R"(s."Re""port")") == R"(s."Re""port")");
    BOOST_TEST(canon(R"("lower")") == "lower");
    BOOST_TEST(canon("pg_catalog.lower") == "pg_catalog.lower");
    BOOST_TEST(canon("db.s.f") == "db.s.f");
    BOOST_TEST(canon("f$1") == "f$1");
    for (const char* bad : {"", " ", "a..b", "1abc", R"("unterminated)", R"("")", "a.b.c.d",
                            "a b", "f()", ".f", "f.", "$f"})
        BOOST_TEST(canon(bad) == "ERROR", "<" << bad << "> should be refused");
    // The same spelling in SQL and in the configuration gives the same name.
    for (const char* written : {"MySchema.MyFunc", R"("MySchema"."MyFunc")", R"("a.b")", "x"}) {
        std::string from_sql = one(std::string("SELECT ") + written + "()").functions.at(0);
        BOOST_TEST(canon(written) == from_sql, written);
    }
}

BOOST_AUTO_TEST_CASE(function_allowlist)
{
    const auto& b = pol::FunctionAllowlist::builtin();
    BOOST_TEST(b.size() >= 100u);
    for (const char* ok : {"count", "sum", "avg", "min", "max", "array_agg", "string_agg", "now",
                           "lower", "upper", "length", "substring", "concat", "format",
                           "pg_size_pretty", "pg_relation_size", "pg_total_relation_size",
                           "version", "current_database", "pg_backend_pid", "date_trunc",
                           "extract", "to_char", "generate_series", "jsonb_build_object",
                           "pg_catalog.lower", "pg_catalog.extract"})
        BOOST_TEST(b.allows(ok), ok);
    for (const char* no : {"nextval", "setval", "currval", "pg_terminate_backend",
                           "pg_cancel_backend", "lo_import", "lo_export", "lo_unlink",
                           "pg_advisory_lock", "pg_try_advisory_lock", "set_config", "dblink",
                           "dblink_exec", "pg_sleep", "pg_notify", "pg_reload_conf",
                           "query_to_xml", "txid_current", "pg_read_file", "myschema.lower",
                           R"("LOWER")", "f", "pg_catalog.nextval"})
        BOOST_TEST(!b.allows(no), no);

    auto extra = pol::FunctionAllowlist::with_extra({"MySchema.Report", R"("Fancy")", "audit_ok",
                                                     "pg_catalog.my_builtin"});
    BOOST_TEST_REQUIRE(extra.ok());
    BOOST_TEST(extra->allows("myschema.report"));
    BOOST_TEST(!extra->allows("report"));
    BOOST_TEST(extra->allows(R"("Fancy")"));
    BOOST_TEST(!extra->allows("fancy"));
    BOOST_TEST(extra->allows("audit_ok"));
    BOOST_TEST(extra->allows("my_builtin"));
    BOOST_TEST(extra->allows("pg_catalog.my_builtin"));
    BOOST_TEST(extra->allows("lower"));  // still has the built-in names
    BOOST_TEST(extra->size() == b.size() + 4);
    BOOST_TEST(!pol::FunctionAllowlist::with_extra({"ok", "not valid"}).ok());

    // The operator's list is what decides.
    auto s = one("SELECT myschema.report(1), lower('x')");
    BOOST_TEST(!pol::is_read_only(s, b));
    BOOST_TEST(pol::is_read_only(s, *extra));
}

BOOST_AUTO_TEST_CASE(read_only_violation_messages)
{
    const auto& b = pol::FunctionAllowlist::builtin();
    auto why = [&](const std::string& sql) { return pol::read_only_violation(one(sql), b); };
    BOOST_TEST(why("SELECT 1").empty());
    BOOST_TEST(why("SELECT lower('a'), nextval('s')").find("nextval") != std::string::npos);
    BOOST_TEST(why("DELETE FROM t") == "modifies rows");
    BOOST_TEST(why("WITH d AS (DELETE FROM t) SELECT 1").find("WITH") != std::string::npos);
    BOOST_TEST(why("SELECT * FROM t FOR UPDATE").find("locks rows") != std::string::npos);
    BOOST_TEST(why("SELECT 1 INTO x").find("SELECT INTO") != std::string::npos);
    BOOST_TEST(why("SET ROLE x").find("role") != std::string::npos);
    BOOST_TEST(why("BEGIN READ WRITE").find("read-only") != std::string::npos);
    BOOST_TEST(why("EXECUTE p").find("prepared") != std::string::npos);
    BOOST_TEST(why("DO $$ BEGIN END $$").find("DO") != std::string::npos);
    BOOST_TEST(why("COPY t TO '/x'").find("file") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(long_and_deep_statements)
{
    // Long enough to run on the private parser stack, shallow enough for PostgreSQL.
    std::string sum = "SELECT 1";
    for (int i = 0; i < 3000; ++i)
        sum += "+1";
    auto s = one(sum);
    BOOST_TEST(pol::kind_name(s.kind) == "select");

    std::string unions = "SELECT lower('a')";
    for (int i = 0; i < 2000; ++i)
        unions += " UNION ALL SELECT lower('a')";
    s = one(unions);
    BOOST_TEST((s.functions == std::vector<std::string>{"lower"}));
    BOOST_TEST(pol::is_read_only(s, pol::FunctionAllowlist::builtin()));

    // A syntax error on the private stack (libpg_query longjmps there).
    auto bad = pol::classify(sum + " +");
    BOOST_TEST(!bad.ok());

    // Deeper than PostgreSQL itself accepts: refused, not a crash and not minutes of CPU.
    std::string deep = "SELECT 1";
    for (int i = 0; i < 30000; ++i)
        deep += "+1";
    auto r = pol::classify(deep);
    BOOST_TEST_REQUIRE(!r.ok());
    BOOST_TEST(r.error().find("too deeply") != std::string::npos, r.error());
    // normalize and fingerprint walk the tree without that cost; they cope.
    BOOST_TEST(pol::normalize(deep).ok());
    BOOST_TEST(pol::fingerprint(deep).ok());
}

BOOST_AUTO_TEST_CASE(normalize_replaces_literals)
{
    auto n = pol::normalize("SELECT * FROM t WHERE a = 42 AND b = 'secret'");
    BOOST_TEST_REQUIRE(n.ok());
    BOOST_TEST(n.value() == "SELECT * FROM t WHERE a = $1 AND b = $2");
    n = pol::normalize("SELECT 1");
    BOOST_TEST_REQUIRE(n.ok());
    BOOST_TEST(n.value() == "SELECT $1");
    n = pol::normalize("SELECT $1, 'x'");  // existing parameters keep their numbers
    BOOST_TEST_REQUIRE(n.ok());
    BOOST_TEST(n.value() == "SELECT $1, $2");
    BOOST_TEST(!pol::normalize("SELECT 'unterminated").ok());
    BOOST_TEST(!pol::normalize(std::string("SELECT 1\0", 9)).ok());
}

BOOST_AUTO_TEST_CASE(fingerprint_ignores_literals)
{
    auto fp = [](const std::string& sql) {
        auto r = pol::fingerprint(sql);
        BOOST_TEST_REQUIRE(r.ok(), sql);
        return r.value();
    };
    std::string one_fp = fp("SELECT 1");
    BOOST_TEST(one_fp.size() == 16u);
    BOOST_TEST(one_fp.find_first_not_of("0123456789abcdef") == std::string::npos, one_fp);
    BOOST_TEST(fp("SELECT 2") == one_fp);
    BOOST_TEST(fp("SELECT * FROM t WHERE a = 1") == fp("select  *  from t where a = 99 /* c */"));
    BOOST_TEST(fp("SELECT * FROM t WHERE a = 1") != fp("SELECT * FROM u WHERE a = 1"));
    BOOST_TEST(fp("SELECT a FROM t") != fp("DELETE FROM t"));
    BOOST_TEST(!pol::fingerprint("SELEC 1").ok());
}

BOOST_AUTO_TEST_CASE(cache_hits_and_misses)
{
    pol::ClassifyCache cache;
    auto a = cache.get("SELECT abalance FROM pgbench_accounts WHERE aid = $1");
    auto b = cache.get("SELECT abalance FROM pgbench_accounts WHERE aid = $1");
    BOOST_TEST(cache.misses() == 1u);
    BOOST_TEST(cache.hits() == 1u);
    BOOST_TEST(a.get() == b.get());  // the same classification, not parsed again
    BOOST_TEST_REQUIRE(a->primary.ok());
    BOOST_TEST(pol::kind_name(a->primary.value().at(0).kind) == "select");

    cache.get("SELECT 2");
    BOOST_TEST(cache.misses() == 2u);
    BOOST_TEST(cache.size() == 2u);

    // Parse errors are cached too (the caller fails closed every time).
    auto e1 = cache.get("SELEC 1");
    auto e2 = cache.get("SELEC 1");
    BOOST_TEST(!e1->primary.ok());
    BOOST_TEST(e1.get() == e2.get());
    BOOST_TEST(cache.misses() == 3u);
    BOOST_TEST(cache.hits() == 2u);
}

BOOST_AUTO_TEST_CASE(cache_evicts_least_recently_used)
{
    pol::ClassifyCache cache(2, 1u << 20);
    // (Texts that differ in more than numbers: those that differ only in numbers share.)
    cache.get("SELECT a");
    cache.get("SELECT b");
    cache.get("SELECT a");  // now SELECT b is the least recently used
    cache.get("SELECT c");
    BOOST_TEST(cache.size() == 2u);
    auto misses = cache.misses();
    cache.get("SELECT a");
    BOOST_TEST(cache.misses() == misses);  // still there
    cache.get("SELECT b");
    BOOST_TEST(cache.misses() == misses + 1);  // was evicted

    // The byte budget: a statement bigger than an eighth of it is classified, not kept.
    pol::ClassifyCache small(100, 8192);
    std::string big = "SELECT '" + std::string(2000, 'x') + "'";
    auto v = small.get(big);
    BOOST_TEST(v->primary.ok());
    BOOST_TEST(small.size() == 0u);
    for (int i = 0; i < 100; ++i)
        small.get("SELECT c" + std::to_string(i) + ", '" + std::string(200, 'y') + "'");
    BOOST_TEST(small.bytes() <= 8192u);
    BOOST_TEST(small.size() < 100u);
    BOOST_TEST(small.size() > 0u);

    pol::ClassifyCache none(0, 8192);
    none.get("SELECT 1");
    BOOST_TEST(none.size() == 0u);
}

BOOST_AUTO_TEST_CASE(literal_key_zeroes_numbers_only)
{
    auto key = [](const std::string& sql) { return pol::literal_key(sql).value_or("<none>"); };
    BOOST_TEST(key("SELECT abalance FROM pgbench_accounts WHERE aid = 834212;") ==
               "SELECT abalance FROM pgbench_accounts WHERE aid = 000000;");
    BOOST_TEST(key("SELECT 1.5, -7, 1e5, 12abc") == "SELECT 0.0, -0, 0e5, 00abc");
    // Identifiers, quoted identifiers, strings, comments, parameters, dollar quotes keep theirs.
    BOOST_TEST(key("SELECT t1.c2, \"f 1\"(3) FROM t1") == "SELECT t1.c2, \"f 1\"(0) FROM t1");
    BOOST_TEST(key("SELECT '12', 'it''s 3', $1, 4 -- 5\n/* 6 /* 7 */ 8 */ 9") ==
               "SELECT '12', 'it''s 3', $1, 0 -- 5\n/* 6 /* 7 */ 8 */ 0");
    BOOST_TEST(key("SELECT $q$ 1 $q$, $$2$$, a$3, 4") == "SELECT $q$ 1 $q$, $$2$$, a$3, 0");
    // Length is kept, so statement offsets fit every text of the key.
    BOOST_TEST(key("SELECT 123; SELECT 4").size() == std::string("SELECT 123; SELECT 4").size());
    // Not plain enough: no key.
    for (const char* sql : {"SELECT E'\\n', 1", "SELECT 'é', 1", "SELECT 'open", "SELECT \"open", "SELECT $a$ open",
                            "SELECT /* open", "SELECT 1 /* /* */"})
        BOOST_TEST(!pol::literal_key(sql).has_value(), sql);
}

// Texts that differ only in numbers share a cache entry when nothing a number could
// change is in them; SET and EXPLAIN options never do.
BOOST_AUTO_TEST_CASE(cache_shares_classifications_by_literal_key)
{
    pol::ClassifyCache cache;
    auto a = cache.get("SELECT abalance FROM pgbench_accounts WHERE aid = 17");
    auto b = cache.get("SELECT abalance FROM pgbench_accounts WHERE aid = 42");
    BOOST_TEST(a.get() == b.get());
    BOOST_TEST(cache.key_hits() == 1u);
    BOOST_TEST(cache.misses() == 1u);
    cache.get("SELECT abalance FROM pgbench_accounts WHERE aid = 4242");  // another length
    BOOST_TEST(cache.misses() == 2u);

    auto on = cache.get("SET transaction_read_only = 1");
    auto off = cache.get("SET transaction_read_only = 0");
    BOOST_TEST(on.get() != off.get());
    auto plain = cache.get("EXPLAIN (ANALYZE 0) DELETE FROM t");
    auto analyze = cache.get("EXPLAIN (ANALYZE 1) DELETE FROM t");
    BOOST_TEST(plain.get() != analyze.get());
    BOOST_TEST(pol::kind_name(analyze->primary.value().at(0).kind) == "explain_analyze");
    BOOST_TEST(pol::kind_name(plain->primary.value().at(0).kind) == "explain");
    // An exact entry stored under a text that is also a key is not taken for the key's.
    cache.get("SET work_mem = 0");
    auto four = cache.get("SET work_mem = 4");
    BOOST_TEST(four->primary.value().at(0).setting == "work_mem");
    BOOST_TEST(cache.key_hits() == 1u);
    // Function names with digits are not numbers.
    auto f1 = cache.get("SELECT sha1(x) FROM t");
    auto f2 = cache.get("SELECT sha2(x) FROM t");
    BOOST_TEST(f1.get() != f2.get());
}

// Texts the server may lex differently from the primary reading are read every way.
BOOST_AUTO_TEST_CASE(readings_cover_lexing_settings_and_client_only_encodings)
{
    // No backslash: one reading.
    BOOST_TEST(pol::classify_readings("SELECT 'a''b'; SELECT 2").others.empty());
    BOOST_TEST(pol::classify_readings("SELECT 'héllo'").others.empty());

    // standard_conforming_strings off turns a string into a string and a DELETE.
    const std::string smuggled = "SELECT 'a\\''; DELETE FROM t; --'";
    pol::Classified c = pol::classify_readings(smuggled);
    BOOST_TEST_REQUIRE(c.primary.ok());
    BOOST_TEST(c.primary.value().size() == 1u);
    BOOST_TEST_REQUIRE(c.others.size() == 1u);
    BOOST_TEST(c.others[0].how == "standard_conforming_strings = off");
    BOOST_TEST_REQUIRE(c.others[0].statements.ok());
    BOOST_TEST_REQUIRE(c.others[0].statements.value().size() == 2u);
    BOOST_TEST(pol::kind_name(c.others[0].statements.value()[1].kind) == "delete");
    // ... and the setting is back as it was for the next primary reading.
    BOOST_TEST(pol::classify(smuggled).value().size() == 1u);

    // A text valid only with standard_conforming_strings off still has a reading.
    pol::Classified off = pol::classify_readings("SELECT 'it\\'s'");
    BOOST_TEST(!off.primary.ok());
    BOOST_TEST_REQUIRE(off.others.size() == 1u);
    BOOST_TEST(off.others[0].statements.ok());

    // In JOHAB, 0x84 0x3B is one character: where this parser sees two statements, the
    // server sees "SELECT 1 AS a?SELECT 2", one that does not parse; the reading says so.
    pol::Classified j = pol::classify_readings("SELECT 1 AS a\x84;SELECT 2");
    BOOST_TEST_REQUIRE(j.primary.ok());
    BOOST_TEST(j.primary.value().size() == 2u);
    // (Encodings that leave the text alike share one reading: here BIG5's rule is JOHAB's.)
    bool encoding_seen = false;
    for (const auto& r : j.others)
        if (r.how.rfind("client_encoding", 0) == 0) {
            encoding_seen = true;
            BOOST_TEST(!r.statements.ok(), r.how);
        }
    BOOST_TEST(encoding_seen);
    // A multibyte character followed by a letter, a blank or a quote reads the same.
    BOOST_TEST(pol::classify_readings("SELECT 'caf\xc3\xa9', 'x\xc3\xa9s' AS \"\xc3\xa9\"").others.empty());

    // In SJIS, 0x95 0x5C is one character: E'\x95\' is not closed at its second quote
    // for the server, so the DELETE that the primary reading sees inside the string runs.
    const std::string sjis = "SELECT E'\x95\\'; DELETE FROM t; --'";
    pol::Classified e = pol::classify_readings(sjis);
    BOOST_TEST_REQUIRE(e.primary.ok());
    BOOST_TEST(e.primary.value().size() == 1u);
    bool delete_seen = false;
    for (const auto& r : e.others)
        if (r.statements.ok())
            for (const auto& st : r.statements.value())
                delete_seen |= st.kind == pol::Kind::Delete && r.how.find("SJIS") != std::string_view::npos;
    BOOST_TEST(delete_seen);
}

// ---- what the audit record says: class, command, relations ---------------------------------

namespace {

// "name:access name:access ..." in order, for one statement.
std::string relations_text(const pol::Statement& s)
{
    std::string out;
    for (const auto& r : s.relations)
        out += (out.empty() ? "" : " ") + r.name + ":" + std::string(pol::access_name(r.access));
    return out;
}

struct AuditRow {
    const char* sql;
    const char* audit_class;
    const char* command;
    const char* relations;
};

// clang-format off
const AuditRow kAuditCorpus[] = {
    {"SELECT * FROM customers", "READ", "SELECT", "customers:read"},
    {"SELECT * FROM public.customers c JOIN sales.orders o ON o.cid = c.id", "READ", "SELECT",
     "public.customers:read sales.orders:read"},
    {"SELECT * FROM \"Mixed\".t WHERE x IN (SELECT y FROM u)", "READ", "SELECT", "\"Mixed\".t:read u:read"},
    {"WITH recent AS (SELECT * FROM orders) SELECT * FROM recent JOIN customers USING (id)", "READ", "SELECT",
     "customers:read orders:read"},
    {"WITH d AS (DELETE FROM t RETURNING *) INSERT INTO archive SELECT * FROM d", "WRITE", "INSERT",
     "archive:write t:write"},
    {"WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "WRITE", "SELECT", "t:write"},
    {"SELECT * FROM t FOR UPDATE", "READ", "SELECT", "t:read"},
    {"SELECT * INTO newt FROM t", "DDL", "SELECT INTO", "newt:ddl t:read"},
    {"INSERT INTO t SELECT * FROM u", "WRITE", "INSERT", "t:write u:read"},
    {"UPDATE t SET a = u.a FROM u WHERE t.id = u.id", "WRITE", "UPDATE", "t:write u:read"},
    {"UPDATE t SET a = (SELECT max(a) FROM t)", "WRITE", "UPDATE", "t:write t:read"},
    {"DELETE FROM s.t USING u WHERE s.t.id = u.id", "WRITE", "DELETE", "s.t:write u:read"},
    {"MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE", "WRITE", "MERGE", "t:write u:read"},
    {"TRUNCATE t, s.u", "WRITE", "TRUNCATE TABLE", "t:write s.u:write"},
    {"COPY t TO STDOUT", "READ", "COPY", "t:read"},
    {"COPY t FROM STDIN", "WRITE", "COPY", "t:write"},
    {"COPY (SELECT * FROM t) TO STDOUT", "READ", "COPY", "t:read"},
    {"CREATE TABLE t (a int REFERENCES u)", "DDL", "CREATE TABLE", "t:ddl u:ddl"},
    {"CREATE TABLE t AS SELECT * FROM u", "DDL", "CREATE TABLE AS", "u:read t:ddl"},
    {"CREATE MATERIALIZED VIEW m AS SELECT * FROM u", "DDL", "CREATE MATERIALIZED VIEW", "u:read m:ddl"},
    {"CREATE VIEW v AS SELECT * FROM u", "DDL", "CREATE VIEW", "v:ddl u:read"},
    {"ALTER TABLE s.t ADD COLUMN b int", "DDL", "ALTER TABLE", "s.t:ddl"},
    {"DROP TABLE s.t, u", "DDL", "DROP TABLE", "s.t:ddl u:ddl"},
    {"DROP VIEW v", "DDL", "DROP VIEW", "v:ddl"},
    {"DROP FUNCTION f()", "DDL", "DROP FUNCTION", ""},
    {"CREATE INDEX i ON t (a)", "DDL", "CREATE INDEX", "t:ddl"},
    {"CREATE SEQUENCE s.seq", "DDL", "CREATE SEQUENCE", "s.seq:ddl"},
    {"ALTER TABLE t RENAME TO u", "DDL", "ALTER TABLE", "t:ddl"},
    {"CREATE POLICY p ON t USING (true)", "DDL", "CREATE POLICY", "t:ddl"},
    {"CREATE SCHEMA s", "DDL", "CREATE SCHEMA", ""},
    {"CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", "DDL", "CREATE FUNCTION", ""},
    {"REFRESH MATERIALIZED VIEW m", "DDL", "REFRESH MATERIALIZED VIEW", "m:ddl"},
    {"ALTER SYSTEM SET work_mem = '1MB'", "DDL", "ALTER SYSTEM", ""},
    {"GRANT SELECT ON customers TO auditor", "ROLE", "GRANT", "customers:ddl"},
    {"REVOKE ALL ON TABLE s.t FROM x", "ROLE", "REVOKE", "s.t:ddl"},
    {"GRANT admins TO alice", "ROLE", "GRANT ROLE", ""},
    {"CREATE ROLE alice", "ROLE", "CREATE ROLE", ""},
    {"ALTER ROLE alice NOLOGIN", "ROLE", "ALTER ROLE", ""},
    {"DROP ROLE alice", "ROLE", "DROP ROLE", ""},
    {"DO $$BEGIN PERFORM 1; END$$", "FUNCTION", "DO", ""},
    {"CALL p(1)", "FUNCTION", "CALL", ""},
    {"SET search_path = s", "MISC_SET", "SET", ""},
    {"SET ROLE alice", "MISC_SET", "SET", ""},
    {"RESET ALL", "MISC", "RESET", ""},
    {"SHOW work_mem", "MISC", "SHOW", ""},
    {"VACUUM t", "MISC", "VACUUM", "t:ddl"},
    {"ANALYZE t", "MISC", "ANALYZE", "t:ddl"},
    {"CHECKPOINT", "MISC", "CHECKPOINT", ""},
    {"DISCARD ALL", "MISC", "DISCARD ALL", ""},
    {"FETCH 10 FROM c", "MISC", "FETCH", ""},
    {"BEGIN", "MISC", "BEGIN", ""},
    {"COMMIT", "MISC", "COMMIT", ""},
    {"LOCK TABLE t", "MISC", "LOCK TABLE", "t:read"},
    {"EXPLAIN SELECT * FROM t", "MISC", "EXPLAIN", "t:read"},
    {"EXPLAIN ANALYZE DELETE FROM t", "WRITE", "EXPLAIN", "t:write"},
    {"PREPARE q AS UPDATE t SET a = 1", "WRITE", "PREPARE", "t:write"},
    {"DECLARE c CURSOR FOR SELECT * FROM t", "READ", "DECLARE CURSOR", "t:read"},
    {"LISTEN ch", "MISC", "LISTEN", ""},
    {"SELECT 1", "READ", "SELECT", ""},
};
// clang-format on

} // namespace

BOOST_AUTO_TEST_CASE(audit_class_command_and_relations)
{
    for (const AuditRow& row : kAuditCorpus) {
        BOOST_TEST_CONTEXT("<" << row.sql << ">")
        {
            pol::Statement s = one(row.sql);
            BOOST_TEST(pol::audit_class_name(s.audit_class) == row.audit_class);
            BOOST_TEST(s.command == row.command);
            BOOST_TEST(relations_text(s) == row.relations);
        }
    }
}

// Each statement of a query string has its own; a name read and written is listed twice.
BOOST_AUTO_TEST_CASE(relations_per_statement_and_access)
{
    auto v = must_classify("SELECT * FROM a; INSERT INTO b SELECT * FROM b");
    BOOST_TEST_REQUIRE(v.size() == 2u);
    BOOST_TEST(relations_text(v[0]) == "a:read");
    BOOST_TEST(relations_text(v[1]) == "b:write b:read");
    BOOST_TEST(relations_text(one("SELECT * FROM a, a AS again, public.a")) == "a:read public.a:read");
}

BOOST_AUTO_TEST_SUITE_END()

namespace {

// Recursion that needs about depth * 1 KiB of stack and cannot be turned into a loop;
// returns depth.
int burn(int depth)
{
    volatile char pad[1024];
    pad[0] = 1;
    if (depth == 0)
        return pad[0] - 1;
    return burn(depth - 1) + pad[0];
}

} // namespace

BOOST_AUTO_TEST_SUITE(policy_deep_stack)

BOOST_AUTO_TEST_CASE(runs_deep_recursion_and_returns)
{
    int result = -1;
    // ~40 MiB of frames: more than the main thread's usual 8 MiB stack.
    auto st = pol::run_on_deep_stack(64u << 20, [&] { result = burn(40000); });
    BOOST_TEST_REQUIRE(st.ok(), (st.ok() ? "" : st.error()));
    BOOST_TEST(result == 40000);
}

BOOST_AUTO_TEST_CASE(rethrows_exceptions)
{
    BOOST_CHECK_THROW(
        (void)pol::run_on_deep_stack(1u << 20, [] { throw std::runtime_error("from the deep"); }),
        std::runtime_error);
    // And works again afterwards.
    bool ran = false;
    BOOST_TEST(pol::run_on_deep_stack(1u << 20, [&] { ran = true; }).ok());
    BOOST_TEST(ran);
}

BOOST_AUTO_TEST_SUITE_END()
