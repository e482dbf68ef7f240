// Unit tests for the guardrail policies: [policy.NAME] parsing and its errors, the verdicts
// of policy::check, which policy a session gets (Config::policy_for), unknown policy names.
#include "config/config.hh"
#include "policy/classify.hh"
#include "policy/policy.hh"

#include <boost/test/unit_test.hpp>

#include <string>
#include <unistd.h>
#include <vector>

namespace cfg = pgw::config;
namespace pol = pgw::policy;

namespace {

const std::string kDatabases = "[databases]\n* = host=127.0.0.1 port=5432\n";

template <typename R>
std::string why(const R& r)
{
    return r.ok() ? std::string() : r.error();
}

std::string error_of(const std::string& text, const std::string& name = "policy.ini")
{
    auto r = cfg::load_string(text, name);
    BOOST_TEST_REQUIRE(!r.ok(), "expected an error for:\n" << text);
    return r.error();
}

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

std::string write_temp(const std::string& text)
{
    char path[] = "/tmp/pgwicket-unit-policy-XXXXXX";
    int fd = mkstemp(path);
    BOOST_REQUIRE(fd >= 0);
    BOOST_REQUIRE(::write(fd, text.data(), text.size()) == ssize_t(text.size()));
    ::close(fd);
    return path;
}

// A policy from the lines of its section, through the real config parser.
pol::Policy policy_from(const std::string& lines)
{
    auto r = cfg::load_string(kDatabases + "[policy.p]\n" + lines);
    BOOST_TEST_REQUIRE(r.ok(), why(r));
    BOOST_TEST_REQUIRE(r->find_policy("p") != nullptr);
    return *r->find_policy("p");
}

// policy::check on one query string; a parse error fails the test.
pol::Verdict verdict(const pol::Policy& p, const std::string& sql)
{
    auto s = pol::classify(sql);
    BOOST_TEST_REQUIRE(s.ok(), sql << ": " << why(s));
    return pol::check(p, *s);
}

bool allowed(const pol::Policy& p, const std::string& sql) { return verdict(p, sql).allowed; }

} // namespace

BOOST_AUTO_TEST_SUITE(policy_config)

BOOST_AUTO_TEST_CASE(every_setting_is_parsed)
{
    pol::Policy p = policy_from("read_only = 1\n"
                                "allow = select, show,transaction  SET\n"
                                "deny = delete\n"
                                "allow_copy = 0\n"
                                "allow_listen = off\n"
                                "query_timeout = 30\n"
                                "client_idle_timeout = 600\n"
                                "statement_timeout = 5000\n"
                                "idle_in_transaction_session_timeout = 60000\n"
                                "read_only_functions = reports.monthly, \"Total\"\n");
    BOOST_TEST(p.name == "p");
    BOOST_TEST(p.read_only);
    BOOST_TEST((p.allow == std::vector<pol::Kind>{pol::Kind::Select, pol::Kind::Show, pol::Kind::Transaction,
                                                   pol::Kind::Set}));
    BOOST_TEST((p.deny == std::vector<pol::Kind>{pol::Kind::Delete}));
    BOOST_TEST(!p.allow_copy);
    BOOST_TEST(!p.allow_listen);
    BOOST_TEST(p.query_timeout == 30);
    BOOST_TEST(p.client_idle_timeout == 600);
    BOOST_TEST(p.statement_timeout == 5000);
    BOOST_TEST(p.idle_in_transaction_session_timeout == 60000);
    BOOST_TEST((p.read_only_functions == std::vector<std::string>{"reports.monthly", "\"Total\""}));
    BOOST_TEST(p.functions.allows("reports.monthly"));
    BOOST_TEST(p.functions.allows("\"Total\""));
    BOOST_TEST(!p.functions.allows("total"));
    BOOST_TEST(p.functions.allows("lower"));  // the built-in list stays
    BOOST_TEST(p.functions.size() == pol::FunctionAllowlist::builtin().size() + 2);
    auto up = p.upstream_settings();
    BOOST_TEST_REQUIRE(up.size() == 2u);
    BOOST_TEST(up[0].first == "statement_timeout");
    BOOST_TEST(up[0].second == "5000");
    BOOST_TEST(up[1].first == "idle_in_transaction_session_timeout");
    BOOST_TEST(up[1].second == "60000");
}

