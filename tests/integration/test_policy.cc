// Statement policies end to end: read_only, deny and allow lists, COPY and LISTEN, through
// psql, libpq (simple, extended, pipelined) and pgbench; denied text never reaching the
// server (its log); transaction state after a denial; the policy's timeouts; assignment by
// default_policy, [database_policies] and a rule's policy=; the denial metric; --check-config.
#include "harness.hh"

#include <boost/test/unit_test.hpp>

#include <chrono>
#include <string>
#include <vector>

using namespace pgw::it;

namespace {

using Clock = std::chrono::steady_clock;

std::string sqlstate_of(const PGresult* r)
{
    const char* s = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    return s ? s : "";
}

std::string field_of(const PGresult* r, int code)
{
    const char* s = PQresultErrorField(r, code);
    return s ? s : "";
}

long elapsed_ms(Clock::time_point since)
{
    return long(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - since).count());
}

// The tables these tests read and try to change, in database postgres, reset per test.
void reset_tables()
{
    direct_exec("CREATE TABLE IF NOT EXISTS public.policy_items (id int PRIMARY KEY, note text NOT NULL);"
                "CREATE SEQUENCE IF NOT EXISTS public.policy_seq;"
                "DROP TABLE IF EXISTS public.policy_mk_ddl, public.policy_mk_into;"
                "TRUNCATE public.policy_items;"
                "INSERT INTO public.policy_items VALUES (1, 'one'), (2, 'two'), (3, 'three');"
                "ALTER SEQUENCE public.policy_seq RESTART");
}

std::string item_count() { return direct_scalar("SELECT count(*) FROM public.policy_items"); }

// A [databases] line for the shared cluster's postgres database under another name.
std::string db_line(const std::string& name)
{
    return name + " = host=127.0.0.1 port=" + std::to_string(env().pg_port) + " dbname=postgres sslmode=disable\n";
}

ProxyOptions read_only_options(const std::string& extra_settings = "")
{
    ProxyOptions o;
    o.extra_settings = "default_policy = readonly\n" + extra_settings;
    o.extra_sections = "[policy.readonly]\nread_only = 1\n";
    return o;
}

// Checks that r is our denial: ERROR 42501 naming the policy and the kind, with the hint.
void check_denied(const PGresult* r, const std::string& policy, const std::string& kind, const std::string& what)
{
    BOOST_TEST_INFO("statement: " << what);
    BOOST_TEST(PQresultStatus(r) == PGRES_FATAL_ERROR, PQresStatus(PQresultStatus(r)));
    BOOST_TEST(sqlstate_of(r) == "42501", PQresultErrorMessage(r));
    BOOST_TEST(field_of(r, PG_DIAG_SEVERITY_NONLOCALIZED) == "ERROR");
    const std::string msg = field_of(r, PG_DIAG_MESSAGE_PRIMARY);
    BOOST_TEST(contains(msg, "pgwicket policy \"" + policy + "\" does not allow this statement (" + kind + ")"), msg);
    BOOST_TEST(contains(field_of(r, PG_DIAG_MESSAGE_HINT), "not sent to the server"), PQresultErrorMessage(r));
}

void exec_denied(PGconn* c, const std::string& sql, const std::string& policy, const std::string& kind)
{
    Result r(PQexec(c, sql.c_str()));
    check_denied(r.get(), policy, kind, sql);
}

void exec_ok(PGconn* c, const std::string& sql)
{
    Result r(PQexec(c, sql.c_str()));
    const auto st = PQresultStatus(r.get());
    BOOST_TEST((st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK), sql << ": " << PQresultErrorMessage(r.get()));
}

struct Denied {
    const char* sql;   // each carries a marker found nowhere else in this run's server log
    const char* kind;
    const char* marker;
};

// Denied under read_only; the markers prove the text never reached the server.
const Denied kReadOnlyDenied[] = {
    {"DELETE FROM policy_items WHERE note = 'mk_ro_delete'", "delete", "mk_ro_delete"},
    {"INSERT INTO policy_items VALUES (99, 'mk_ro_insert')", "insert", "mk_ro_insert"},
    {"CREATE TABLE policy_mk_ddl (mk_ro_ddl int)", "ddl", "mk_ro_ddl"},
    {"SELECT nextval('policy_seq') AS mk_ro_nextval", "select", "mk_ro_nextval"},
    {"WITH d AS (DELETE FROM policy_items WHERE note = 'mk_ro_cte' RETURNING *) SELECT * FROM d", "select",
     "mk_ro_cte"},
    {"SELECT id AS mk_ro_into INTO policy_mk_into FROM policy_items", "select_into", "mk_ro_into"},
    {"DO $$BEGIN PERFORM 'mk_ro_do'; END$$", "do", "mk_ro_do"},
    {"SELECT 'mk_ro_multi_a'; UPDATE policy_items SET note = 'mk_ro_multi_b'", "update", "mk_ro_multi_"},
    {"/* mk_ro_comment */ SeLeCt 1; -- harmless?\n dElEtE FROM policy_items", "delete", "mk_ro_comment"},
    {"SELECT $q$; DELETE FROM policy_items; $q$ AS mk_ro_dollar; TRUNCATE policy_items", "truncate",
     "mk_ro_dollar"},
};

} // namespace

