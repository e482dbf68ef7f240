// Result caps end to end: max_rows and max_bytes cut a result, cancel the upstream query and
// end it with a WARNING (an ERROR inside a transaction), through psql and libpq (simple and
// extended); SET pgwicket.max_rows overrides and their audit records; the late cancel.
#include "audit_file.hh"
#include "harness.hh"

#include <boost/test/unit_test.hpp>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

using namespace pgw::it;
using nlohmann::json;

namespace {

// Streams rows from the first one on. `SELECT g FROM generate_series(...) g` would not do:
// a function in FROM is materialized whole before its first row (5 s and gigabytes of temp
// files for this one), so the time until the cap would be PostgreSQL's, not pgwicket's.
std::string big_query(const std::string& marker)
{
    return "SELECT generate_series(1, 100000000) AS " + marker;
}

std::string field_of(const PGresult* r, int code)
{
    const char* s = PQresultErrorField(r, code);
    return s ? s : "";
}

std::string sqlstate_of(const PGresult* r) { return field_of(r, PG_DIAG_SQLSTATE); }

// A pgwicket whose sessions all get [policy.capped] with these settings.
ProxyOptions capped(const std::string& policy_lines, const std::string& extra_settings = "")
{
    ProxyOptions o;
    o.extra_settings = "default_policy = capped\n" + extra_settings;
    o.extra_sections = "[policy.capped]\n" + policy_lines;
    return o;
}

std::string cut_message(const std::string& cap, long rows, bool cancelled)
{
    return "result cut at " + cap + " (pgwicket policy): " + std::to_string(rows) + " rows sent" +
           (cancelled ? ", the query was cancelled" : "");
}

struct Notice {
    std::string severity, sqlstate, message, hint;
};

// The notices of one connection, in order. Called from libpq: nothing may escape it.
void collect_notice(void* arg, const PGresult* r) noexcept
{
    try {
        static_cast<std::vector<Notice>*>(arg)->push_back(
            {field_of(r, PG_DIAG_SEVERITY_NONLOCALIZED), field_of(r, PG_DIAG_SQLSTATE),
             field_of(r, PG_DIAG_MESSAGE_PRIMARY), field_of(r, PG_DIAG_MESSAGE_HINT)});
    } catch (...) {
    }
}

Conn connect_noticed(const std::string& conninfo, std::vector<Notice>& notices)
{
    Conn c = connect_ok(conninfo);
    PQsetNoticeReceiver(c.get(), collect_notice, &notices);
    return c;
}

std::string notices_text(const std::vector<Notice>& ns)
{
    std::string out;
    for (const Notice& n : ns)
        out += n.severity + " " + n.sqlstate + ": " + n.message + " (hint: " + n.hint + ")\n";
    return out.empty() ? "no notices" : out;
}

// Queries with `marker` in their text that the server is still running (as seen from a
// direct connection, not through pgwicket).
std::string still_running(const std::string& marker)
{
    return direct_scalar("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%" +
                         marker + "%' AND pid <> pg_backend_pid()");
}

// Checks the cut result of `sql`'s PQexec: rows 1..n, tag "SELECT n", and exactly one notice,
// the WARNING saying so.
void check_cut(PGconn* c, std::vector<Notice>& notices, const std::string& sql, const std::string& cap, long n,
               bool cancelled = true)
{
    BOOST_TEST_INFO("query: " << sql);
    notices.clear();
    Result r(PQexec(c, sql.c_str()));
    BOOST_TEST_REQUIRE(PQresultStatus(r.get()) == PGRES_TUPLES_OK, PQresultErrorMessage(r.get()));
    BOOST_TEST(PQntuples(r.get()) == n);
    for (int i = 0; i < PQntuples(r.get()); ++i)
        BOOST_TEST(std::string(PQgetvalue(r.get(), i, 0)) == std::to_string(i + 1));
    BOOST_TEST(std::string(PQcmdStatus(r.get())) == "SELECT " + std::to_string(n));
    BOOST_TEST_REQUIRE(notices.size() == 1u, notices_text(notices));
    BOOST_TEST(notices[0].severity == "WARNING");
    BOOST_TEST(notices[0].sqlstate == "01000");
    BOOST_TEST(notices[0].message == cut_message(cap, n, cancelled));
}

// The audit file of this run under `name`, not there yet.
std::string fresh_audit_path(const std::string& name)
{
    std::string path = env().tmpdir + "/" + name + ".jsonl";
    std::error_code ec;
    std::filesystem::remove(path, ec);
    return path;
}

// Every line of the audit file, which must all be JSON objects.
std::vector<json> audit_records(const std::string& path)
{
    AuditLines a = read_audit(path);
    BOOST_TEST(a.bad.empty(), "not JSON objects: " << (a.bad.empty() ? "" : a.bad.front()));
    return a.records;
}

} // namespace