BOOST_AUTO_TEST_CASE(unset_settings_take_their_defaults)
{
    pol::Policy p = policy_from("allow_listen = 1\n");
    BOOST_TEST(!p.read_only);
    BOOST_TEST(p.allow.empty());
    BOOST_TEST(p.deny.empty());
    BOOST_TEST(p.allow_copy);
    BOOST_TEST(p.allow_listen);
    BOOST_TEST(p.query_timeout == -1);  // the [pgwicket] query_timeout
    BOOST_TEST(p.client_idle_timeout == 0);
    BOOST_TEST(p.statement_timeout == 0);
    BOOST_TEST(p.idle_in_transaction_session_timeout == 0);
    BOOST_TEST(p.upstream_settings().empty());
    BOOST_TEST(p.functions.size() == pol::FunctionAllowlist::builtin().size());
    // The documented defaults are the table's.
    for (const auto& s : pol::policy_settings()) {
        BOOST_TEST(!s.summary.empty(), s.name);
        BOOST_TEST(!s.type.empty(), s.name);
    }
}

BOOST_AUTO_TEST_CASE(booleans_take_the_usual_spellings)
{
    for (const char* yes : {"1", "on", "true", "yes"})
        BOOST_TEST(policy_from(std::string("read_only = ") + yes + "\n").read_only, yes);
    for (const char* no : {"0", "off", "false", "no"})
        BOOST_TEST(!policy_from(std::string("allow_copy = ") + no + "\n").allow_copy, no);
}

BOOST_AUTO_TEST_CASE(bad_values_name_file_line_section_and_setting)
{
    struct Case {
        const char* line;
        const char* expected;
    };
    const Case cases[] = {
        {"read_only = maybe", "[policy.p] read_only: invalid value \"maybe\" (expected 0 or 1)"},
        {"allow_copy = 2", "[policy.p] allow_copy: invalid value \"2\""},
        {"allow_listen =", "[policy.p] allow_listen: invalid value \"\""},
        {"query_timeout = -1", "[policy.p] query_timeout: invalid value \"-1\" (expected a whole number from 0 to 86400)"},
        {"query_timeout = 86401", "[policy.p] query_timeout: invalid value \"86401\""},
        {"client_idle_timeout = 10s", "[policy.p] client_idle_timeout: invalid value \"10s\""},
        {"statement_timeout = 86400001", "[policy.p] statement_timeout: invalid value \"86400001\" (expected a whole number from 0 to 86400000)"},
        {"idle_in_transaction_session_timeout = 1.5", "[policy.p] idle_in_transaction_session_timeout: invalid value \"1.5\""},
    };
    for (const auto& c : cases) {
        // Line 1 [databases], 2 the entry, 3 the policy header, 4 a good setting, 5 the bad one.
        std::string e = error_of(kDatabases + "[policy.p]\nread_only = 1\n" + c.line + "\n");
        BOOST_TEST(has(e, std::string("policy.ini:5: ") + c.expected), c.line << " -> " << e);
    }
}

BOOST_AUTO_TEST_CASE(unknown_setting_lists_the_settings)
{
    std::string e = error_of(kDatabases + "[policy.careful]\nmax_row = 100\n");
    BOOST_TEST(has(e, "policy.ini:4: [policy.careful] max_row: unknown policy setting \"max_row\""), e);
    for (const auto& s : pol::policy_settings())
        BOOST_TEST(has(e, std::string(s.name)), s.name << " missing from: " << e);
}

