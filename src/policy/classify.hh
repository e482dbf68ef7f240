// Statement classification for the guardrail policies: the kind of each statement in a
// query string, whether it writes, which functions it calls; PostgreSQL's own parser.
#pragma once

#include "common/result.hh"

#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace pgw::policy {

// What a statement is, by its top-level form. kind_name() gives the stable lowercase
// name used in configuration allow/deny lists, error messages and audit records.
enum class Kind : std::uint8_t {
    Select,           // SELECT, VALUES, TABLE without row locks or INTO
    SelectForUpdate,  // row locks FOR UPDATE / FOR NO KEY UPDATE anywhere in it
    SelectForShare,   // row locks FOR SHARE / FOR KEY SHARE (and none stronger)
    SelectInto,       // SELECT ... INTO new_table
    Insert,
    Update,
    Delete,
    Merge,
    CreateTableAs,  // CREATE TABLE ... AS, CREATE MATERIALIZED VIEW ... AS
    Ddl,            // CREATE / ALTER / DROP / COMMENT / SECURITY LABEL of any object
    Truncate,
    Vacuum,
    Analyze,
    Reindex,
    Cluster,
    CopyTo,
    CopyFrom,
    Call,
    Do,
    AlterSystem,
    SetRole,                  // SET / RESET ROLE
    SetSessionAuthorization,  // SET / RESET SESSION AUTHORIZATION
    Set,                      // SET of any other setting, SET TRANSACTION
    Reset,                    // RESET of any other setting, RESET ALL
    Show,
    Lock,
    Grant,  // GRANT on objects or roles, ALTER DEFAULT PRIVILEGES ... GRANT
    Revoke,
    Transaction,  // BEGIN, START, COMMIT, ROLLBACK, SAVEPOINT, RELEASE, two-phase commit
    Prepare,      // PREPARE name AS ...
    Execute,
    Deallocate,
    Declare,  // DECLARE cursor
    Fetch,    // FETCH and MOVE
    Close,    // CLOSE cursor
    Explain,
    ExplainAnalyze,
    Listen,
    Notify,
    Unlisten,
    Discard,
    Checkpoint,
    Other,  // any other utility statement (LOAD, REFRESH MATERIALIZED VIEW, ...)
};

std::string_view kind_name(Kind k);

// pgaudit's statement classes (pgaudit.log), for the audit record's "class".
enum class AuditClass : std::uint8_t { Read, Write, Function, Role, Ddl, Misc, MiscSet };
std::string_view audit_class_name(AuditClass c);  // "READ", "WRITE", ..., "MISC_SET"

// What a statement does to a relation it names.
enum class Access : std::uint8_t { Read, Write, Ddl };
std::string_view access_name(Access a);  // "read", "write", "ddl"

struct Relation {
    // As written: schema-qualified only when written so; parts spelled as in
    // Statement::functions (folded, quoted when not plain lowercase identifiers).
    std::string name;
    Access access = Access::Read;
    bool operator==(const Relation&) const = default;
};
std::optional<Kind> kind_from_name(std::string_view name);
// Every kind, in declaration order.
std::span<const Kind> all_kinds();

// One statement of a query string.
struct Statement {
    Kind kind = Kind::Other;
    // The statement that a PREPARE, EXPLAIN, DECLARE or COPY (query) carries; for every
    // other statement the same as kind.
    Kind inner = Kind::Other;
    // May executing it change data or state that other sessions see (rows, sequences,
    // schema, privileges, server configuration, notifications)? An upper bound: true
    // when the effect cannot be seen from the text (EXECUTE, CALL, DO).
    bool writes = false;
    // Why the statement is never read-only, whatever functions it calls; empty when it
    // can be. Points to a static string.
    std::string_view not_read_only;
    // Every function named anywhere in the statement (target lists, FROM, WHERE,
    // subqueries, WITH, defaults, ...), once each, in order of first appearance. Names
    // are as PostgreSQL resolves them: unquoted parts folded to lower case, parts that
    // are not plain lowercase identifiers double-quoted ("MyFunc", "a.b"), joined with
    // '.'. Syntax that the grammar turns into calls shows up with its pg_catalog name
    // (EXTRACT -> pg_catalog.extract, TRIM -> pg_catalog.btrim).
    std::vector<std::string> functions;
    // SET/RESET/SHOW/ALTER SYSTEM: the setting's name in lower case ("all" for RESET ALL
    // and SHOW ALL, "transaction" and "session characteristics" for those SET forms,
    // "constraints" for SET CONSTRAINTS). Policies that pin settings look here.
    std::string setting;
    // Byte range of the statement in the classified text, as libpg_query reports it: from
    // just after the previous semicolon, so it may begin with blanks or comments.
    std::size_t offset = 0;
    std::size_t length = 0;
    // Every kind that occurs in it: its own, the carried statement's, and data-modifying
    // statements, SELECT INTO and row locks nested anywhere (WITH, COPY (...), EXPLAIN),
    // so a deny list entry "delete" also catches WITH d AS (DELETE ...) SELECT ...
    std::uint64_t kinds = 0;
    // For the audit trail, found by the same walk. The class as pgaudit would log the
    // statement: EXPLAIN ANALYZE, PREPARE and DECLARE take the carried statement's, a
    // SELECT with a data-modifying WITH is WRITE, SELECT INTO is DDL, SET is MISC_SET
    // (RESET, SET CONSTRAINTS and SHOW are MISC).
    AuditClass audit_class = AuditClass::Misc;
    // PostgreSQL's command tag without counts ("SELECT", "CREATE TABLE", "DROP VIEW");
    // for rare DDL whose tag the grammar does not show, the parse node's name in the
    // same style ("CREATE POLICY").
    std::string command;
    // Tables, views, sequences named anywhere in it (FROM, JOIN, subqueries, WITH bodies
    // but not the names WITH defines, DML and COPY targets, DDL targets), each name and
    // access once, in order of first appearance. DML and COPY FROM targets and TRUNCATE
    // are write; DDL, GRANT/REVOKE and maintenance commands (VACUUM, ANALYZE, CLUSTER,
    // REINDEX, REFRESH) name theirs as ddl; everything else, a view's or CREATE TABLE
    // AS's query included, is read.
    std::vector<Relation> relations;