BOOST_AUTO_TEST_SUITE(policy)

// 1. read_only through libpq and psql: writes are refused with 42501 naming the policy,
//    reads work in the same session, and the denied texts never reach the server.
BOOST_AUTO_TEST_CASE(read_only_denies_writes_and_they_never_reach_the_server)
{
    reset_tables();
    BOOST_TEST_REQUIRE(direct_scalar("SHOW log_statement") == "all");
    Proxy p("pgwicket-policy-ro", read_only_options());
    Conn c = connect_ok(p.conninfo());
    for (const auto& d : kReadOnlyDenied) {
        exec_denied(c.get(), d.sql, "readonly", d.kind);
        // The session is usable at once, and nothing changed.
        BOOST_TEST(scalar(c.get(), "SELECT count(*) AS mk_ro_allowed_libpq FROM policy_items") == "3", d.sql);
        BOOST_TEST(PQtransactionStatus(c.get()) == PQTRANS_IDLE);
    }
    exec_ok(c.get(), "SELECT lower(note) AS mk_ro_allowed_lower FROM policy_items");
    // What pgwicket cannot parse is refused (fail closed), with the parser's message.
    {
        Result r(PQexec(c.get(), "SELEC 'mk_ro_unparsed'"));
        check_denied(r.get(), "readonly", "other", "a syntax error");
        BOOST_TEST(contains(PQresultErrorMessage(r.get()), "could not parse it: syntax error at or near \"SELEC\""),
                   PQresultErrorMessage(r.get()));
    }
    BOOST_TEST(scalar(c.get(), "SHOW work_mem") != "");

    // psql: the error and hint as psql prints them, reads before and after.
    RunResult r = psql(p.conninfo(), "SELECT 'mk_ro_allowed_psql_1' AS a;\n"
                                     "DELETE FROM policy_items WHERE note = 'mk_ro_psql_delete';\n"
                                     "UPDATE policy_items SET note = 'mk_ro_psql_update';\n"
                                     "SELECT count(*) AS mk_ro_allowed_psql_2 FROM policy_items;\n");
    BOOST_TEST(r.ok(), r.status() << r.out);
    BOOST_TEST(contains(r.out, "ERROR:  pgwicket policy \"readonly\" does not allow this statement (delete): "
                               "the policy is read-only and the statement modifies rows"),
               r.out);
    BOOST_TEST(contains(r.out, "(update)"), r.out);
    BOOST_TEST(contains(r.out, "HINT:  The statement was not sent to the server."), r.out);
    BOOST_TEST(contains(r.out, "mk_ro_allowed_psql_1"), r.out);
    BOOST_TEST(contains(r.out, "mk_ro_allowed_psql_2"), r.out);

    // Nothing changed upstream.
    BOOST_TEST(item_count() == "3");
    BOOST_TEST(direct_scalar("SELECT count(*) FROM policy_items WHERE note LIKE 'mk%'") == "0");
    BOOST_TEST(direct_scalar("SELECT is_called FROM policy_seq") == "f");
    BOOST_TEST(direct_scalar("SELECT to_regclass('policy_mk_ddl') IS NULL AND to_regclass('policy_mk_into') IS NULL") ==
               "t");

    // The server's log (log_statement = all) has every allowed statement and no denied one.
    const std::string log = read_file(env().pg_log);
    for (const char* allowed : {"mk_ro_allowed_libpq", "mk_ro_allowed_lower", "mk_ro_allowed_psql_1",
                                "mk_ro_allowed_psql_2"})
        BOOST_TEST(contains(log, allowed), allowed << " missing from " << env().pg_log);
    for (const auto& d : kReadOnlyDenied)
        BOOST_TEST(!contains(log, d.marker), d.marker << " reached the server: " << d.sql);
    for (const char* denied : {"mk_ro_psql_delete", "mk_ro_psql_update", "mk_ro_unparsed"})
        BOOST_TEST(!contains(log, denied), denied << " reached the server");
    BOOST_TEST(contains(read_file(p.log_path()), "denied by policy \"readonly\": delete statement"), p.log_tail());
    check_clean_stop(p);
}