BOOST_AUTO_TEST_SUITE(caps)

// What a user sees: psql prints the rows up to the cap and the WARNING; the query is
// cancelled on the server (not drained), and the session goes on.
BOOST_AUTO_TEST_CASE(psql_prints_the_rows_up_to_max_rows_then_the_warning)
{
    Proxy p("pgwicket-caps-psql", capped("max_rows = 5\n"));
    // While this session is still open, a direct connection looks for the query a second
    // after the cut; then the same session runs another statement.
    // On a pty, so stdout is line-buffered and the output shows what psql printed in
    // which order (through a pipe, stderr's WARNING would overtake the buffered rows).
    const std::string script =
        "\\set PROMPT1 ''\n" + big_query("caps_psql") + ";\n"
        "\\! sleep 1\n"
        "\\! '" + env().bin("psql") + "' -X -At -d '" + env().direct() + "' -c \"SELECT 'still running: ' || "
        "count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%AS caps_psql%' "
        "AND pid <> pg_backend_pid()\"\n"
        "SELECT 'after' AS next;\n";
    // Cancelled, not drained (that would take minutes): the WARNING says the query was
    // cancelled, the server no longer runs it, and psql is given 60 s, not minutes. No tighter
    // clock: a busy machine must not fail this test.
    RunResult r = psql(p.conninfo(), script, PsqlOptions{{}, {}, true, 60});
    BOOST_TEST(r.ok(), r.status() << "\n" << r.out);

    const std::string rows = " caps_psql \n"
                             "-----------\n"
                             "         1\n"
                             "         2\n"
                             "         3\n"
                             "         4\n"
                             "         5\n"
                             "(5 rows)\n\n";
    const std::string warning = "WARNING:  " + cut_message("max_rows = 5", 5, true) + "\n"
                                "HINT:  Ask the pgwicket operator to raise the policy's max_rows.\n";
    // psql prints a notice when libpq reads it, and it fetches the whole result (up to
    // ReadyForQuery) before printing the table: the WARNING comes out above the rows, as
    // for any WARNING the server sends during a result.
    BOOST_TEST(contains(r.out, warning + rows), r.out);
    BOOST_TEST(contains(r.out, "still running: 0\n"), r.out);
    BOOST_TEST(contains(r.out, " next  \n-------\n after\n(1 row)\n"), r.out);
    BOOST_TEST(!contains(r.out, "ERROR"), r.out);
    BOOST_TEST(still_running("AS caps_psql") == "0");
    check_clean_stop(p);
}

BOOST_AUTO_TEST_CASE(libpq_gets_max_rows_rows_and_a_notice)
{
    Proxy p("pgwicket-caps-libpq", capped("max_rows = 5\n"));
    std::vector<Notice> notices;
    Conn c = connect_noticed(p.conninfo(), notices);
    // check_cut's message says the query was cancelled (the server's 57014 ended it), not
    // drained; the server-side check below says it is gone. No clock: a busy machine may be slow.
    check_cut(c.get(), notices, big_query("caps_libpq"), "max_rows = 5", 5);
    BOOST_TEST(contains(notices.at(0).message, "max_rows"));
    BOOST_TEST(notices.at(0).hint == "Ask the pgwicket operator to raise the policy's max_rows.");
    BOOST_TEST(PQtransactionStatus(c.get()) == PQTRANS_IDLE);
    // The session stays open: the query must be gone on the server all the same.
    sleep_ms(1000);
    BOOST_TEST(still_running("AS caps_libpq") == "0");
    BOOST_TEST(scalar(c.get(), "SELECT 'after'") == "after");
    BOOST_TEST(contains(read_file(p.log_path()), "result exceeds max_rows = 5"), p.log_tail());
    check_clean_stop(p);
}

