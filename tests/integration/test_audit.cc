// The audit trail on real sessions: completeness under 20 concurrent clients, what the
// records hold, sink failure (full disk, read-only file) as audit_failure says, logrotate.
#include "audit_file.hh"
#include "harness.hh"

#include <boost/test/unit_test.hpp>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <regex>
#include <set>
#include <stdexcept>
#include <thread>

using namespace pgw::it;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

// A string no other test (and no earlier run against the same cluster) produces; also
// valid as an SQL identifier, so it can name a column and survive normalization.
std::string marker(const std::string& what)
{
    static int n = 0;
    return "audit_" + what + "_" + std::to_string(getpid()) + "_" + std::to_string(++n);
}

std::string sqlstate_of(const PGresult* r)
{
    const char* s = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    return s ? s : "";
}

std::string severity_of(const PGresult* r)
{
    const char* s = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
    return s ? s : "";
}

// An audit file path of this run that does not exist yet.
std::string fresh_audit_path(const std::string& name)
{
    std::string path = env().tmpdir + "/" + name + ".jsonl";
    std::error_code ec;
    fs::remove(path, ec);
    return path;
}

ProxyOptions audit_options(const std::string& audit_file, const std::string& more = "")
{
    ProxyOptions o;
    o.extra_settings = "audit_file = " + audit_file + "\n" + more;
    return o;
}

std::string with_app(const Proxy& p, const std::string& app)
{
    return p.conninfo("postgres", "postgres", "application_name=" + app);
}

// ---- reading the audit file ------------------------------------------------------------------

// Records of one application_name (optionally of one event kind), in file order.
std::vector<json> of_app(const AuditLines& a, const std::string& app, const std::string& event = "")
{
    std::vector<json> out;
    for (const json& r : a.records)
        if (text(r, "application_name") == app && (event.empty() || text(r, "event") == event))
            out.push_back(r);
    return out;
}

std::vector<json> with_statement(const std::vector<json>& rs, const std::string& statement)
{
    std::vector<json> out;
    for (const json& r : rs)
        if (text(r, "statement") == statement)
            out.push_back(r);
    return out;
}

std::string dump(const std::vector<json>& rs, size_t max = 20)
{
    std::string out;
    for (size_t i = 0; i < rs.size() && i < max; ++i)
        out += rs[i].dump() + "\n";
    if (rs.size() > max)
        out += "... " + std::to_string(rs.size() - max) + " more\n";
    return out;
}

// Waits until `path` holds `n` session_end records of `app` (a session's last record).
AuditLines wait_for_session_ends(const std::string& path, const std::string& app, size_t n,
                                 int timeout_ms = 15000)
{
    AuditLines a;
    wait_for(
        [&] {
            a = read_audit(path);
            return of_app(a, app, "session_end").size() >= n;
        },
        timeout_ms);
    return a;
}

// The fields every record has, and those statements and denials add.
const char* const kSessionFields[] = {"v",        "time",          "event",         "session",    "identity",
                                      "user",     "client",        "application_name", "database", "upstream",
                                      "policy",   "upstream_host", "upstream_port", "backend_pid"};
const char* const kStatementFields[] = {"statement", "fingerprint", "duration_ms", "rows",     "bytes",
                                        "tag",       "sqlstate",    "truncated",   "denied_by", "class",
                                        "command",   "relations",   "parameters"};

// What is missing or of the wrong type in a record ("" when nothing).
std::string field_problems(const json& r)
{
    std::string out;
    for (const char* f : kSessionFields)
        if (!r.contains(f))
            out += std::string(" missing ") + f + ";";
    if (r.contains("time") && !r["time"].is_string())
        out += " time is not a string;";
    if (r.contains("session") && !r["session"].is_number_unsigned())
        out += " session is not an unsigned number;";
    if (text(r, "v") != "2")
        out += " v is not 2;";
    for (const char* f : {"upstream_port", "backend_pid"})
        if (r.contains(f) && !r[f].is_null() && !r[f].is_number_unsigned())
            out += std::string(" ") + f + " is neither null nor an unsigned number;";
    const std::string ev = text(r, "event");
    if (ev != "session_start" && ev != "session_end" && ev != "statement" && ev != "denial")
        out += " unknown event " + ev + ";";
    if (ev == "statement" || ev == "denial") {
        for (const char* f : kStatementFields)
            if (!r.contains(f))
                out += std::string(" missing ") + f + ";";
        if (r.contains("duration_ms") && !r["duration_ms"].is_number())
            out += " duration_ms is not a number;";
        for (const char* f : {"rows", "bytes"})
            if (r.contains(f) && !r[f].is_number_unsigned())
                out += std::string(" ") + f + " is not an unsigned number;";
        if (r.contains("truncated") && !r["truncated"].is_boolean())
            out += " truncated is not a boolean;";
        if (r.contains("relations") && !r["relations"].is_array())
            out += " relations is not an array;";
        for (const json& rel : r.value("relations", json::array()))
            if (!rel.is_object() || !rel.value("name", json()).is_string() ||
                !std::regex_match(rel.value("access", std::string()), std::regex("read|write|ddl")))
                out += " relation " + rel.dump() + " is not {name, access};";
        if (r.contains("parameters") && !r["parameters"].is_null() && !r["parameters"].is_array())
            out += " parameters is neither null nor an array;";
        const std::string fp = text(r, "fingerprint");
        if (fp != "<null>" && !std::regex_match(fp, std::regex("[0-9a-f]{16}")))
            out += " fingerprint " + fp + " is not 16 hex digits;";
    }
    return out;
}

std::string pg_log() { return read_file(env().pg_log); }

// ---- sink failures ---------------------------------------------------------------------------