// 2. A denial inside a transaction fails it, as any error would, and the client sees the
//    server's real state: 25P02 next, PQTRANS_INERROR, then ROLLBACK (or a savepoint) works.
BOOST_AUTO_TEST_CASE(denial_inside_a_transaction_aborts_it)
{
    reset_tables();
    Proxy p("pgwicket-policy-tx", read_only_options());
    Conn c = connect_ok(p.conninfo());
    exec_ok(c.get(), "BEGIN");
    BOOST_TEST(scalar(c.get(), "SELECT count(*) FROM policy_items") == "3");
    BOOST_TEST(PQtransactionStatus(c.get()) == PQTRANS_INTRANS);
    exec_denied(c.get(), "DELETE FROM policy_items", "readonly", "delete");
    BOOST_TEST(PQtransactionStatus(c.get()) == PQTRANS_INERROR);
    {
        Result r(PQexec(c.get(), "SELECT 1"));
        BOOST_TEST(sqlstate_of(r.get()) == "25P02", PQresultErrorMessage(r.get()));
        BOOST_TEST(contains(PQresultErrorMessage(r.get()), "current transaction is aborted"),
                   PQresultErrorMessage(r.get()));
    }
    // A second denial in the failed transaction is still ours, not the server's 25P02.
    exec_denied(c.get(), "UPDATE policy_items SET note = 'x'", "readonly", "update");
    BOOST_TEST(PQtransactionStatus(c.get()) == PQTRANS_INERROR);
    exec_ok(c.get(), "ROLLBACK");
    BOOST_TEST(PQtransactionStatus(c.get()) == PQTRANS_IDLE);
    BOOST_TEST(scalar(c.get(), "SELECT 1") == "1");

    // A savepoint takes the transaction back past the denial.
    exec_ok(c.get(), "BEGIN");
    exec_ok(c.get(), "SAVEPOINT s");
    exec_denied(c.get(), "TRUNCATE policy_items", "readonly", "truncate");
    BOOST_TEST(PQtransactionStatus(c.get()) == PQTRANS_INERROR);
    exec_ok(c.get(), "ROLLBACK TO SAVEPOINT s");
    BOOST_TEST(PQtransactionStatus(c.get()) == PQTRANS_INTRANS);
    BOOST_TEST(scalar(c.get(), "SELECT count(*) FROM policy_items") == "3");
    exec_ok(c.get(), "COMMIT");
    BOOST_TEST(PQtransactionStatus(c.get()) == PQTRANS_IDLE);

    // psql shows the same: the denial, then the aborted transaction.
    RunResult r = psql(p.conninfo(), "BEGIN;\nSELECT 1;\nDELETE FROM policy_items;\nSELECT 2;\nROLLBACK;\nSELECT 3 AS after;\n");
    BOOST_TEST(contains(r.out, "does not allow this statement (delete)"), r.out);
    BOOST_TEST(contains(r.out, "ERROR:  current transaction is aborted"), r.out);
    BOOST_TEST(contains(r.out, "after"), r.out);
    BOOST_TEST(item_count() == "3");
    check_clean_stop(p);
}