BOOST_AUTO_TEST_CASE(unknown_kind_names_list_the_kinds)
{
    std::string e = error_of(kDatabases + "[policy.p]\nallow = select, updates\n");
    BOOST_TEST(has(e, "policy.ini:4: [policy.p] allow: unknown statement kind \"updates\""), e);
    for (pol::Kind k : pol::all_kinds())
        BOOST_TEST(has(e, std::string(pol::kind_name(k))), pol::kind_name(k) << " missing from: " << e);
    e = error_of(kDatabases + "[policy.p]\ndeny = function_call\n");
    BOOST_TEST(has(e, "deny: unknown statement kind \"function_call\""), e);
    // Kind names are case-insensitive.
    pol::Policy p = policy_from("deny = DELETE, Truncate\n");
    BOOST_TEST((p.deny == std::vector<pol::Kind>{pol::Kind::Delete, pol::Kind::Truncate}));
    // Every kind name is accepted.
    for (pol::Kind k : pol::all_kinds()) {
        pol::Policy one = policy_from("deny = " + std::string(pol::kind_name(k)) + "\n");
        BOOST_TEST((one.deny == std::vector<pol::Kind>{k}), pol::kind_name(k));
    }
}

// A long list goes on indented continuation lines, as a long connection string does; a
// continuation must add to the list, never replace it (a deny list that silently lost
// its first line would let those kinds through).
BOOST_AUTO_TEST_CASE(kind_lists_continue_on_indented_lines)
{
    pol::Policy p = policy_from("deny = delete, update\n    truncate, ddl\n");
    BOOST_TEST((p.deny == std::vector<pol::Kind>{pol::Kind::Delete, pol::Kind::Update, pol::Kind::Truncate,
                                                  pol::Kind::Ddl}),
               "deny has " << p.deny.size() << " kinds");
    BOOST_TEST(!allowed(p, "DELETE FROM t"));
    BOOST_TEST(!allowed(p, "TRUNCATE t"));
    pol::Policy q = policy_from("allow = select\n\tshow\n");
    BOOST_TEST((q.allow == std::vector<pol::Kind>{pol::Kind::Select, pol::Kind::Show}),
               "allow has " << q.allow.size() << " kinds");
    BOOST_TEST(allowed(q, "SELECT 1"));
}

BOOST_AUTO_TEST_CASE(bad_function_names_are_errors)
{
    std::string e = error_of(kDatabases + "[policy.p]\nread_only = 1\nread_only_functions = ok_name, 1bad\n");
    BOOST_TEST(has(e, "[policy.p] read_only_functions:"), e);
    BOOST_TEST(has(e, "1bad"), e);
    BOOST_TEST(has(e, "policy.ini:"), e);
}

BOOST_AUTO_TEST_CASE(several_policies_and_a_repeated_section)
{
    auto r = cfg::load_string(kDatabases + "[policy.a]\nread_only = 1\n[policy.b]\ndeny = ddl\n"
                                           "[policy.a]\nquery_timeout = 5\n");
    BOOST_TEST_REQUIRE(r.ok(), why(r));
    BOOST_TEST(r->policies.size() == 2u);
    const pol::Policy* a = r->find_policy("a");
    BOOST_TEST_REQUIRE(a != nullptr);
    BOOST_TEST(a->read_only);
    BOOST_TEST(a->query_timeout == 5);
    BOOST_TEST(r->find_policy("b") != nullptr);
    BOOST_TEST(r->find_policy("c") == nullptr);
    BOOST_TEST(r->find_policy("A") == nullptr);  // names are case-sensitive
}

// A policy that allows everything: a section with no settings. inih reports only
// name = value lines, so such a section must still be known by its header.
BOOST_AUTO_TEST_CASE(an_empty_section_is_an_allow_all_policy)
{
    auto r = cfg::load_string("[pgwicket]\ndefault_policy = open\n" + kDatabases + "[policy.open]\n");
    BOOST_TEST_REQUIRE(r.ok(), why(r));
    const pol::Policy* p = r->find_policy("open");
    BOOST_TEST_REQUIRE(p != nullptr);
    BOOST_TEST(allowed(*p, "DELETE FROM t"));
}