// A tiny tmpfs of the test's own (root only), unmounted when the test ends however it ends.
// Declare it before the Proxy writing into it: the proxy must be gone first.
class TmpfsMount {
public:
    TmpfsMount(std::string dir, const std::string& size) : dir_(std::move(dir))
    {
        fs::create_directories(dir_);
        RunResult r = run({"mount", "-t", "tmpfs", "-o", "size=" + size + ",mode=0755", "tmpfs", dir_});
        if (!r.ok())
            throw std::runtime_error("mount tmpfs on " + dir_ + " (" + r.status() + "): " + r.out);
        mounted_ = true;
    }
    ~TmpfsMount()
    {
        // Lazily, if a straggling worker still holds the audit file open.
        if (mounted_ && !run({"umount", dir_}).ok())
            (void)run({"umount", "-l", dir_});
        std::error_code ec;
        fs::remove(dir_, ec);
    }
    TmpfsMount(const TmpfsMount&) = delete;
    TmpfsMount& operator=(const TmpfsMount&) = delete;

    const std::string& dir() const { return dir_; }
    // Fails (EBUSY) while any file on it is open for writing.
    RunResult remount_read_only() { return run({"mount", "-o", "remount,ro", dir_}); }

private:
    std::string dir_;
    bool mounted_ = false;
};

// Writes `path` until the filesystem is full; returns the errno of the write that failed.
int fill_up(const std::string& path)
{
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        throw std::runtime_error("open " + path + ": " + std::strerror(errno));
    const std::string block(4096, 'f');
    int err = 0;
    for (;;) {
        ssize_t n = ::write(fd, block.data(), block.size());
        if (n < 0) {
            err = errno;
            break;
        }
    }
    ::close(fd);
    return err;
}

// A new session while the trail cannot be written is refused with FATAL 58030, before
// the client is told the login succeeded.
void check_refused_at_login(const Proxy& p, const std::string& app)
{
    {
        Conn c = connect(with_app(p, app));
        std::string msg = PQerrorMessage(c.get());
        BOOST_TEST(PQstatus(c.get()) == CONNECTION_BAD,
                   "libpq saw the login succeed although the session_start record could not be written");
        if (PQstatus(c.get()) == CONNECTION_OK) {
            Result r(PQexec(c.get(), "SELECT 1"));
            BOOST_TEST_MESSAGE("the first query of that session got: " << PQerrorMessage(c.get()));
        } else {
            BOOST_TEST(contains(msg, "cannot write its audit trail"), msg);
        }
    }
    // The code on the wire.
    RawSocket s(p.port());
    s.send(startup_packet({{"user", "postgres"}, {"database", "postgres"}, {"application_name", app}}));
    std::optional<std::map<char, std::string>> fatal;
    std::string seen;
    while (auto m = s.read_message()) {
        seen += m->type;
        if (m->type == 'E') {
            fatal = error_fields(m->payload);
            break;
        }
    }
    BOOST_TEST_REQUIRE(fatal.has_value(), "no ErrorResponse; messages seen: " << seen);
    BOOST_TEST((*fatal)['S'] == "FATAL", fields_text(*fatal));
    BOOST_TEST((*fatal)['C'] == "58030", fields_text(*fatal));
    BOOST_TEST(!contains(seen, "Z"), "ReadyForQuery came before the FATAL (messages: " << seen << ")");
    BOOST_TEST(s.wait_closed(10000));
}

// psql in a session that must not run anything: the marker never reaches the server.
void check_statement_never_runs(const Proxy& p, const std::string& app)
{
    const std::string m = marker("never_runs");
    RunResult r = psql(with_app(p, app), "SELECT 1 AS " + m + ";\n");
    BOOST_TEST(!r.ok(), "psql ran a statement without an audit trail: " << r.out);
    sleep_ms(200);  // what the server logs, it logs before it answers: this is margin only
    BOOST_TEST(!contains(pg_log(), m), "the server ran " << m);
}

} // namespace

BOOST_AUTO_TEST_SUITE(audit)