// 3. The extended protocol: a denied Parse fails at its Sync and the connection goes on;
//    pipelines keep each error with its own statement; pgbench -M prepared runs clean.
BOOST_AUTO_TEST_CASE(extended_protocol_and_pipelines)
{
    reset_tables();
    Proxy p("pgwicket-policy-ext", read_only_options());
    Conn c = connect_ok(p.conninfo());
    {
        Result r(PQprepare(c.get(), "del", "DELETE FROM policy_items WHERE note = $1 AND 'mk_ext_prepare' <> ''", 1,
                           nullptr));
        check_denied(r.get(), "readonly", "delete", "PQprepare DELETE");
    }
    BOOST_TEST(PQstatus(c.get()) == CONNECTION_OK);
    BOOST_TEST(PQtransactionStatus(c.get()) == PQTRANS_IDLE);
    {
        // The statement was never prepared: executing it fails as the server says.
        const char* v[] = {"one"};
        Result r(PQexecPrepared(c.get(), "del", 1, v, nullptr, nullptr, 0));
        BOOST_TEST(sqlstate_of(r.get()) == "26000", PQresultErrorMessage(r.get()));
    }
    {
        const char* v[] = {"2"};
        Result r(PQexecParams(c.get(), "SELECT note FROM policy_items WHERE id = $1::int", 1, nullptr, v, nullptr,
                              nullptr, 0));
        BOOST_TEST_REQUIRE(PQresultStatus(r.get()) == PGRES_TUPLES_OK, PQresultErrorMessage(r.get()));
        BOOST_TEST(std::string(PQgetvalue(r.get(), 0, 0)) == "two");
    }
    {
        const char* v[] = {"1"};
        Result r(PQexecParams(c.get(), "UPDATE policy_items SET note = 'mk_ext_params' WHERE id = $1::int", 1, nullptr,
                              v, nullptr, nullptr, 0));
        check_denied(r.get(), "readonly", "update", "PQexecParams UPDATE");
    }
    {
        Result prep(PQprepare(c.get(), "sel", "SELECT count(*) FROM policy_items WHERE id > $1::int", 1, nullptr));
        BOOST_TEST_REQUIRE(PQresultStatus(prep.get()) == PGRES_COMMAND_OK, PQresultErrorMessage(prep.get()));
        const char* v[] = {"1"};
        Result r(PQexecPrepared(c.get(), "sel", 1, v, nullptr, nullptr, 0));
        BOOST_TEST_REQUIRE(PQresultStatus(r.get()) == PGRES_TUPLES_OK, PQresultErrorMessage(r.get()));
        BOOST_TEST(std::string(PQgetvalue(r.get(), 0, 0)) == "2");
    }

    // A pipeline: ok | denied | ok, each with its own Sync; then ok, denied, skipped in one
    // Sync; then a server error before a denial, and the server's own 42601 (a type name
    // it cannot parse; pgwicket's parser sees a cast of a literal) after it; then the
    // server's own 42601 before a denial in the same Sync: the error is the server's, for
    // the statement that failed, and the denied one is skipped with it.
    BOOST_TEST_REQUIRE(PQenterPipelineMode(c.get()) == 1);
    auto send = [&](const char* sql) {
        BOOST_TEST_REQUIRE(PQsendQueryParams(c.get(), sql, 0, nullptr, nullptr, nullptr, nullptr, 0) == 1);
    };
    auto sync = [&] { BOOST_TEST_REQUIRE(PQpipelineSync(c.get()) == 1); };
    send("SELECT 1");
    sync();
    send("DELETE FROM policy_items");
    sync();
    send("SELECT 2");
    sync();
    send("SELECT 3");
    send("INSERT INTO policy_items VALUES (7, 'seven')");
    send("SELECT 4");
    sync();
    send("SELECT 1/0");
    send("DELETE FROM policy_items");
    sync();
    send("SELECT 'no such type('::regtype");
    sync();
    send("SELECT 6");
    sync();
    send("SELECT 'no such type('::regtype");
    send("DELETE FROM policy_items");
    sync();
    send("SELECT 7");
    sync();
    std::vector<std::string> got;
    for (int syncs = 0; syncs < 9;) {
        PGresult* raw = PQgetResult(c.get());
        if (!raw)
            continue;  // the end of one query's results
        Result r(raw);
        switch (PQresultStatus(r.get())) {
        case PGRES_PIPELINE_SYNC:
            got.push_back("sync");
            ++syncs;
            break;
        case PGRES_TUPLES_OK:
            got.push_back(PQgetvalue(r.get(), 0, 0));
            break;
        case PGRES_PIPELINE_ABORTED:
            got.push_back("aborted");
            break;
        case PGRES_FATAL_ERROR:
            got.push_back(sqlstate_of(r.get()));
            if (sqlstate_of(r.get()) == "42601")  // the server's own words
                BOOST_TEST(!contains(PQresultErrorMessage(r.get()), "pgwicket"), PQresultErrorMessage(r.get()));
            break;
        default:
            got.push_back(PQresStatus(PQresultStatus(r.get())));
        }
    }
    const std::vector<std::string> want = {"1",     "sync",    "42501", "sync",  "2",     "sync",
                                           "3",     "42501",   "aborted", "sync", "22012", "aborted",
                                           "sync",  "42601",   "sync",  "6",     "sync",  "42601",
                                           "aborted", "sync",  "7",     "sync"};
    std::string got_text, want_text;
    for (const auto& g : got)
        got_text += g + " ";
    for (const auto& w : want)
        want_text += w + " ";
    BOOST_TEST(got_text == want_text);
    BOOST_TEST(PQexitPipelineMode(c.get()) == 1);
    BOOST_TEST(scalar(c.get(), "SELECT count(*) FROM policy_items") == "3");
    BOOST_TEST(item_count() == "3");
    BOOST_TEST(!contains(read_file(env().pg_log), "mk_ext_"));

    // pgbench's read-only script with prepared statements: no statement is refused.
    direct_exec("DROP DATABASE IF EXISTS policy_bench WITH (FORCE)");
    direct_exec("CREATE DATABASE policy_bench");
    RunOptions ro;
    ro.env = client_env({{"PGSSLMODE", "disable"}});
    ro.timeout_s = 180;
    RunResult init = run({env().bin("pgbench"), "-h", "127.0.0.1", "-p", std::to_string(env().pg_port), "-U",
                          "postgres", "-i", "-s", "1", "-q", "policy_bench"},
                         ro);
    BOOST_TEST_REQUIRE(init.ok(), init.status() << excerpt(init.out));
    RunResult bench = run({env().bin("pgbench"), "-h", "127.0.0.1", "-p", std::to_string(p.port()), "-U", "postgres",
                           "-n", "-S", "-M", "prepared", "-c", "2", "-j", "2", "-t", "300", "policy_bench"},
                          ro);
    BOOST_TEST(bench.ok(), bench.status() << excerpt(bench.out));
    BOOST_TEST(contains(bench.out, "number of transactions actually processed: 600/600"), excerpt(bench.out));
    BOOST_TEST(contains(bench.out, "number of failed transactions: 0"), excerpt(bench.out));
    // And the write script is refused at its first write.
    RunResult tpcb = run({env().bin("pgbench"), "-h", "127.0.0.1", "-p", std::to_string(p.port()), "-U", "postgres",
                          "-n", "-M", "prepared", "-c", "1", "-t", "5", "policy_bench"},
                         ro);
    BOOST_TEST(!tpcb.ok(), excerpt(tpcb.out));
    BOOST_TEST(contains(tpcb.out, "pgwicket policy \"readonly\""), excerpt(tpcb.out));
    direct_exec("DROP DATABASE IF EXISTS policy_bench WITH (FORCE)");
    check_clean_stop(p);
}