BOOST_AUTO_TEST_CASE(a_result_within_the_cap_is_untouched)
{
    Proxy p("pgwicket-caps-under", capped("max_rows = 5\n"));
    std::vector<Notice> notices;
    Conn c = connect_noticed(p.conninfo(), notices);
    for (int n : {0, 3, 5}) {  // 5: exactly at the cap is still whole
        BOOST_TEST_INFO("rows: " << n);
        Result r(PQexec(c.get(), ("SELECT generate_series(1, " + std::to_string(n) + ")").c_str()));
        BOOST_TEST_REQUIRE(PQresultStatus(r.get()) == PGRES_TUPLES_OK, PQresultErrorMessage(r.get()));
        BOOST_TEST(PQntuples(r.get()) == n);
        BOOST_TEST(std::string(PQcmdStatus(r.get())) == "SELECT " + std::to_string(n));
    }
    // Several results in one query string: each is counted on its own.
    Result multi(PQexec(c.get(), "SELECT generate_series(1, 4); SELECT generate_series(1, 3)"));
    BOOST_TEST(PQresultStatus(multi.get()) == PGRES_TUPLES_OK, PQresultErrorMessage(multi.get()));
    BOOST_TEST(PQntuples(multi.get()) == 3);
    BOOST_TEST(notices.empty(), notices_text(notices));
    check_clean_stop(p);
}

// The cancel aborts a transaction on the server, so the client must not be told the
// statement succeeded: an ERROR, and the failed transaction state the server reports.
BOOST_AUTO_TEST_CASE(inside_a_transaction_the_cut_is_an_error)
{
    Proxy p("pgwicket-caps-xact", capped("max_rows = 5\n"));
    std::vector<Notice> notices;
    Conn c = connect_noticed(p.conninfo(), notices);
    Result begin(PQexec(c.get(), "BEGIN"));
    BOOST_TEST_REQUIRE(PQresultStatus(begin.get()) == PGRES_COMMAND_OK);
    Result r(PQexec(c.get(), big_query("caps_xact").c_str()));
    BOOST_TEST(PQresultStatus(r.get()) == PGRES_FATAL_ERROR, PQresStatus(PQresultStatus(r.get())));
    BOOST_TEST(sqlstate_of(r.get()) == "54000", PQresultErrorMessage(r.get()));
    BOOST_TEST(field_of(r.get(), PG_DIAG_SEVERITY_NONLOCALIZED) == "ERROR");
    BOOST_TEST(field_of(r.get(), PG_DIAG_MESSAGE_PRIMARY) == cut_message("max_rows = 5", 5, true));
    BOOST_TEST(PQtransactionStatus(c.get()) == PQTRANS_INERROR);
    BOOST_TEST(notices.empty(), notices_text(notices));
    // The server agrees: the transaction is aborted.
    Result next(PQexec(c.get(), "SELECT 1"));
    BOOST_TEST(sqlstate_of(next.get()) == "25P02", PQresultErrorMessage(next.get()));
    Result rollback(PQexec(c.get(), "ROLLBACK"));
    BOOST_TEST(PQresultStatus(rollback.get()) == PGRES_COMMAND_OK, PQresultErrorMessage(rollback.get()));
    BOOST_TEST(PQtransactionStatus(c.get()) == PQTRANS_IDLE);
    BOOST_TEST(scalar(c.get(), "SELECT 'after'") == "after");
    check_clean_stop(p);
}

BOOST_AUTO_TEST_CASE(max_bytes_cuts_wide_rows)
{
    constexpr long kMaxBytes = 100000;
    Proxy p("pgwicket-caps-bytes", capped("max_bytes = " + std::to_string(kMaxBytes) + "\n"));
    std::vector<Notice> notices;
    Conn c = connect_noticed(p.conninfo(), notices);
    Result r(PQexec(c.get(), "SELECT repeat('x', 1000) AS caps_wide FROM generate_series(1, 1000000)"));
    BOOST_TEST_REQUIRE(PQresultStatus(r.get()) == PGRES_TUPLES_OK, PQresultErrorMessage(r.get()));
    const int n = PQntuples(r.get());
    BOOST_TEST(n > 0);
    // Bytes are counted as they arrive, a read (up to 128 KiB) at a time: approximate.
    BOOST_TEST(long(n) * 1000 <= kMaxBytes + 128 * 1024, n << " rows");
    if (n > 0)
        BOOST_TEST(std::string(PQgetvalue(r.get(), n - 1, 0)) == std::string(1000, 'x'));
    BOOST_TEST(std::string(PQcmdStatus(r.get())) == "SELECT " + std::to_string(n));
    BOOST_TEST_REQUIRE(notices.size() == 1u, notices_text(notices));
    BOOST_TEST(notices[0].severity == "WARNING");
    BOOST_TEST(notices[0].message == cut_message("max_bytes = 100000", n, true));
    BOOST_TEST(notices[0].hint == "Ask the pgwicket operator to raise the policy's max_bytes.");
    sleep_ms(1000);
    BOOST_TEST(still_running("AS caps_wide") == "0");
    BOOST_TEST(scalar(c.get(), "SELECT 'after'") == "after");
    check_clean_stop(p);
}