// ---- completeness ------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(twenty_clients_ten_thousand_statements_all_recorded)
{
    constexpr int kClients = 20, kPerClient = 500;
    const std::string file = fresh_audit_path("audit-complete");
    // Full text, so every record can be matched to the exact statement that was sent.
    ProxyOptions o = audit_options(file, "audit_statement_text = full\n");
    o.spare_workers = 4;
    Proxy p("pgwicket-audit-complete", o);
    const std::string app = marker("complete");

    // Every statement is unique; one in ten makes a line longer than PIPE_BUF (4096), so a
    // torn or interleaved write would show in the text.
    auto statement = [](int c, int i) {
        size_t pad = i % 10 == 0 ? 4000 + size_t(c * 131 + i) % 3000 : size_t(c * 7 + i) % 200;
        char id[32];
        std::snprintf(id, sizeof id, "c%02d-s%03d", c, i);
        return std::string("SELECT '") + id + "' AS id, '" + std::string(pad, 'x') + "' AS pad";
    };
    std::vector<std::string> errors(kClients);
    std::vector<std::thread> clients;
    const auto started = std::chrono::steady_clock::now();
    for (int c = 0; c < kClients; ++c)
        clients.emplace_back([&, c] {
            Conn conn = connect(with_app(p, app));
            if (PQstatus(conn.get()) != CONNECTION_OK) {
                errors[c] = PQerrorMessage(conn.get());
                return;
            }
            for (int i = 0; i < kPerClient; ++i) {
                const std::string sql = statement(c, i);
                // Every fourth through the extended protocol (Parse/Bind/Execute/Sync).
                Result r(i % 4 == 3 ? PQexecParams(conn.get(), sql.c_str(), 0, nullptr, nullptr, nullptr, nullptr, 0)
                                    : PQexec(conn.get(), sql.c_str()));
                if (PQresultStatus(r.get()) != PGRES_TUPLES_OK) {
                    errors[c] = "statement " + std::to_string(i) + ": " + PQresultErrorMessage(r.get());
                    return;
                }
            }
        });
    for (auto& t : clients)
        t.join();
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    BOOST_TEST_MESSAGE("audit completeness: " << kClients * kPerClient << " statements from " << kClients
                                              << " clients in " << secs << " s");
    for (int c = 0; c < kClients; ++c)
        BOOST_TEST(errors[c].empty(), "client " << c << ": " << errors[c]);

    AuditLines a = wait_for_session_ends(file, app, kClients);
    BOOST_TEST(a.bad.empty(), a.bad.size() << " lines are not one JSON object each; first: "
                                           << excerpt(a.bad.empty() ? "" : a.bad.front(), 600));
    BOOST_TEST(a.ends_with_newline, "the file ends inside a line");

    std::map<std::string, int> expected;
    for (int c = 0; c < kClients; ++c)
        for (int i = 0; i < kPerClient; ++i)
            expected[statement(c, i)] = 0;
    auto statements = of_app(a, app, "statement");
    BOOST_TEST(statements.size() == size_t(kClients * kPerClient));
    BOOST_TEST(of_app(a, app, "session_start").size() == size_t(kClients));
    BOOST_TEST(of_app(a, app, "session_end").size() == size_t(kClients));
    BOOST_TEST(of_app(a, app).size() == size_t(kClients * kPerClient + 2 * kClients),
               "records of other kinds: " << dump(of_app(a, app, "denial")));

    int unknown = 0, bad_fields = 0, bad_values = 0;
    std::set<std::string> sessions_started, sessions_with_statements;
    for (const json& r : of_app(a, app)) {
        if (std::string why = field_problems(r); !why.empty() && ++bad_fields <= 5)
            BOOST_ERROR("record with" << why << ": " << r.dump().substr(0, 400));
        if (text(r, "event") == "session_start")
            sessions_started.insert(text(r, "session"));
        if (text(r, "event") != "statement")
            continue;
        sessions_with_statements.insert(text(r, "session"));
        auto it = expected.find(text(r, "statement"));
        if (it == expected.end()) {
            if (++unknown <= 5)
                BOOST_ERROR("a statement record matches no statement sent: " << r.dump().substr(0, 400));
            continue;
        }
        ++it->second;
        if ((text(r, "tag") != "SELECT 1" || text(r, "rows") != "1" || text(r, "sqlstate") != "<null>" ||
             text(r, "denied_by") != "<null>" || text(r, "truncated") != "false" ||
             text(r, "identity") != "postgres") &&
            ++bad_values <= 5)
            BOOST_ERROR("unexpected values: " << r.dump().substr(0, 400));
    }
    int missing = 0, doubled = 0;
    for (const auto& [sql, n] : expected) {
        missing += n == 0;
        doubled += n > 1;
    }
    BOOST_TEST(unknown == 0);
    BOOST_TEST(missing == 0);
    BOOST_TEST(doubled == 0);
    BOOST_TEST(bad_fields == 0);
    BOOST_TEST(bad_values == 0);
    BOOST_TEST(sessions_started.size() == size_t(kClients));
    BOOST_TEST((sessions_with_statements == sessions_started));
    check_clean_stop(p);
}