// 4. deny and allow lists, allow_copy = 0 and allow_listen = 0, one database each.
BOOST_AUTO_TEST_CASE(deny_allow_copy_and_listen)
{
    reset_tables();
    ProxyOptions o;
    o.extra_databases = db_line("pol_deny") + db_line("pol_allow") + db_line("pol_nocopy") + db_line("pol_nolisten");
    o.extra_sections = "[policy.nodelete]\ndeny = delete, truncate\n"
                       "[policy.selectonly]\nallow = select, show, set\n"
                       "[policy.nocopy]\nallow_copy = 0\n"
                       "[policy.nolisten]\nallow_listen = 0\n"
                       "[database_policies]\npol_deny = nodelete\npol_allow = selectonly\n"
                       "pol_nocopy = nocopy\npol_nolisten = nolisten\n";
    Proxy p("pgwicket-policy-lists", o);

    {
        Conn c = connect_ok(p.conninfo("pol_deny"));
        Result r(PQexec(c.get(), "DELETE FROM policy_items WHERE id = 1"));
        check_denied(r.get(), "nodelete", "delete", "deny list");
        BOOST_TEST(contains(PQresultErrorMessage(r.get()), "its kind is on the policy's deny list"));
        exec_denied(c.get(), "TRUNCATE policy_items", "nodelete", "truncate");
        // Kinds nested in a statement count too.
        exec_denied(c.get(), "WITH d AS (DELETE FROM policy_items RETURNING *) SELECT count(*) FROM d", "nodelete",
                    "select");
        // Everything else runs: an UPDATE, rolled back.
        exec_ok(c.get(), "BEGIN");
        exec_ok(c.get(), "UPDATE policy_items SET note = 'changed' WHERE id = 1");
        exec_ok(c.get(), "ROLLBACK");
    }
    {
        Conn c = connect_ok(p.conninfo("pol_allow"));
        BOOST_TEST(scalar(c.get(), "SELECT count(*) FROM policy_items") == "3");
        BOOST_TEST(scalar(c.get(), "SHOW work_mem") != "");
        exec_ok(c.get(), "SET work_mem = '8MB'");
        Result r(PQexec(c.get(), "INSERT INTO policy_items VALUES (9, 'nine')"));
        check_denied(r.get(), "selectonly", "insert", "allow list");
        BOOST_TEST(contains(PQresultErrorMessage(r.get()), "its kind is not on the policy's allow list"));
        exec_denied(c.get(), "BEGIN", "selectonly", "transaction");
    }
    {
        Conn c = connect_ok(p.conninfo("pol_nocopy"));
        Result r(PQexec(c.get(), "COPY policy_items TO STDOUT"));
        check_denied(r.get(), "nocopy", "copy_to", "COPY TO STDOUT");
        BOOST_TEST(contains(PQresultErrorMessage(r.get()), "the policy does not allow COPY"));
        exec_denied(c.get(), "COPY policy_items FROM STDIN", "nocopy", "copy_from");
        exec_denied(c.get(), "COPY (SELECT 1) TO STDOUT", "nocopy", "copy_to");
        BOOST_TEST(scalar(c.get(), "SELECT count(*) FROM policy_items") == "3");
        // psql's \copy is a COPY ... TO STDOUT as well.
        RunResult pr = psql(p.conninfo("pol_nocopy"), "\\copy policy_items to stdout\nSELECT 'still here';\n");
        BOOST_TEST(contains(pr.out, "the policy does not allow COPY"), pr.out);
        BOOST_TEST(contains(pr.out, "still here"), pr.out);
    }
    {
        Conn c = connect_ok(p.conninfo("pol_nolisten"));
        Result r(PQexec(c.get(), "LISTEN policy_channel"));
        check_denied(r.get(), "nolisten", "listen", "LISTEN");
        BOOST_TEST(contains(PQresultErrorMessage(r.get()), "the policy does not allow LISTEN"));
        exec_ok(c.get(), "NOTIFY policy_channel");
        exec_ok(c.get(), "UNLISTEN *");
    }
    // The default database has no policy here: everything runs.
    {
        Conn c = connect_ok(p.conninfo());
        exec_ok(c.get(), "LISTEN policy_channel");
        exec_ok(c.get(), "BEGIN");
        exec_ok(c.get(), "DELETE FROM policy_items");
        exec_ok(c.get(), "ROLLBACK");
    }
    BOOST_TEST(item_count() == "3");
    check_clean_stop(p);
}