    bool involves(Kind k) const { return (kinds >> unsigned(k)) & 1u; }
};

// Statements longer than this are not classified (an Error: callers fail closed). The
// parser's stack grows with nesting, and nesting with the length of the text.
inline constexpr std::size_t kMaxClassifyBytes = 1u << 20;

// Parses a (possibly multi-statement) query string and classifies each statement. Empty
// text or text with only comments gives zero statements. A syntax error, a NUL byte or
// text over kMaxClassifyBytes gives an Error with PostgreSQL's message and position.
Result<std::vector<Statement>> classify(std::string_view sql);

// A query string as the server may read it. The server lexes with the session's
// standard_conforming_strings and after converting from its client_encoding; pgwicket
// does not follow either (a pipelined SET could change them before the server reads the
// next text), so a text that the two can change is read every way they can: a policy
// must allow every reading that parses.
struct Reading {
    std::string_view how;  // "" for the primary reading; else e.g. "standard_conforming_strings = off"
    Result<std::vector<Statement>> statements;
};
struct Classified {
    // As UTF-8 (or any ASCII-safe encoding) with standard_conforming_strings on.
    Result<std::vector<Statement>> primary;
    // standard_conforming_strings off, for texts with a backslash; and the client-only
    // encodings (SJIS, BIG5, GBK, UHC, GB18030, JOHAB) whose multibyte characters may
    // hide an ASCII byte (a backslash, a semicolon) from the server, for texts where a
    // byte above 127 is followed by such a byte.
    std::vector<Reading> others;
};
Classified classify_readings(std::string_view sql);

// The text with every digit of its numeric constants turned into '0' (same length, so
// statement offsets stay valid), for caching by shape: texts that differ only in their
// numbers share it. nullopt when the text is not plain enough to be sure where its
// numbers are: a backslash, a byte above 127 or a NUL (other readings, see above), or an
// unterminated string, quoted identifier, dollar quote or comment. Digits inside those,
// inside identifiers (t1, "a 1") and in parameters ($1) are kept.
std::optional<std::string> literal_key(std::string_view sql);

// Whether a classification holds for every text with the same literal_key: only
// plain queries and DML, whose kind, functions and row locks no number can change
// (a SET's, EXPLAIN's or VACUUM's options can be numbers: never shared).
bool shareable_by_literal_key(const std::vector<Statement>& statements);

// Functions known to neither write nor reach outside the statement (no sequences,
// advisory locks, large objects, signals, files, settings, sleeps, other databases).
class FunctionAllowlist {
public:
    // The built-in list: about 300 common read-only PostgreSQL functions.
    static const FunctionAllowlist& builtin();
    // The built-in list plus names from the configuration, written as in SQL
    // (`myschema.Report` folds to myschema.report; `"Report"` keeps its case).
    static Result<FunctionAllowlist> with_extra(const std::vector<std::string>& names);

    // For a name as it appears in Statement::functions. pg_catalog.f counts as f; a
    // name qualified with another schema matches only an entry with that schema.
    bool allows(std::string_view function) const;
    std::size_t size() const { return names_.size(); }

private:
    std::unordered_set<std::string> names_;
};