// ---- content -----------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(records_hold_normalized_statements_tags_rows_and_errors)
{
    const std::string file = fresh_audit_path("audit-content");
    Proxy p("pgwicket-audit-content", audit_options(file));
    const std::string app = marker("content");
    const std::string secret = marker("literal");  // must never be written to the file
    {
        Conn c = connect_ok(with_app(p, app));
        BOOST_TEST(scalar(c.get(), "SELECT '" + secret + "' AS lit, 42 AS answer") == secret);
        Result multi(PQexec(c.get(), "CREATE TEMP TABLE audit_t (x int); INSERT INTO audit_t VALUES (1), (2), (3); "
                                     "SELECT x FROM audit_t ORDER BY x"));
        BOOST_TEST(PQresultStatus(multi.get()) == PGRES_TUPLES_OK, PQresultErrorMessage(multi.get()));
        BOOST_TEST(PQntuples(multi.get()) == 3);
        // The error ends the query string: the third statement never runs.
        Result err(PQexec(c.get(), "SELECT 1 AS before_error; SELECT 1/0 AS div; SELECT 2 AS never_runs"));
        BOOST_TEST(sqlstate_of(err.get()) == "22012", PQresultErrorMessage(err.get()));
        Result prep(PQprepare(c.get(), "audit_stmt", "SELECT x FROM audit_t WHERE x >= $1::int ORDER BY x", 0, nullptr));
        BOOST_TEST(PQresultStatus(prep.get()) == PGRES_COMMAND_OK, PQresultErrorMessage(prep.get()));
        for (const char* from : {"1", "3"}) {
            const char* values[] = {from};
            Result r(PQexecPrepared(c.get(), "audit_stmt", 1, values, nullptr, nullptr, 0));
            BOOST_TEST(PQresultStatus(r.get()) == PGRES_TUPLES_OK, PQresultErrorMessage(r.get()));
        }
        BOOST_TEST(scalar(c.get(), "SELECT pg_sleep(0.2) AS slept") == "");
    }
    AuditLines a = wait_for_session_ends(file, app, 1);
    BOOST_TEST(a.bad.empty(), excerpt(a.bad.empty() ? "" : a.bad.front()));
    BOOST_TEST(!contains(read_file(file), secret), "the literal was written to the audit file");
    auto all = of_app(a, app);
    BOOST_TEST_INFO("records:\n" << dump(all, 40));
    BOOST_TEST_REQUIRE(all.size() >= 2u);
    BOOST_TEST(text(all.front(), "event") == "session_start");
    BOOST_TEST(text(all.back(), "event") == "session_end");
    BOOST_TEST(text(all.back(), "detail") != "<missing>");
    for (const json& r : all) {
        BOOST_TEST(field_problems(r) == "", r.dump());
        BOOST_TEST(text(r, "session") == text(all.front(), "session"));
        BOOST_TEST(text(r, "identity") == "postgres");  // trust: the startup user
        BOOST_TEST(text(r, "user") == "postgres");
        BOOST_TEST(text(r, "database") == "postgres");
        BOOST_TEST(text(r, "client").rfind("127.0.0.1:", 0) == 0u, text(r, "client"));
        BOOST_TEST(contains(text(r, "upstream"), "port=" + std::to_string(env().pg_port)), text(r, "upstream"));
        BOOST_TEST(text(r, "policy") == "<null>");
    }
    auto st = of_app(a, app, "statement");
    auto one = [&](const std::string& statement) {
        auto rs = with_statement(st, statement);
        BOOST_TEST(rs.size() == 1u, statement);
        return rs.empty() ? json::object() : rs.front();
    };
    json lit = one("SELECT $1 AS lit, $2 AS answer");
    BOOST_TEST(text(lit, "tag") == "SELECT 1");
    BOOST_TEST(text(lit, "rows") == "1");
    BOOST_TEST(text(lit, "sqlstate") == "<null>");
    BOOST_TEST(text(lit, "denied_by") == "<null>");
    BOOST_TEST(text(lit, "truncated") == "false");
    BOOST_TEST(text(lit, "fingerprint") != "<null>");
    BOOST_TEST(lit.value("bytes", 0u) > 0u);

    // One record per statement of the query string, each with its own tag.
    json create = one("CREATE TEMP TABLE audit_t (x int)");
    BOOST_TEST(text(create, "tag") == "CREATE TABLE");
    json ins = one("INSERT INTO audit_t VALUES ($1), ($2), ($3)");
    BOOST_TEST(text(ins, "tag") == "INSERT 0 3");
    BOOST_TEST(text(ins, "rows") == "0");
    json sel = one("SELECT x FROM audit_t ORDER BY x");
    BOOST_TEST(text(sel, "tag") == "SELECT 3");
    BOOST_TEST(text(sel, "rows") == "3");
    // And its own bytes, though the server's answers to all three arrive in one read:
    // CommandComplete "CREATE TABLE" is 18 bytes (24 with a ReadyForQuery); "INSERT 0 3"
    // 16; the SELECT's RowDescription (27), 3 DataRows (36) and CommandComplete (14) 77.
    BOOST_TEST(create.value("bytes", 0u) <= 24u, "CREATE TABLE bytes: " << text(create, "bytes"));
    BOOST_TEST(ins.value("bytes", 0u) >= 16u, "INSERT bytes: " << text(ins, "bytes"));
    BOOST_TEST(sel.value("bytes", 0u) >= 77u, "SELECT bytes: " << text(sel, "bytes"));

    BOOST_TEST(text(one("SELECT $1 AS before_error"), "sqlstate") == "<null>");
    json div = one("SELECT $1/$2 AS div");
    BOOST_TEST(text(div, "sqlstate") == "22012");
    BOOST_TEST(text(div, "tag") == "<null>");
    BOOST_TEST(with_statement(st, "SELECT $1 AS never_runs").empty());

    // Extended protocol: the prepared text, once per Execute, with its own rows.
    auto prepared = with_statement(st, "SELECT x FROM audit_t WHERE x >= $1::int ORDER BY x");
    BOOST_TEST_REQUIRE(prepared.size() == 2u);
    BOOST_TEST(text(prepared[0], "tag") == "SELECT 3");
    BOOST_TEST(text(prepared[0], "rows") == "3");
    BOOST_TEST(text(prepared[1], "tag") == "SELECT 1");
    BOOST_TEST(text(prepared[1], "rows") == "1");
    BOOST_TEST(prepared[0].value("bytes", 0u) > prepared[1].value("bytes", 0u));
    BOOST_TEST(text(prepared[0], "fingerprint") == text(prepared[1], "fingerprint"));

    json slept = one("SELECT pg_sleep($1) AS slept");
    BOOST_TEST(slept.value("duration_ms", 0.0) >= 190.0, slept.dump());
    BOOST_TEST(lit.value("duration_ms", -1.0) >= 0.0);
    BOOST_TEST(st.size() == 9u, "statement records:\n" << dump(st));
    check_clean_stop(p);
}

BOOST_AUTO_TEST_CASE(full_text_keeps_literals)
{
    const std::string file = fresh_audit_path("audit-full");
    Proxy p("pgwicket-audit-full", audit_options(file, "audit_statement_text = full\n"));
    const std::string app = marker("fulltext");
    const std::string kept = marker("kept");
    const std::string sql = "SELECT '" + kept + "' AS lit, 42 AS answer";
    {
        Conn c = connect_ok(with_app(p, app));
        BOOST_TEST(scalar(c.get(), sql + ";") == kept);
    }
    AuditLines a = wait_for_session_ends(file, app, 1);
    auto st = of_app(a, app, "statement");
    BOOST_TEST_REQUIRE(st.size() == 1u, dump(of_app(a, app)));
    BOOST_TEST(text(st[0], "statement") == sql);
    BOOST_TEST(text(st[0], "fingerprint") != "<null>");
    BOOST_TEST(field_problems(st[0]) == "");
    check_clean_stop(p);
}