// 5. Which policy a session gets: the rule's policy=, then [database_policies], then
//    default_policy; the denial names the policy that applied, and the log says why.
BOOST_AUTO_TEST_CASE(assignment_by_rule_database_and_default)
{
    reset_tables();
    const std::string hba = env().tmpdir + "/policy.hba";
    write_file(hba, "host all alice 127.0.0.1/32 trust policy=alice_ro\n"
                    "host all all 127.0.0.1/32 trust\n"
                    "local all all trust\n");
    ProxyOptions o = read_only_options("auth_type = hba\nauth_hba_file = " + hba + "\n");
    o.extra_databases = db_line("pol_deny");
    o.extra_sections += "[policy.alice_ro]\nread_only = 1\n[policy.nodelete]\ndeny = delete\n"
                        "[database_policies]\npol_deny = nodelete\n";
    Proxy p("pgwicket-policy-assign", o);
    {
        Conn c = connect_ok(p.conninfo("postgres", "postgres"));
        exec_denied(c.get(), "DELETE FROM policy_items", "readonly", "delete");
    }
    {
        Conn c = connect_ok(p.conninfo("pol_deny", "postgres"));
        exec_denied(c.get(), "DELETE FROM policy_items", "nodelete", "delete");
        // Not read-only: an UPDATE runs (rolled back).
        exec_ok(c.get(), "BEGIN");
        exec_ok(c.get(), "UPDATE policy_items SET note = 'x'");
        exec_ok(c.get(), "ROLLBACK");
    }
    {
        Conn c = connect_ok(p.conninfo("pol_deny", "alice"));
        exec_denied(c.get(), "DELETE FROM policy_items", "alice_ro", "delete");
        exec_denied(c.get(), "UPDATE items SET price = 0", "alice_ro", "update");
        BOOST_TEST(scalar(c.get(), "SELECT count(*) FROM items") != "");
    }
    const std::string log = read_file(p.log_path());
    BOOST_TEST(contains(log, "policy \"readonly\" (from default_policy)"), p.log_tail());
    BOOST_TEST(contains(log, "policy \"nodelete\" (from [database_policies] pol_deny)"), p.log_tail());
    BOOST_TEST(contains(log, "policy \"alice_ro\" (from the rule's policy)"), p.log_tail());
    BOOST_TEST(item_count() == "3");
    check_clean_stop(p);
}

// 6. The policy's upstream settings: statement_timeout and idle_in_transaction_session_timeout
//    are set on the upstream connection and win over the client's own, in pass-through too.
BOOST_AUTO_TEST_CASE(upstream_timeouts_from_the_policy)
{
    const std::string sections = "[policy.timeouts]\nstatement_timeout = 1234\nidle_in_transaction_session_timeout = 45000\n";
    for (const char* auth : {"trust", "pass-through"}) {
        BOOST_TEST_CONTEXT("auth_type = " << auth)
        {
            ProxyOptions o;
            o.extra_settings = std::string("auth_type = ") + auth + "\ndefault_policy = timeouts\n";
            o.extra_sections = sections;
            Proxy p(std::string("pgwicket-policy-timeouts-") + auth, o);
            Conn c = connect_ok(p.conninfo());
            BOOST_TEST(scalar(c.get(), "SHOW statement_timeout") == "1234ms");
            BOOST_TEST(scalar(c.get(), "SHOW idle_in_transaction_session_timeout") == "45s");
            Conn own = connect_ok(p.conninfo("postgres", "postgres", "options='-c statement_timeout=99'"));
            BOOST_TEST(scalar(own.get(), "SHOW statement_timeout") == "1234ms");
            // The server enforces it.
            Result r(PQexec(c.get(), "SELECT pg_sleep(3)"));
            BOOST_TEST(sqlstate_of(r.get()) == "57014", PQresultErrorMessage(r.get()));
            BOOST_TEST(contains(PQresultErrorMessage(r.get()), "statement timeout"), PQresultErrorMessage(r.get()));
            check_clean_stop(p);
        }
    }
}

// 7. The policy's query_timeout: pgwicket cancels the query itself and says why.
BOOST_AUTO_TEST_CASE(query_timeout_from_the_policy)
{
    ProxyOptions o;
    o.extra_settings = "default_policy = quick\nquery_timeout = 600\n";
    o.extra_sections = "[policy.quick]\nquery_timeout = 1\n";
    Proxy p("pgwicket-policy-qt", o);
    Conn c = connect_ok(p.conninfo());
    auto t0 = Clock::now();
    Result r(PQexec(c.get(), "SELECT pg_sleep(5)"));
    const long ms = elapsed_ms(t0);
    BOOST_TEST(sqlstate_of(r.get()) == "57014", PQresultErrorMessage(r.get()));
    BOOST_TEST(field_of(r.get(), PG_DIAG_MESSAGE_PRIMARY) == "canceling statement due to query_timeout");
    BOOST_TEST(contains(field_of(r.get(), PG_DIAG_MESSAGE_DETAIL), "1 s"), PQresultErrorMessage(r.get()));
    BOOST_TEST(ms >= 900);
    BOOST_TEST(ms < 4000);
    BOOST_TEST(scalar(c.get(), "SELECT 1") == "1");
    check_clean_stop(p);
}