// Rows are dropped by their header, so a row larger than the relay's buffer (128 KiB) that
// comes after the cap does not reach the client either.
BOOST_AUTO_TEST_CASE(rows_larger_than_the_relay_buffer_are_dropped_too)
{
    Proxy p("pgwicket-caps-huge", capped("max_rows = 2\n"));
    std::vector<Notice> notices;
    Conn c = connect_noticed(p.conninfo(), notices);
    Result r(PQexec(c.get(), "SELECT repeat('x', 300000) AS caps_huge, generate_series(1, 100000000) AS n"));
    BOOST_TEST_REQUIRE(PQresultStatus(r.get()) == PGRES_TUPLES_OK, PQresultErrorMessage(r.get()));
    BOOST_TEST(PQntuples(r.get()) == 2);
    for (int i = 0; i < PQntuples(r.get()); ++i) {
        BOOST_TEST(PQgetlength(r.get(), i, 0) == 300000);
        BOOST_TEST(std::string(PQgetvalue(r.get(), i, 1)) == std::to_string(i + 1));
    }
    BOOST_TEST(std::string(PQcmdStatus(r.get())) == "SELECT 2");
    BOOST_TEST_REQUIRE(notices.size() == 1u, notices_text(notices));
    BOOST_TEST(notices[0].message == cut_message("max_rows = 2", 2, true));
    BOOST_TEST(scalar(c.get(), "SELECT 'after'") == "after");
    sleep_ms(1000);
    BOOST_TEST(still_running("AS caps_huge") == "0");
    check_clean_stop(p);
}