BOOST_AUTO_TEST_CASE(policy_denials_are_recorded_and_never_run)
{
    const std::string file = fresh_audit_path("audit-denial");
    ProxyOptions o = audit_options(file, "default_policy = ro\n");
    o.extra_sections = "[policy.ro]\nread_only = 1\n";
    Proxy p("pgwicket-audit-denial", o);
    const std::string app = marker("denial");
    const std::string table = marker("denied_tbl");  // an identifier: kept by normalization
    const std::string ran = marker("ran");
    {
        Conn c = connect_ok(with_app(p, app));
        BOOST_TEST(scalar(c.get(), "SELECT 1 AS allowed") == "1");
        Result create(PQexec(c.get(), ("CREATE TABLE " + table + " (x int)").c_str()));
        BOOST_TEST(sqlstate_of(create.get()) == "42501", PQresultErrorMessage(create.get()));
        Result prep(PQprepare(c.get(), "audit_drop", ("DROP TABLE " + table).c_str(), 0, nullptr));
        BOOST_TEST(sqlstate_of(prep.get()) == "42501", PQresultErrorMessage(prep.get()));
        BOOST_TEST(scalar(c.get(), "SELECT 2 AS " + ran) == "2");
    }
    AuditLines a = wait_for_session_ends(file, app, 1);
    BOOST_TEST(a.bad.empty());
    auto all = of_app(a, app);
    BOOST_TEST_INFO("records:\n" << dump(all));
    auto denials = of_app(a, app, "denial");
    BOOST_TEST_REQUIRE(denials.size() == 2u);
    BOOST_TEST(text(denials[0], "statement") == "CREATE TABLE " + table + " (x int)");
    BOOST_TEST(text(denials[1], "statement") == "DROP TABLE " + table);
    BOOST_TEST(text(denials[0], "class") == "DDL");
    BOOST_TEST(text(denials[0], "command") == "CREATE TABLE");
    BOOST_TEST(denials[0]["relations"] == json::parse(R"([{"name":")" + table + R"(","access":"ddl"}])"));
    BOOST_TEST(text(denials[1], "command") == "DROP TABLE");
    for (const json& d : denials) {
        BOOST_TEST(field_problems(d) == "", d.dump());
        BOOST_TEST(text(d, "denied_by") == "ro");
        BOOST_TEST(text(d, "policy") == "ro");
        BOOST_TEST(text(d, "detail") != "<missing>");
        BOOST_TEST(text(d, "fingerprint") != "<null>");
    }
    auto st = of_app(a, app, "statement");
    for (const json& r : st)
        BOOST_TEST(!contains(text(r, "statement"), table), "a denied statement got a statement record: " << r.dump());
    BOOST_TEST(st.size() == 2u);
    BOOST_TEST(with_statement(st, "SELECT $1 AS allowed").size() == 1u);
    BOOST_TEST(with_statement(st, "SELECT $1 AS " + ran).size() == 1u);
    for (const json& r : st)
        BOOST_TEST(text(r, "policy") == "ro");
    // The server saw the allowed statements and never the denied ones.
    BOOST_TEST(wait_for([&] { return contains(pg_log(), ran); }), "the server log lacks " << ran);
    BOOST_TEST(!contains(pg_log(), table));
    check_clean_stop(p);
}

// ---- what a record says of a statement, and the auditor's queries on it --------------------------

namespace {

// "name:access ..." of a record's relations.
std::string relations_of(const json& r)
{
    std::string out;
    for (const json& rel : r.value("relations", json::array()))
        out += (out.empty() ? "" : " ") + rel.value("name", std::string()) + ":" + rel.value("access", std::string());
    return out;
}

} // namespace

// Class, command and relations from the statement's parse; the upstream and backend to
// join with the server's log; bind parameters, cut and base64 as configured; and the
// contrib/audit jq scripts answering "who read it" and "who ran DDL" on this trail.
BOOST_AUTO_TEST_CASE(records_say_class_command_relations_backend_and_parameters)
{
    const std::string file = fresh_audit_path("audit-facts");
    Proxy p("pgwicket-audit-facts", audit_options(file, "audit_parameters = on\naudit_parameter_max_size = 8\n"));
    const std::string app = marker("facts");
    const std::string schema = marker("s");
    const std::string customers = schema + ".customers";
    std::string backend_pid;
    {
        Conn c = connect_ok(with_app(p, app));
        backend_pid = scalar(c.get(), "SELECT pg_backend_pid()");
        for (const std::string& sql :
             {"CREATE SCHEMA " + schema, "CREATE TABLE " + customers + " (id int, name text)",
              "CREATE TABLE " + schema + ".orders (cid int)",
              "WITH recent AS (SELECT cid FROM " + schema + ".orders) INSERT INTO " + customers +
                  " SELECT cid, 'x' FROM recent JOIN " + customers + " c ON c.id = recent.cid",
              "SELECT name FROM " + customers + " WHERE id = 1; SET search_path = " + schema +
                  "; SELECT * FROM customers",
              "GRANT SELECT ON " + customers + " TO PUBLIC"}) {
            Result r(PQexec(c.get(), sql.c_str()));
            BOOST_TEST(PQresultErrorMessage(r.get()) == std::string(), sql);
        }
        // Extended protocol: a text parameter longer than the cap, a NULL, a binary one.
        const std::string long_name = "abcdefghijklmnop";
        const char* values[] = {long_name.c_str(), nullptr, "\x00\x00\x00\x07"};
        int lengths[] = {0, 0, 4};
        int formats[] = {0, 0, 1};
        Result r(PQexecParams(c.get(),
                              ("UPDATE " + customers + " SET name = $1 WHERE name = $2 OR id = $3::int4").c_str(), 3,
                              nullptr, values, lengths, formats, 0));
        BOOST_TEST(PQresultStatus(r.get()) == PGRES_COMMAND_OK, PQresultErrorMessage(r.get()));
        Result drop(PQexec(c.get(), ("DROP SCHEMA " + schema + " CASCADE").c_str()));
        BOOST_TEST(PQresultStatus(drop.get()) == PGRES_COMMAND_OK, PQresultErrorMessage(drop.get()));
    }
    AuditLines a = wait_for_session_ends(file, app, 1);
    BOOST_TEST(a.bad.empty());
    auto all = of_app(a, app);
    BOOST_TEST_INFO("records:\n" << dump(all, 40));
    for (const json& r : all) {
        BOOST_TEST(field_problems(r) == "", r.dump());
        BOOST_TEST(text(r, "backend_pid") == backend_pid);
        BOOST_TEST(text(r, "upstream_port") == std::to_string(env().pg_port));
        BOOST_TEST(text(r, "upstream_host") != "<null>");
    }
    auto st = of_app(a, app, "statement");
    struct Want {
        std::string command, audit_class, relations;
    };
    const std::vector<Want> want = {
        {"SELECT", "READ", ""},  // pg_backend_pid()
        {"CREATE SCHEMA", "DDL", ""},
        {"CREATE TABLE", "DDL", customers + ":ddl"},
        {"CREATE TABLE", "DDL", schema + ".orders:ddl"},
        {"INSERT", "WRITE", customers + ":write " + customers + ":read " + schema + ".orders:read"},
        {"SELECT", "READ", customers + ":read"},
        {"SET", "MISC_SET", ""},
        {"SELECT", "READ", "customers:read"},
        {"GRANT", "ROLE", customers + ":ddl"},
        {"UPDATE", "WRITE", customers + ":write"},
        {"DROP SCHEMA", "DDL", ""},
    };
    BOOST_TEST_REQUIRE(st.size() == want.size());
    for (size_t i = 0; i < want.size(); ++i) {
        BOOST_TEST(text(st[i], "command") == want[i].command, st[i].dump());
        BOOST_TEST(text(st[i], "class") == want[i].audit_class, st[i].dump());
        BOOST_TEST(relations_of(st[i]) == want[i].relations, st[i].dump());
        if (i != 9)
            BOOST_TEST(text(st[i], "parameters") == "<null>", "a simple Query has no parameters: " << st[i].dump());
    }
    BOOST_TEST(st[9]["parameters"] == json::parse(R"([{"text":"abcdefgh","size":16,"cut":true},null,)"
                                                  R"({"base64":"AAAABw==","size":4,"cut":false}])"),
               st[9].dump());

    // The auditor's questions, with the scripts of contrib/audit on this very trail.
    if (run({"jq", "--version"}).exit_code != 0) {
        BOOST_TEST_MESSAGE("jq is not installed (contrib/install-deps.sh installs it): contrib/audit not tested");
        return;
    }
    const std::string dir = env().top_srcdir + "/contrib/audit/";
    RunResult read = run({"sh", dir + "who-read.sh", customers, "2000-01-01", file});
    BOOST_TEST_REQUIRE(read.ok(), read.status() << ": " << read.out);
    std::vector<std::string> lines;
    for (size_t at = 0, nl; (nl = read.out.find('\n', at)) != std::string::npos; at = nl + 1)
        if (contains(read.out.substr(at, nl - at), schema))
            lines.push_back(read.out.substr(at, nl - at));
    // The INSERT (read through its JOIN) and the SELECT, each with the identity.
    BOOST_TEST_REQUIRE(lines.size() == 2u, read.out);
    BOOST_TEST(contains(lines[0], "\tpostgres\t127.0.0.1:"), lines[0]);
    BOOST_TEST(contains(lines[0], "\tINSERT\t"), lines[0]);
    BOOST_TEST(contains(lines[1], "\tSELECT\tSELECT name FROM " + customers), lines[1]);
    // A bare name matches the SELECT that wrote it bare too.
    RunResult bare = run({"sh", dir + "who-read.sh", "customers", "", file});
    BOOST_TEST(contains(bare.out, "SELECT * FROM customers"), bare.out);
    RunResult later = run({"sh", dir + "who-read.sh", customers, "2999-01-01", file});
    BOOST_TEST((later.ok() && later.out.empty()), later.status() << ": " << later.out);

    RunResult ddl = run({"sh", dir + "who-ran-ddl.sh", "", file});
    BOOST_TEST_REQUIRE(ddl.ok(), ddl.status() << ": " << ddl.out);
    for (const std::string& what : {"\tCREATE SCHEMA\t\tCREATE SCHEMA " + schema,
                                    "\tCREATE TABLE\t\tCREATE TABLE " + customers,
                                    "\tDROP SCHEMA\t\tDROP SCHEMA " + schema})
        BOOST_TEST(contains(ddl.out, what), "who-ran-ddl.sh lacks <" << what << ">:\n" << ddl.out);
    BOOST_TEST(!contains(ddl.out, "GRANT SELECT ON " + customers), "GRANT is ROLE, not DDL");
    check_clean_stop(p);
}