// 8. client_idle_timeout: an idle session is closed with FATAL 57P05 after about that long;
//    a session inside a transaction, or one that keeps working, is not.
BOOST_AUTO_TEST_CASE(client_idle_timeout_closes_idle_sessions_only)
{
    ProxyOptions o;
    o.extra_settings = "default_policy = restless\n";
    o.extra_sections = "[policy.restless]\nclient_idle_timeout = 1\n";
    Proxy p("pgwicket-policy-idle", o);

    RawSocket s(p.port());
    BOOST_TEST_REQUIRE(s.send(startup_packet({{"user", "postgres"}, {"database", "postgres"}})));
    auto greeting = s.read_until_ready();
    BOOST_TEST_REQUIRE((!greeting.empty() && greeting.back().type == 'Z'));
    auto t0 = Clock::now();
    auto m = s.read_message(5000);
    const long ms = elapsed_ms(t0);
    BOOST_TEST_REQUIRE(m.has_value(), "no message within 5 s");
    BOOST_TEST_REQUIRE(m->type == 'E');
    auto f = error_fields(m->payload);
    BOOST_TEST(f['S'] == "FATAL", fields_text(f));
    BOOST_TEST(f['C'] == "57P05", fields_text(f));
    BOOST_TEST(contains(f['M'], "idle-session timeout"), fields_text(f));
    BOOST_TEST(contains(f['H'], "client_idle_timeout"), fields_text(f));
    BOOST_TEST(ms >= 800);
    BOOST_TEST(ms < 3000);
    BOOST_TEST(s.wait_closed(5000));

    // Inside a transaction the session may sit longer; after COMMIT the clock runs again.
    Conn c = connect_ok(p.conninfo());
    exec_ok(c.get(), "BEGIN");
    sleep_ms(2500);
    BOOST_TEST(scalar(c.get(), "SELECT 1") == "1");
    sleep_ms(1500);
    exec_ok(c.get(), "COMMIT");
    // A session that keeps working is not idle.
    for (int i = 0; i < 6; ++i) {
        sleep_ms(500);
        BOOST_TEST(scalar(c.get(), "SELECT " + std::to_string(i)) == std::to_string(i));
    }
    sleep_ms(2500);
    Result r(PQexec(c.get(), "SELECT 1"));
    BOOST_TEST(PQresultStatus(r.get()) == PGRES_FATAL_ERROR);
    BOOST_TEST(contains(PQerrorMessage(c.get()), "terminating connection due to idle-session timeout"),
               PQerrorMessage(c.get()));
    BOOST_TEST(PQstatus(c.get()) == CONNECTION_BAD);
    BOOST_TEST(contains(read_file(p.log_path()), "client_idle_timeout"), p.log_tail());
    check_clean_stop(p);
}

// 9. Denials are counted as statements_total{class="unknown",outcome="denied"}, not as errors.
BOOST_AUTO_TEST_CASE(denials_are_counted)
{
    reset_tables();
    const int mport = free_port();
    Proxy p("pgwicket-policy-metrics", read_only_options("metrics_listen = 127.0.0.1:" + std::to_string(mport) + "\n"));
    const std::string url = "http://127.0.0.1:" + std::to_string(mport) + "/metrics";
    {
        Conn c = connect_ok(p.conninfo());
        exec_denied(c.get(), "DELETE FROM policy_items", "readonly", "delete");
        exec_denied(c.get(), "SELECT 1; DROP TABLE policy_items", "readonly", "ddl");
        Result prep(PQprepare(c.get(), "ins", "INSERT INTO policy_items VALUES (5, 'five')", 0, nullptr));
        check_denied(prep.get(), "readonly", "insert", "PQprepare INSERT");
        BOOST_TEST(scalar(c.get(), "SELECT 1") == "1");
    }
    std::string body;
    BOOST_TEST(wait_for([&] {
                   body = http_get(url).out;
                   return metric(body, "pgwicket_statements_total{class=\"unknown\",outcome=\"denied\"}") == 3;
               }),
               excerpt(body));
    BOOST_TEST(metric(body, "pgwicket_statements_total{class=\"unknown\",outcome=\"error\"}") == 0, excerpt(body));
    check_clean_stop(p);
}

// 10. The fast-path FunctionCall message is refused under every policy; a statement larger
//     than the 128 KiB the relay can check ends the session with FATAL 54000.
BOOST_AUTO_TEST_CASE(function_call_and_oversized_statements)
{
    ProxyOptions o;
    o.extra_settings = "default_policy = lenient\n";
    o.extra_sections = "[policy.lenient]\nallow_listen = 1\n";
    Proxy p("pgwicket-policy-fastpath", o);
    Conn c = connect_ok(p.conninfo());
    const int fnid = std::stoi(direct_scalar("SELECT 'pg_backend_pid'::regproc::oid"));
    int result = 0, len = 0;
    Result r(PQfn(c.get(), fnid, &result, &len, 1, nullptr, 0));
    check_denied(r.get(), "lenient", "function_call", "PQfn");
    BOOST_TEST(PQtransactionStatus(c.get()) == PQTRANS_IDLE);
    BOOST_TEST(scalar(c.get(), "SELECT 1") == "1");

    // Up to the limit statements pass; beyond it the session ends.
    const std::string big = "SELECT length('" + std::string(120 * 1024, 'x') + "')";
    BOOST_TEST(scalar(c.get(), big) == std::to_string(120 * 1024));
    const std::string huge = "SELECT length('" + std::string(130 * 1024, 'x') + "')";
    Result h(PQexec(c.get(), huge.c_str()));
    BOOST_TEST(PQresultStatus(h.get()) == PGRES_FATAL_ERROR);
    BOOST_TEST(contains(PQerrorMessage(c.get()), "FATAL:  statement too long for pgwicket to check against its policy"),
               PQerrorMessage(c.get()));
    BOOST_TEST(PQstatus(c.get()) == CONNECTION_BAD);
    // On the wire: FATAL 54000, then the connection closes.
    RawSocket s(p.port());
    BOOST_TEST_REQUIRE(s.send(startup_packet({{"user", "postgres"}, {"database", "postgres"}})));
    auto greeting = s.read_until_ready();
    BOOST_TEST_REQUIRE((!greeting.empty() && greeting.back().type == 'Z'));
    BOOST_TEST_REQUIRE(s.send(query_message(huge)));
    auto m = s.read_message(5000);
    BOOST_TEST_REQUIRE(m.has_value());
    BOOST_TEST_REQUIRE(m->type == 'E');
    auto f = error_fields(m->payload);
    BOOST_TEST(f['S'] == "FATAL", fields_text(f));
    BOOST_TEST(f['C'] == "54000", fields_text(f));
    BOOST_TEST(contains(f['H'], "128 KiB"), fields_text(f));
    BOOST_TEST(s.wait_closed(5000));
    check_clean_stop(p);
}