BOOST_AUTO_TEST_CASE(set_overrides_the_cap_when_the_policy_allows_it_and_is_audited)
{
    const std::string audit = fresh_audit_path("caps-override");
    Proxy p("pgwicket-caps-override", capped("max_rows = 5\nallow_override = 1\n", "audit_file = " + audit + "\nlog_statements = 1\n"));
    std::vector<Notice> notices;
    Conn c = connect_noticed(p.conninfo("postgres", "postgres", "application_name=caps_override"), notices);
    const std::string thousand = "SELECT generate_series(1, 1000) AS caps_thousand";

    check_cut(c.get(), notices, big_query("caps_override"), "max_rows = 5", 5);
    BOOST_TEST(notices.at(0).hint == "SET pgwicket.max_rows = N raises the cap for this session (0: no cap).");

    Result set(PQexec(c.get(), "SET pgwicket.max_rows = 50"));
    BOOST_TEST_REQUIRE(PQresultStatus(set.get()) == PGRES_COMMAND_OK, PQresultErrorMessage(set.get()));
    // The server got it too, as a placeholder setting.
    BOOST_TEST(scalar(c.get(), "SHOW pgwicket.max_rows") == "50");
    notices.clear();
    Result fifty(PQexec(c.get(), thousand.c_str()));
    BOOST_TEST_REQUIRE(PQresultStatus(fifty.get()) == PGRES_TUPLES_OK, PQresultErrorMessage(fifty.get()));
    BOOST_TEST(PQntuples(fifty.get()) == 50);
    BOOST_TEST(std::string(PQcmdStatus(fifty.get())) == "SELECT 50");
    BOOST_TEST_REQUIRE(notices.size() == 1u, notices_text(notices));
    // 1000 rows may all be sent before the cancel lands: then nothing was cancelled.
    BOOST_TEST(contains(notices[0].message, cut_message("max_rows = 50", 50, false)), notices[0].message);

    Result reset(PQexec(c.get(), "RESET pgwicket.max_rows"));
    BOOST_TEST_REQUIRE(PQresultStatus(reset.get()) == PGRES_COMMAND_OK, PQresultErrorMessage(reset.get()));
    check_cut(c.get(), notices, big_query("caps_override"), "max_rows = 5", 5);

    // The other spellings, and 0 for no cap.
    for (const char* sql : {"SET pgwicket.max_rows TO '7'", "set PGWICKET.MAX_ROWS to 7;"}) {
        Result s(PQexec(c.get(), sql));
        BOOST_TEST_REQUIRE(PQresultStatus(s.get()) == PGRES_COMMAND_OK, sql << ": " << PQresultErrorMessage(s.get()));
        check_cut(c.get(), notices, big_query("caps_override"), "max_rows = 7", 7);
    }
    Result dflt(PQexec(c.get(), "SET pgwicket.max_rows = DEFAULT"));
    BOOST_TEST_REQUIRE(PQresultStatus(dflt.get()) == PGRES_COMMAND_OK, PQresultErrorMessage(dflt.get()));
    check_cut(c.get(), notices, big_query("caps_override"), "max_rows = 5", 5);
    Result none(PQexec(c.get(), "SET pgwicket.max_rows = 0"));
    BOOST_TEST_REQUIRE(PQresultStatus(none.get()) == PGRES_COMMAND_OK, PQresultErrorMessage(none.get()));
    notices.clear();
    Result all(PQexec(c.get(), thousand.c_str()));
    BOOST_TEST(PQntuples(all.get()) == 1000);
    BOOST_TEST(notices.empty(), notices_text(notices));
    Result reset_all(PQexec(c.get(), "RESET ALL"));
    BOOST_TEST_REQUIRE(PQresultStatus(reset_all.get()) == PGRES_COMMAND_OK, PQresultErrorMessage(reset_all.get()));
    check_cut(c.get(), notices, big_query("caps_override"), "max_rows = 5", 5);
    Result bad(PQexec(c.get(), "SET pgwicket.max_rows = 'lots'"));
    BOOST_TEST(sqlstate_of(bad.get()) == "42501", PQresultErrorMessage(bad.get()));
    BOOST_TEST(contains(PQresultErrorMessage(bad.get()), "takes a whole number"), PQresultErrorMessage(bad.get()));

    // Without allow_override: refused, and the cap stays.
    Proxy strict("pgwicket-caps-no-override", capped("max_rows = 5\n"));
    std::vector<Notice> strict_notices;
    Conn s = connect_noticed(strict.conninfo(), strict_notices);
    Result refused(PQexec(s.get(), "SET pgwicket.max_rows = 50"));
    BOOST_TEST(PQresultStatus(refused.get()) == PGRES_FATAL_ERROR);
    BOOST_TEST(sqlstate_of(refused.get()) == "42501", PQresultErrorMessage(refused.get()));
    BOOST_TEST(contains(PQresultErrorMessage(refused.get()), "allow_override"), PQresultErrorMessage(refused.get()));
    Result refused_bytes(PQexec(s.get(), "SET pgwicket.max_bytes TO 0"));
    BOOST_TEST(sqlstate_of(refused_bytes.get()) == "42501", PQresultErrorMessage(refused_bytes.get()));
    check_cut(s.get(), strict_notices, big_query("caps_strict"), "max_rows = 5", 5);
    BOOST_TEST(strict_notices.at(0).hint == "Ask the pgwicket operator to raise the policy's max_rows.");
    check_clean_stop(strict);

    // Every override has its record; the cut statements are marked truncated.
    std::vector<std::string> overrides;
    int truncated = 0, whole = 0;
    for (const json& r : audit_records(audit)) {
        if (text(r, "application_name") != "caps_override")
            continue;
        if (text(r, "event") == "override")
            overrides.push_back(text(r, "detail"));
        if (text(r, "event") != "statement")
            continue;
        const std::string st = text(r, "statement");
        if (contains(st, "caps_override") || contains(st, "caps_thousand")) {
            (text(r, "truncated") == "true" ? truncated : whole) += 1;
            // What the client got: the rows sent and their tag, never the server's tag or
            // the 57014 of the cap's own cancel (the soak found both in records).
            if (text(r, "truncated") == "true") {
                BOOST_TEST(text(r, "tag") == "SELECT " + text(r, "rows"), r.dump());
                BOOST_TEST(text(r, "sqlstate") == "<null>", r.dump());
            }
        } else
            BOOST_TEST(text(r, "truncated") == "false", r.dump());
    }
    const std::vector<std::string> expected = {"pgwicket.max_rows=50", "pgwicket.max_rows=5", "pgwicket.max_rows=7",
                                               "pgwicket.max_rows=7",  "pgwicket.max_rows=5", "pgwicket.max_rows=0",
                                               "pgwicket.max_rows=5",  "pgwicket.max_bytes=0"};
    BOOST_TEST(overrides == expected, boost::test_tools::per_element());
    BOOST_TEST(truncated == 7);  // every capped query but the uncapped thousand
    BOOST_TEST(whole == 1);
    check_clean_stop(p);
    // log_statements says so too, once per cut statement.
    const std::string log = read_file(p.log_path());
    size_t cut_lines = 0;
    for (size_t at = log.find(", truncated by a cap"); at != std::string::npos;
         at = log.find(", truncated by a cap", at + 1))
        ++cut_lines;
    BOOST_TEST(cut_lines == 7u, excerpt(log));
}