// ---- verdicts ------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(deny_wins_over_allow)
{
    pol::Policy p = policy_from("allow = select, delete\ndeny = delete\n");
    BOOST_TEST(allowed(p, "SELECT 1"));
    pol::Verdict v = verdict(p, "DELETE FROM t");
    BOOST_TEST(!v.allowed);
    BOOST_TEST(v.kind == "delete");
    BOOST_TEST(v.reason == "its kind is on the policy's deny list");
    // The deny list sees kinds nested anywhere: a data-modifying CTE, EXPLAIN ANALYZE.
    BOOST_TEST(!allowed(p, "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d"));
    BOOST_TEST(!allowed(p, "EXPLAIN ANALYZE DELETE FROM t"));
    BOOST_TEST(!allowed(p, "PREPARE q AS DELETE FROM t"));
}

BOOST_AUTO_TEST_CASE(allow_list)
{
    pol::Policy p = policy_from("allow = select, show, transaction\n");
    BOOST_TEST(allowed(p, "SELECT * FROM t"));
    BOOST_TEST(allowed(p, "show work_mem"));
    BOOST_TEST(allowed(p, "BEGIN; SELECT 1; COMMIT"));
    pol::Verdict v = verdict(p, "INSERT INTO t VALUES (1)");
    BOOST_TEST(!v.allowed);
    BOOST_TEST(v.kind == "insert");
    BOOST_TEST(v.reason == "its kind is not on the policy's allow list");
    BOOST_TEST(!allowed(p, "SET work_mem = '1GB'"));
    BOOST_TEST(!allowed(p, "SELECT 1; UPDATE t SET a = 1"));  // one statement is enough
    BOOST_TEST(verdict(p, "SELECT 1; UPDATE t SET a = 1").kind == "update");
    // Nothing on the list writes, so nothing nested that writes may pass either.
    BOOST_TEST(!allowed(p, "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d"));
    BOOST_TEST(!allowed(p, "SELECT * INTO t2 FROM t"));
    BOOST_TEST(!allowed(p, "SELECT * FROM t FOR UPDATE"));
}

BOOST_AUTO_TEST_CASE(allow_copy)
{
    pol::Policy p = policy_from("allow_copy = 0\n");
    for (const char* sql : {"COPY t TO STDOUT", "COPY t FROM STDIN", "COPY (SELECT 1) TO STDOUT (FORMAT csv)",
                            "copy t to stdout"}) {
        pol::Verdict v = verdict(p, sql);
        BOOST_TEST(!v.allowed, sql);
        BOOST_TEST(v.reason == "the policy does not allow COPY", sql);
    }
    BOOST_TEST(verdict(p, "COPY t TO STDOUT").kind == "copy_to");
    BOOST_TEST(verdict(p, "COPY t FROM STDIN").kind == "copy_from");
    BOOST_TEST(allowed(p, "SELECT 'COPY t TO STDOUT'"));
    BOOST_TEST(allowed(p, "DELETE FROM t"));  // only COPY is refused
    BOOST_TEST(allowed(policy_from("allow_copy = 1\n"), "COPY t TO STDOUT"));
}

BOOST_AUTO_TEST_CASE(allow_listen)
{
    pol::Policy p = policy_from("allow_listen = 0\n");
    pol::Verdict v = verdict(p, "LISTEN jobs");
    BOOST_TEST(!v.allowed);
    BOOST_TEST(v.kind == "listen");
    BOOST_TEST(v.reason == "the policy does not allow LISTEN");
    BOOST_TEST(allowed(p, "UNLISTEN *"));
    BOOST_TEST(allowed(p, "NOTIFY jobs"));
    BOOST_TEST(allowed(policy_from("allow_listen = 1\n"), "LISTEN jobs"));
}