// 11. The classifier reads text as the server does only with standard_conforming_strings
//     on: a session must not get it switched off (startup packet or SET) and then hide a
//     write in what the classifier takes for a string literal.
BOOST_AUTO_TEST_CASE(lexing_settings_cannot_smuggle_a_write)
{
    reset_tables();
    ProxyOptions o = read_only_options();
    o.extra_databases = db_line("pol_deny");
    o.extra_sections += "[policy.nodelete]\ndeny = delete\n[database_policies]\npol_deny = nodelete\n";
    Proxy p("pgwicket-policy-lexing", o);
    // With standard_conforming_strings off the server ends the literal at \'' and runs the
    // DELETE; the classifier (on) sees one SELECT of a string.
    const std::string smuggle = "SELECT 'a\\''; DELETE FROM policy_items WHERE id = 1; --'";
    {
        Conn c = connect(p.conninfo("postgres", "postgres", "options='-c standard_conforming_strings=off'"));
        if (PQstatus(c.get()) == CONNECTION_OK) {
            Result r(PQexec(c.get(), smuggle.c_str()));
            BOOST_TEST(PQresultStatus(r.get()) == PGRES_FATAL_ERROR,
                       "read_only: a session started with standard_conforming_strings=off ran: " << smuggle);
        }
    }
    BOOST_TEST(item_count() == "3", "the DELETE ran under read_only");
    reset_tables();
    {
        Conn c = connect_ok(p.conninfo("pol_deny"));
        Result set(PQexec(c.get(), "SET standard_conforming_strings = off"));
        Result r(PQexec(c.get(), smuggle.c_str()));
        BOOST_TEST((PQresultStatus(set.get()) == PGRES_FATAL_ERROR || PQresultStatus(r.get()) == PGRES_FATAL_ERROR),
                   "deny = delete: SET standard_conforming_strings = off, then: " << smuggle);
    }
    BOOST_TEST(item_count() == "3", "the DELETE ran under deny = delete");
    reset_tables();
    check_clean_stop(p);
}

// 12. --check-config names an unknown policy in default_policy (and the other places).
BOOST_AUTO_TEST_CASE(check_config_reports_unknown_policy_names)
{
    const std::string bad = env().tmpdir + "/policy-typo.ini";
    write_file(bad, "[pgwicket]\ndefault_policy = raedonly\n"
                    "[databases]\n* = host=127.0.0.1\n"
                    "[policy.readonly]\nread_only = 1\n"
                    "[database_policies]\norders = readonyl\n");
    auto r = run({env().pgwicket_bin, "--check-config", "-c", bad});
    BOOST_TEST(r.exit_code != 0, r.status());
    BOOST_TEST(r.exit_code != -1, "crashed: " << r.status());
    BOOST_TEST(contains(r.out, bad + ": default_policy names policy \"raedonly\", but there is no [policy.raedonly] section"),
               r.out);
    BOOST_TEST(contains(r.out, "[database_policies] orders names policy \"readonyl\""), r.out);

    const std::string setting = env().tmpdir + "/policy-setting.ini";
    write_file(setting, "[pgwicket]\n[databases]\n* = host=127.0.0.1\n[policy.readonly]\nread_only = yes please\n");
    auto s = run({env().pgwicket_bin, "--check-config", "-c", setting});
    BOOST_TEST(s.exit_code != 0, s.status());
    BOOST_TEST(contains(s.out, setting + ":5: [policy.readonly] read_only: invalid value \"yes please\""), s.out);

    const std::string good = env().tmpdir + "/policy-good.ini";
    write_file(good, "[pgwicket]\ndefault_policy = readonly\n[databases]\n* = host=127.0.0.1\n"
                     "[policy.readonly]\nread_only = 1\n");
    auto g = run({env().pgwicket_bin, "--check-config", "-c", good});
    BOOST_TEST(g.exit_code == 0, g.status() << ": " << g.out);
}

BOOST_AUTO_TEST_SUITE_END()