BOOST_AUTO_TEST_CASE(extended_protocol_is_capped_too)
{
    Proxy p("pgwicket-caps-extended", capped("max_rows = 5\n"));
    std::vector<Notice> notices;
    Conn c = connect_noticed(p.conninfo(), notices);
    const char* values[] = {"100000000"};
    Result r(PQexecParams(c.get(), "SELECT generate_series(1, $1::int) AS caps_ext", 1, nullptr, values, nullptr,
                          nullptr, 0));
    BOOST_TEST_REQUIRE(PQresultStatus(r.get()) == PGRES_TUPLES_OK, PQresultErrorMessage(r.get()));
    BOOST_TEST(PQntuples(r.get()) == 5);
    BOOST_TEST(std::string(PQcmdStatus(r.get())) == "SELECT 5");
    BOOST_TEST_REQUIRE(notices.size() == 1u, notices_text(notices));
    BOOST_TEST(notices[0].message == cut_message("max_rows = 5", 5, true));
    // A prepared statement, executed twice: each execution is capped anew.
    Result prep(PQprepare(c.get(), "big", "SELECT generate_series(1, $1::int)", 1, nullptr));
    BOOST_TEST_REQUIRE(PQresultStatus(prep.get()) == PGRES_COMMAND_OK, PQresultErrorMessage(prep.get()));
    for (int i = 0; i < 2; ++i) {
        notices.clear();
        Result e(PQexecPrepared(c.get(), "big", 1, values, nullptr, nullptr, 0));
        BOOST_TEST_REQUIRE(PQresultStatus(e.get()) == PGRES_TUPLES_OK, PQresultErrorMessage(e.get()));
        BOOST_TEST(PQntuples(e.get()) == 5);
        BOOST_TEST(notices.size() == 1u, notices_text(notices));
    }
    BOOST_TEST(scalar(c.get(), "SELECT 'after'") == "after");
    check_clean_stop(p);
}

// PostgreSQL signals a cancelled backend twice; a second signal landing late would cancel
// the next statement. pgwicket holds that statement until its cancel has been sent.
BOOST_AUTO_TEST_CASE(the_next_statement_is_not_hit_by_the_late_cancel)
{
    Proxy p("pgwicket-caps-late-cancel", capped("max_rows = 5\n"));
    std::vector<Notice> notices;
    Conn c = connect_noticed(p.conninfo(), notices);
    for (int i = 0; i < 20; ++i) {
        BOOST_TEST_INFO("iteration " << i);
        check_cut(c.get(), notices, big_query("caps_late"), "max_rows = 5", 5);
        Result next(PQexec(c.get(), "SELECT pg_sleep(0.2), 'ok'"));
        BOOST_TEST_REQUIRE(PQresultStatus(next.get()) == PGRES_TUPLES_OK, PQresultErrorMessage(next.get()));
        BOOST_TEST(std::string(PQgetvalue(next.get(), 0, 1)) == "ok");
    }
    check_clean_stop(p);
}

BOOST_AUTO_TEST_SUITE_END()