// ---- log_statements ----------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(log_statements_writes_a_line_per_statement)
{
    ProxyOptions o;
    o.extra_settings = "log_statements = 1\n";
    Proxy p("pgwicket-audit-logstatements", o);
    {
        Conn c = connect_ok(p.conninfo());
        Result rows(PQexec(c.get(), "SELECT generate_series(1, 3) AS n"));
        BOOST_TEST(PQntuples(rows.get()) == 3);
        Result err(PQexec(c.get(), "SELECT 1/0"));
        BOOST_TEST(sqlstate_of(err.get()) == "22012");
        Result ddl(PQexec(c.get(), "CREATE TEMP TABLE audit_log_t (x int)"));
        BOOST_TEST(PQresultStatus(ddl.get()) == PGRES_COMMAND_OK);
    }
    const std::regex line(R"(statement: ([^\n]*), (\d+) rows, (\d+) bytes, ([0-9.]+) ms)");
    std::vector<std::smatch> found;
    std::string log;
    wait_for([&] {
        log = read_file(p.log_path());
        return contains(log, "session ended");
    });
    for (auto it = std::sregex_iterator(log.begin(), log.end(), line); it != std::sregex_iterator(); ++it)
        found.push_back(*it);
    BOOST_TEST_INFO("log:\n" << excerpt(log));
    BOOST_TEST_REQUIRE(found.size() == 3u);
    BOOST_TEST(found[0][1].str() == "SELECT 3");
    BOOST_TEST(found[0][2].str() == "3");
    BOOST_TEST(std::stoul(found[0][3].str()) > 0u);
    BOOST_TEST(found[1][1].str() == "error 22012");
    BOOST_TEST(found[1][2].str() == "0");
    BOOST_TEST(found[2][1].str() == "CREATE TABLE");
    // The session's context is on each line.
    for (const auto& m : found) {
        size_t bol = log.rfind('\n', size_t(m.position(0)));
        std::string whole = log.substr(bol == std::string::npos ? 0 : bol + 1, 200);
        BOOST_TEST(contains(whole, "postgres/postgres@127.0.0.1"), whole);
    }
    check_clean_stop(p);
}