// The canonical form (as in Statement::functions) of a function name written in SQL,
// or an Error when it is not a valid, optionally qualified, name.
Result<std::string> canonical_function_name(std::string_view written);

// What "read-only" means for a read_only policy. A statement is read-only when all of:
//
//  1. Its kind is one of
//       select, show, listen, unlisten, deallocate, fetch, close;
//       discard, except DISCARD ALL (it resets the role the session may have been given);
//       set and reset, except of transaction_read_only,
//         default_transaction_read_only and standard_conforming_strings (unless set
//         explicitly to on), and of client_encoding to an encoding whose multibyte
//         characters can contain a backslash (SJIS, BIG5, GBK, GB18030, JOHAB);
//         SET TRANSACTION / SET SESSION CHARACTERISTICS unless they ask for READ WRITE;
//       transaction (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, ...), except BEGIN / START
//         TRANSACTION READ WRITE and the two-phase PREPARE TRANSACTION, COMMIT
//         PREPARED, ROLLBACK PREPARED;
//       explain of any statement (without ANALYZE nothing is executed);
//       explain_analyze, prepare and declare of a read-only statement;
//       copy_to to the client (COPY ... TO STDOUT) of a table or a read-only query.
//     Never read-only: execute (the prepared text is not visible here; a session that
//     remembers PREPARE by name could judge it, and the extended protocol's Parse
//     message carries the text anyway), call, do, copy_from, copy to a server file or
//     program, set_role, set_session_authorization, alter_system, lock, notify,
//     grant, revoke, ddl (temporary tables too), create_table_as, select_into,
//     truncate, vacuum, analyze, reindex, cluster, checkpoint, other, and every
//     data-modifying statement.
//  2. Nothing in it modifies rows: no INSERT/UPDATE/DELETE/MERGE in a WITH, no SELECT
//     INTO, no row locks (FOR UPDATE, FOR NO KEY UPDATE, FOR SHARE, FOR KEY SHARE).
//  3. Every function it names is in the allowlist, wherever it appears (an EXPLAIN
//     without ANALYZE included: the planner evaluates immutable calls).
//
// A query string is read-only when every statement in it is.
//
// Why the READ WRITE forms are refused: a read-only session has no use for them, and
// they would switch off the upstream's default_transaction_read_only, the second line
// of defence. Why the two lexing settings: this parser reads the text as UTF-8 with
// standard_conforming_strings on; with either changed, the server can see the end of a
// string literal where this parser does not, and run what the parser took for text
// (so the session must hold both from the startup packet on, for every policy).
// What the text cannot show: functions behind views, operators, casts, triggers and
// rules, and an overload of an allowed name that someone created in a schema on the
// search path. The policy is a guardrail in front of the database's own privileges;
// run read-only sessions with default_transaction_read_only = on upstream as well.
bool is_read_only(const Statement& s, const FunctionAllowlist& allow);

// Why s is not read-only under allow ("calls nextval", "modifies rows"), or empty when
// it is; for the client's error message and the audit record.
std::string read_only_violation(const Statement& s, const FunctionAllowlist& allow);

// The text with literals replaced by $1, $2, ... (pg_query_normalize), for audit.
Result<std::string> normalize(std::string_view sql);
// libpg_query's fingerprint as 16 hex digits: the same for statements that differ only
// in literals, comments and whitespace.
Result<std::string> fingerprint(std::string_view sql);

// Classifications by exact statement text, so a loop of the same statements parses each
// distinct text once. Least recently used entries go first when either bound is hit.
// One per worker; not thread-safe.
class ClassifyCache {
public:
    using Value = std::shared_ptr<const Classified>;

    explicit ClassifyCache(std::size_t max_entries = 1024, std::size_t max_bytes = 1u << 20);

    // classify_readings(sql), from the cache when it has sql. Parse errors are cached too.
    Value get(std::string_view sql);

    std::size_t size() const { return map_.size(); }
    std::size_t bytes() const { return bytes_; }
    std::uint64_t hits() const { return hits_; }
    std::uint64_t misses() const { return misses_; }
    std::uint64_t key_hits() const { return key_hits_; }  // of hits(): by literal_key

private:
    struct Entry {
        std::string text;  // the exact text, or its literal_key when by_key
        Value value;
        std::size_t cost;
        bool by_key = false;  // stands for every text with this literal_key
    };
    void evict_until(std::size_t entries, std::size_t bytes);

    std::size_t max_entries_;
    std::size_t max_bytes_;
    std::list<Entry> lru_;  // most recently used first
    std::unordered_map<std::string_view, std::list<Entry>::iterator> map_;  // keys view lru_
    std::size_t bytes_ = 0;
    std::uint64_t hits_ = 0;
    std::uint64_t misses_ = 0;
    std::uint64_t key_hits_ = 0;
};

} // namespace pgw::policy