BOOST_AUTO_TEST_CASE(read_only)
{
    pol::Policy p = policy_from("read_only = 1\n");
    for (const char* sql : {"SELECT * FROM t", "SELECT lower(name) FROM t", "SHOW work_mem", "BEGIN", "COMMIT",
                            "EXPLAIN DELETE FROM t", "COPY t TO STDOUT", "LISTEN x", ""})
        BOOST_TEST(allowed(p, sql), sql);
    struct Case {
        const char* sql;
        const char* kind;
        const char* because;  // part of the reason
    };
    const Case denied[] = {
        {"DELETE FROM t", "delete", "modifies rows"},
        {"INSERT INTO t VALUES (1)", "insert", "modifies rows"},
        {"SELECT nextval('s')", "select", "nextval"},
        {"WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "select", "WITH"},
        {"SELECT * INTO t2 FROM t", "select_into", "SELECT INTO"},
        {"CREATE TABLE x (a int)", "ddl", "schema"},
        {"DO $$ BEGIN DELETE FROM t; END $$", "do", "DO"},
        {"SELECT 1; DROP TABLE t", "ddl", "schema"},
        {"SELECT reports.monthly()", "select", "reports.monthly"},
        {"BEGIN READ WRITE", "transaction", "read-only"},
        {"SET default_transaction_read_only = off", "set", "read-only"},
    };
    for (const auto& c : denied) {
        pol::Verdict v = verdict(p, c.sql);
        BOOST_TEST(!v.allowed, c.sql);
        BOOST_TEST(v.kind == c.kind, c.sql << ": " << v.kind);
        BOOST_TEST(has(v.reason, "the policy is read-only and the statement "), c.sql << ": " << v.reason);
        BOOST_TEST(has(v.reason, c.because), c.sql << ": " << v.reason);
    }
    // An extra function on the policy's allowlist is read-only; others stay writes.
    pol::Policy q = policy_from("read_only = 1\nread_only_functions = reports.monthly\n");
    BOOST_TEST(allowed(q, "SELECT reports.monthly()"));
    BOOST_TEST(allowed(q, "SELECT REPORTS.Monthly(), lower('A')"));
    BOOST_TEST(!allowed(q, "SELECT reports.weekly()"));
    BOOST_TEST(!allowed(q, "SELECT monthly()"));  // another schema's function
    BOOST_TEST(!allowed(q, "SELECT nextval('s')"));
}

BOOST_AUTO_TEST_CASE(read_only_is_checked_after_the_lists)
{
    // deny, allow, COPY and LISTEN come first, so their reason is the one given.
    pol::Policy p = policy_from("read_only = 1\ndeny = delete\nallow_copy = 0\n");
    BOOST_TEST(verdict(p, "DELETE FROM t").reason == "its kind is on the policy's deny list");
    BOOST_TEST(verdict(p, "COPY t FROM STDIN").reason == "the policy does not allow COPY");
    BOOST_TEST(has(verdict(p, "UPDATE t SET a = 1").reason, "read-only"));
}

// ---- which policy a session gets -----------------------------------------------------------

BOOST_AUTO_TEST_CASE(policy_for_precedence)
{
    std::string hba = write_temp("local all all trust policy=ruled\nhost all all all trust\n");
    auto r = cfg::load_string("[pgwicket]\nauth_type = hba\nauth_hba_file = " + hba + "\ndefault_policy = fallback\n" +
                              kDatabases +
                              "[policy.fallback]\nread_only = 1\n[policy.grouped]\nread_only = 1\n"
                              "[policy.grouped2]\nread_only = 1\n[policy.ruled]\nread_only = 1\n"
                              "[policy.dbwide]\nread_only = 1\n"
                              "[database_policies]\norders = dbwide\n"
                              "[group_policies]\nanalysts = grouped\ninterns = grouped2\n");
    ::unlink(hba.c_str());
    BOOST_TEST_REQUIRE(r.ok(), why(r));
    const cfg::Config& c = *r;
    BOOST_TEST_REQUIRE(c.rules.size() == 2u);
    BOOST_TEST(c.rules[0].policy == "ruled");
    BOOST_TEST(c.rules[1].policy.empty());

    auto name_of = [&](const std::vector<std::string>& groups, const std::string& rule, const std::string& db,
                       std::string* source = nullptr) {
        const pol::Policy* p = c.policy_for(groups, rule, db, source);
        return p ? p->name : std::string("(none)");
    };
    std::string source;
    // A group wins over everything.
    BOOST_TEST(name_of({"x", "analysts"}, "ruled", "orders", &source) == "grouped");
    BOOST_TEST(source == "[group_policies] analysts");
    // Several groups: the first [group_policies] line, in file order, that fits.
    BOOST_TEST(name_of({"interns", "analysts"}, "", "orders") == "grouped");
    BOOST_TEST(name_of({"interns"}, "", "orders") == "grouped2");
    // Then the rule's policy=NAME.
    BOOST_TEST(name_of({"nobody"}, "ruled", "orders", &source) == "ruled");
    BOOST_TEST(source == "the rule's policy");
    // Then the database (its exact name).
    BOOST_TEST(name_of({}, "", "orders", &source) == "dbwide");
    BOOST_TEST(source == "[database_policies] orders");
    BOOST_TEST(name_of({}, "", "Orders") == "fallback");
    // Then default_policy.
    BOOST_TEST(name_of({}, "", "sales", &source) == "fallback");
    BOOST_TEST(source == "default_policy");

    // Without default_policy a session may have no policy at all.
    auto bare = cfg::load_string(kDatabases + "[policy.dbwide]\nread_only = 1\n[database_policies]\norders = dbwide\n");
    BOOST_TEST_REQUIRE(bare.ok(), why(bare));
    BOOST_TEST(bare->policy_for({}, "", "sales", nullptr) == nullptr);
    BOOST_TEST(bare->policy_for({}, "", "orders", nullptr) != nullptr);
}

BOOST_AUTO_TEST_CASE(unknown_policy_names_are_errors)
{
    std::string e = error_of("[pgwicket]\ndefault_policy = nope\n" + kDatabases);
    BOOST_TEST(has(e, "policy.ini: default_policy names policy \"nope\", but there is no [policy.nope] section"), e);

    e = error_of(kDatabases + "[policy.ro]\nread_only = 1\n[database_policies]\norders = ro\nsales = r0\n");
    BOOST_TEST(has(e, "[database_policies] sales names policy \"r0\""), e);
    BOOST_TEST(!has(e, "orders"), e);

    e = error_of(kDatabases + "[group_policies]\nanalysts = readonly\n");
    BOOST_TEST(has(e, "[group_policies] analysts names policy \"readonly\", but there is no [policy.readonly] section"),
               e);

    std::string hba = write_temp("host all all all trust\nlocal all all trust policy=missing\n");
    e = error_of("[pgwicket]\nauth_type = hba\nauth_hba_file = " + hba + "\n" + kDatabases);
    BOOST_TEST(has(e, "the rule at " + hba + ":2 names policy \"missing\""), e);
    ::unlink(hba.c_str());

    // All of them at once, each on its own line.
    e = error_of("[pgwicket]\ndefault_policy = a\n" + kDatabases + "[database_policies]\nx = b\n[group_policies]\ng = c\n");
    BOOST_TEST(has(e, "\"a\""), e);
    BOOST_TEST(has(e, "\"b\""), e);
    BOOST_TEST(has(e, "\"c\""), e);
}

BOOST_AUTO_TEST_CASE(a_database_has_one_policy)
{
    std::string e = error_of(kDatabases + "[policy.ro]\nread_only = 1\n[database_policies]\norders = ro\norders = ro\n");
    BOOST_TEST(has(e, "policy.ini:7: database \"orders\" has a policy already"), e);
}

BOOST_AUTO_TEST_SUITE_END()