// ---- sink failure ------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(full_disk_blocks_the_open_session_and_new_sessions)
{
    if (geteuid() != 0) {
        BOOST_TEST_MESSAGE("skipped: mounting a tmpfs needs root (the /dev/full tests still run)");
        return;
    }
    TmpfsMount m(env().tmpdir + "/audit-full-block", "64k");
    const std::string file = m.dir() + "/audit.jsonl";
    Proxy p("pgwicket-audit-full-block", audit_options(file, "audit_failure = block\n"));
    const std::string app = marker("fullblock");
    const std::string ran = marker("ran");
    const std::string prepared = marker("prepared");
    std::vector<std::string> must_not_run;
    {
        Conn c = connect_ok(with_app(p, app));
        BOOST_TEST(scalar(c.get(), "SELECT 1 AS " + ran) == "1");
        // Prepared while the trail works, executed after it broke.
        Result prep(PQprepare(c.get(), "audit_prepared", ("SELECT 1 AS " + prepared).c_str(), 0, nullptr));
        BOOST_TEST_REQUIRE(PQresultStatus(prep.get()) == PGRES_COMMAND_OK, PQresultErrorMessage(prep.get()));

        BOOST_TEST_REQUIRE(fill_up(m.dir() + "/filler") == ENOSPC);
        // Records still fit in the last page of the audit file for a while; the statement
        // whose record fails has run already, and from then on nothing runs.
        std::string refused;
        int ran_after_fill = 0;
        for (int i = 0; i < 64 && refused.empty(); ++i) {
            const std::string mk = marker("after_fill");
            Result r(PQexec(c.get(), ("SELECT 1 AS " + mk).c_str()));
            if (PQresultStatus(r.get()) == PGRES_TUPLES_OK) {
                ++ran_after_fill;
                continue;
            }
            BOOST_TEST(sqlstate_of(r.get()) == "58030", PQresultErrorMessage(r.get()));
            refused = mk;
        }
        BOOST_TEST_MESSAGE("statements that ran after the disk filled up: " << ran_after_fill);
        BOOST_TEST_REQUIRE(!refused.empty(), "64 statements ran after the disk filled up; log:\n" << p.log_tail());
        must_not_run.push_back(refused);

        const std::string simple = marker("blocked_simple");
        Result r1(PQexec(c.get(), ("SELECT 1 AS " + simple).c_str()));
        BOOST_TEST(sqlstate_of(r1.get()) == "58030", PQresultErrorMessage(r1.get()));
        BOOST_TEST(severity_of(r1.get()) == "ERROR");
        BOOST_TEST(contains(PQresultErrorMessage(r1.get()), "cannot write its audit trail"));
        must_not_run.push_back(simple);

        const std::string extended = marker("blocked_extended");
        const char* values[] = {"x"};
        Result r2(PQexecParams(c.get(), ("SELECT $1::text AS " + extended).c_str(), 1, nullptr, values, nullptr,
                               nullptr, 0));
        BOOST_TEST(sqlstate_of(r2.get()) == "58030", PQresultErrorMessage(r2.get()));
        must_not_run.push_back(extended);

        Result r3(PQexecPrepared(c.get(), "audit_prepared", 0, nullptr, nullptr, nullptr, 0));
        BOOST_TEST(sqlstate_of(r3.get()) == "58030",
                   "a statement prepared before the failure was executed: " << PQresStatus(PQresultStatus(r3.get()))
                                                                            << " " << PQresultErrorMessage(r3.get()));
        must_not_run.push_back(prepared);

        // The session stays open and usable for the client (an error, not a disconnect).
        BOOST_TEST(PQstatus(c.get()) == CONNECTION_OK);
        BOOST_TEST(PQtransactionStatus(c.get()) == PQTRANS_IDLE);

        check_refused_at_login(p, marker("fullblock_new"));
    }
    BOOST_TEST(contains(read_file(p.log_path()), "AUDIT FAILURE"), p.log_tail());
    BOOST_TEST(wait_for([&] { return contains(pg_log(), ran); }), "the server log lacks " << ran);
    const std::string server = pg_log();
    for (const auto& mk : must_not_run)
        BOOST_TEST(!contains(server, mk), "the server ran a statement that could not be audited: " << mk);

    // Space again: a new session works, and the file still holds whole lines only (a
    // record cut short by the full disk must not swallow the next one).
    fs::remove(m.dir() + "/filler");
    const std::string later = marker("later");
    {
        Conn c = connect_ok(with_app(p, later));
        BOOST_TEST(scalar(c.get(), "SELECT 1") == "1");
    }
    AuditLines a = wait_for_session_ends(file, later, 1);
    BOOST_TEST(of_app(a, later, "statement").size() == 1u);
    BOOST_TEST(a.bad.empty(), "lines that are not one JSON object each (a write cut short by the full disk, "
                              "then the next record appended to it):\n"
                                  << excerpt(a.bad.empty() ? "" : a.bad.front(), 1200));
    check_clean_stop(p);
}

BOOST_AUTO_TEST_CASE(full_disk_with_continue_keeps_running)
{
    if (geteuid() != 0) {
        BOOST_TEST_MESSAGE("skipped: mounting a tmpfs needs root (the /dev/full tests still run)");
        return;
    }
    TmpfsMount m(env().tmpdir + "/audit-full-continue", "64k");
    const std::string file = m.dir() + "/audit.jsonl";
    Proxy p("pgwicket-audit-full-continue", audit_options(file, "audit_failure = continue\n"));
    const std::string app = marker("fullcontinue");
    {
        Conn c = connect_ok(with_app(p, app));
        BOOST_TEST(scalar(c.get(), "SELECT 1") == "1");
        BOOST_TEST_REQUIRE(fill_up(m.dir() + "/filler") == ENOSPC);
        std::string last;
        for (int i = 0; i < 64; ++i) {
            last = marker("continue");
            Result r(PQexec(c.get(), ("SELECT 1 AS " + last).c_str()));
            BOOST_TEST_REQUIRE(PQresultStatus(r.get()) == PGRES_TUPLES_OK, i << ": " << PQresultErrorMessage(r.get()));
        }
        BOOST_TEST(wait_for([&] { return contains(pg_log(), last); }));
        // New sessions too, though their session_start cannot be written.
        Conn fresh = connect_ok(with_app(p, marker("fullcontinue_new")));
        BOOST_TEST(scalar(fresh.get(), "SELECT 2") == "2");
    }
    std::string log = read_file(p.log_path());
    BOOST_TEST(contains(log, "AUDIT FAILURE"), p.log_tail());
    BOOST_TEST(contains(log, "audit_failure = continue"), p.log_tail());
    check_clean_stop(p);
}

BOOST_AUTO_TEST_CASE(dev_full_blocks_new_sessions)
{
    Proxy p("pgwicket-audit-devfull-block", audit_options("/dev/full", "audit_failure = block\n"));
    check_refused_at_login(p, marker("devfull"));
    check_statement_never_runs(p, marker("devfull"));
    BOOST_TEST(contains(read_file(p.log_path()), "AUDIT FAILURE"), p.log_tail());
    BOOST_TEST(contains(read_file(p.log_path()), "No space left on device"), p.log_tail());
    check_clean_stop(p);
}

BOOST_AUTO_TEST_CASE(dev_full_with_continue_keeps_running)
{
    Proxy p("pgwicket-audit-devfull-continue", audit_options("/dev/full", "audit_failure = continue\n"));
    const std::string ran = marker("devfull_ran");
    {
        Conn c = connect_ok(with_app(p, marker("devfull_continue")));
        BOOST_TEST(scalar(c.get(), "SELECT 1 AS " + ran) == "1");
        BOOST_TEST(scalar(c.get(), "SELECT 2") == "2");
    }
    BOOST_TEST(wait_for([&] { return contains(pg_log(), ran); }));
    std::string log = read_file(p.log_path());
    BOOST_TEST(contains(log, "AUDIT FAILURE"), p.log_tail());
    BOOST_TEST(contains(log, "No space left on device"), p.log_tail());
    check_clean_stop(p);
}

BOOST_AUTO_TEST_CASE(read_only_audit_file_behaves_as_configured)
{
    // Root writes through file permissions: make the filesystem read-only instead. (It
    // must be done before any session opens the file: a remount fails with EBUSY while a
    // file is open for writing.)
    std::optional<TmpfsMount> m;
    std::string file;
    if (geteuid() == 0) {
        m.emplace(env().tmpdir + "/audit-readonly", "64k");
        file = m->dir() + "/audit.jsonl";
        write_file(file, "");
        RunResult r = m->remount_read_only();
        BOOST_TEST_REQUIRE(r.ok(), r.status() << r.out);
    } else {
        file = fresh_audit_path("audit-readonly");
        write_file(file, "");
        ::chmod(file.c_str(), 0444);
    }
    {
        Proxy p("pgwicket-audit-readonly-block", audit_options(file, "audit_failure = block\n"));
        check_refused_at_login(p, marker("readonly"));
        check_statement_never_runs(p, marker("readonly"));
        BOOST_TEST(contains(read_file(p.log_path()), "AUDIT FAILURE"), p.log_tail());
        check_clean_stop(p);
    }
    {
        Proxy p("pgwicket-audit-readonly-continue", audit_options(file, "audit_failure = continue\n"));
        const std::string ran = marker("readonly_ran");
        {
            Conn c = connect_ok(with_app(p, marker("readonly_continue")));
            BOOST_TEST(scalar(c.get(), "SELECT 1 AS " + ran) == "1");
        }
        BOOST_TEST(wait_for([&] { return contains(pg_log(), ran); }));
        BOOST_TEST(contains(read_file(p.log_path()), "AUDIT FAILURE"), p.log_tail());
        check_clean_stop(p);
    }
    BOOST_TEST(read_file(file).empty());
}

// ---- logrotate ---------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(sighup_reopens_the_audit_file_after_logrotate)
{
    const std::string file = fresh_audit_path("audit-rotate");
    const std::string rotated = file + ".1";
    std::error_code ec;
    fs::remove(rotated, ec);
    Proxy p("pgwicket-audit-rotate", audit_options(file));
    const std::string app_open = marker("rotate_open"), app_new = marker("rotate_new");
    {
        Conn open = connect_ok(with_app(p, app_open));
        BOOST_TEST(scalar(open.get(), "SELECT 1 AS before_rotate") == "1");
        BOOST_TEST_REQUIRE(wait_for([&] { return of_app(read_audit(file), app_open, "statement").size() == 1; }));

        // What logrotate does: move the file, then SIGHUP.
        fs::rename(file, rotated);
        const size_t mark = p.log_size();
        BOOST_TEST_REQUIRE(::kill(p.pid(), SIGHUP) == 0);
        BOOST_TEST_REQUIRE(wait_for([&] {
            return read_file(p.log_path()).find("configuration reloaded", mark) != std::string::npos;
        }), p.log_tail());

        BOOST_TEST(scalar(open.get(), "SELECT 1 AS open_session_after_rotate") == "1");
        Conn fresh = connect_ok(with_app(p, app_new));
        BOOST_TEST(scalar(fresh.get(), "SELECT 1 AS new_session_after_rotate") == "1");
    }
    AuditLines now = wait_for_session_ends(file, app_new, 1);
    wait_for([&] {
        now = read_audit(file);
        return of_app(now, app_open, "session_end").size() + of_app(read_audit(rotated), app_open, "session_end").size() == 1;
    });
    AuditLines old = read_audit(rotated);
    BOOST_TEST_INFO("new file:\n" << dump(now.records) << "rotated file:\n" << dump(old.records));
    BOOST_TEST(now.bad.empty());
    BOOST_TEST(old.bad.empty());
    // Before the rotation: the old file.
    BOOST_TEST(with_statement(of_app(old, app_open, "statement"), "SELECT $1 AS before_rotate").size() == 1u);
    BOOST_TEST(of_app(old, app_open, "session_start").size() == 1u);
    // After it: the new file, for the open session and for a new one.
    BOOST_TEST(with_statement(of_app(now, app_new, "statement"), "SELECT $1 AS new_session_after_rotate").size() == 1u);
    BOOST_TEST(of_app(now, app_new, "session_start").size() == 1u);
    BOOST_TEST(with_statement(of_app(now, app_open, "statement"), "SELECT $1 AS open_session_after_rotate").size() == 1u,
               "the open session's statement went to the rotated file");
    BOOST_TEST(of_app(now, app_open, "session_end").size() == 1u);
    BOOST_TEST(of_app(old, app_open, "statement").size() == 1u);
    BOOST_TEST(of_app(old, app_new).empty());
    check_clean_stop(p);
}

BOOST_AUTO_TEST_SUITE_END()
