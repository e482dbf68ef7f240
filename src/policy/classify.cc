// Statement classification on libpg_query's protobuf parse tree (walked as protobuf-c
// structs), the read-only rules, the function allowlist, normalize/fingerprint, the cache.
#include "policy/classify.hh"

#include "policy/deep_stack.hh"

#include <pg_query.h>
#include <pg_query/pg_query.pb-c.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <functional>
#include <utility>

// libpg_query's copy of the server's setting: a per-thread global of its scanner
// (exported by libpg_query 15; see classify_readings).
extern "C" __thread bool standard_conforming_strings;

namespace pgw::policy {
namespace {

// ---- kinds -----------------------------------------------------------------------

struct KindInfo {
    Kind kind;
    std::string_view name;
};

// Order matches the enum; the static_assert below and a unit test keep it that way.
constexpr std::array kKinds = {
    KindInfo{Kind::Select, "select"},
    KindInfo{Kind::SelectForUpdate, "select_for_update"},
    KindInfo{Kind::SelectForShare, "select_for_share"},
    KindInfo{Kind::SelectInto, "select_into"},
    KindInfo{Kind::Insert, "insert"},
    KindInfo{Kind::Update, "update"},
    KindInfo{Kind::Delete, "delete"},
    KindInfo{Kind::Merge, "merge"},
    KindInfo{Kind::CreateTableAs, "create_table_as"},
    KindInfo{Kind::Ddl, "ddl"},
    KindInfo{Kind::Truncate, "truncate"},
    KindInfo{Kind::Vacuum, "vacuum"},
    KindInfo{Kind::Analyze, "analyze"},
    KindInfo{Kind::Reindex, "reindex"},
    KindInfo{Kind::Cluster, "cluster"},
    KindInfo{Kind::CopyTo, "copy_to"},
    KindInfo{Kind::CopyFrom, "copy_from"},
    KindInfo{Kind::Call, "call"},
    KindInfo{Kind::Do, "do"},
    KindInfo{Kind::AlterSystem, "alter_system"},
    KindInfo{Kind::SetRole, "set_role"},
    KindInfo{Kind::SetSessionAuthorization, "set_session_authorization"},
    KindInfo{Kind::Set, "set"},
    KindInfo{Kind::Reset, "reset"},
    KindInfo{Kind::Show, "show"},
    KindInfo{Kind::Lock, "lock"},
    KindInfo{Kind::Grant, "grant"},
    KindInfo{Kind::Revoke, "revoke"},
    KindInfo{Kind::Transaction, "transaction"},
    KindInfo{Kind::Prepare, "prepare"},
    KindInfo{Kind::Execute, "execute"},
    KindInfo{Kind::Deallocate, "deallocate"},
    KindInfo{Kind::Declare, "declare"},
    KindInfo{Kind::Fetch, "fetch"},
    KindInfo{Kind::Close, "close"},
    KindInfo{Kind::Explain, "explain"},
    KindInfo{Kind::ExplainAnalyze, "explain_analyze"},
    KindInfo{Kind::Listen, "listen"},
    KindInfo{Kind::Notify, "notify"},
    KindInfo{Kind::Unlisten, "unlisten"},
    KindInfo{Kind::Discard, "discard"},
    KindInfo{Kind::Checkpoint, "checkpoint"},
    KindInfo{Kind::Other, "other"},
};
static_assert(kKinds.size() == std::size_t(Kind::Other) + 1, "a kind without a name");
static_assert(kKinds.size() <= 64, "Statement::kinds is a 64-bit mask");

constexpr std::array<Kind, kKinds.size()> make_all_kinds()
{
    std::array<Kind, kKinds.size()> out{};
    for (std::size_t i = 0; i < kKinds.size(); ++i)
        out[i] = kKinds[i].kind;
    return out;
}
constexpr std::array kAllKinds = make_all_kinds();

std::uint64_t bit(Kind k) { return std::uint64_t(1) << unsigned(k); }

// ---- why a statement is never read-only (Statement::not_read_only) ------------------

constexpr std::string_view kModifiesRows = "modifies rows";
constexpr std::string_view kModifyingWith = "has a data-modifying statement in WITH";
constexpr std::string_view kRowLocks = "locks rows (FOR UPDATE/SHARE)";
constexpr std::string_view kSelectInto = "creates a table (SELECT INTO)";
constexpr std::string_view kCreatesTable = "creates a table";
constexpr std::string_view kDdl = "changes the schema or other database objects";
constexpr std::string_view kTruncate = "empties tables";
constexpr std::string_view kMaintenance = "is a maintenance command";
constexpr std::string_view kCopyFrom = "loads rows (COPY FROM)";
constexpr std::string_view kCopyFile = "copies to a server file or program";
constexpr std::string_view kCall = "calls a procedure";
constexpr std::string_view kDo = "runs an anonymous code block (DO)";
constexpr std::string_view kAlterSystem = "changes the server configuration";
constexpr std::string_view kSetRole = "changes the current role";
constexpr std::string_view kSessionAuth = "changes the session user";
constexpr std::string_view kReadWrite = "switches off read-only transactions";
constexpr std::string_view kLexing = "changes how the server reads statement text";
constexpr std::string_view kLock = "locks tables";
constexpr std::string_view kPrivileges = "changes privileges";
constexpr std::string_view kTwoPhase = "is a two-phase commit command";
constexpr std::string_view kExecute = "executes a prepared statement whose text is not known";
constexpr std::string_view kNotify = "notifies other sessions";
constexpr std::string_view kDiscardAll = "resets the current role (DISCARD ALL)";
constexpr std::string_view kOther = "is not a statement a read-only session may run";

// ---- owners of libpg_query's results (every pg_query_* result is freed exactly once) -

template <typename T, void (*Free)(T)>
class PgQueryResult {
public:
    explicit PgQueryResult(T r) : r_(r) {}
    PgQueryResult(const PgQueryResult&) = delete;
    PgQueryResult& operator=(const PgQueryResult&) = delete;
    ~PgQueryResult() { Free(r_); }
    const T& operator*() const { return r_; }
    const T* operator->() const { return &r_; }

private:
    T r_;
};

using ProtobufParse = PgQueryResult<PgQueryProtobufParseResult, pg_query_free_protobuf_parse_result>;
using JsonParse = PgQueryResult<PgQueryParseResult, pg_query_free_parse_result>;
using Normalized = PgQueryResult<PgQueryNormalizeResult, pg_query_free_normalize_result>;
using Fingerprinted = PgQueryResult<PgQueryFingerprintResult, pg_query_free_fingerprint_result>;

struct ParseTreeDeleter {
    void operator()(PgQuery__ParseResult* p) const { pg_query__parse_result__free_unpacked(p, nullptr); }
};
using ParseTree = std::unique_ptr<PgQuery__ParseResult, ParseTreeDeleter>;

const char* str_or_empty(const char* s) { return s ? s : ""; }

// "syntax error at or near "FROM" (at character 8)", in PostgreSQL's wording.
Error pg_error(const PgQueryError* e)
{
    std::string msg = e->message ? e->message : "unknown parser error";
    if (e->cursorpos > 0)
        msg += " (at character " + std::to_string(e->cursorpos) + ")";
    return Error{msg};
}

// ---- running libpg_query on a stack big enough for the text -------------------------

// Measured with libpg_query 15-4.0.0 (Debian 12): parsing to protobuf, unpacking and
// freeing the tree take up to ~1 KiB of stack per byte of text (1+1+1+... nests one
// level per two bytes, ~2 KiB a level, nearly all of it in protobuf-c's recursive
// unpack). Nothing in libpg_query checks the depth: 30 kB of such text overflows an
// 8 MiB stack, and a worker would die of SIGSEGV. Short texts, the usual case, run on
// the caller's stack; longer ones on one sized for them.
constexpr std::size_t kInlineTextBytes = 2048;
constexpr std::size_t kStackPerTextByte = 1536;
constexpr std::size_t kStackBase = 256 * 1024;

Status check_text(std::string_view sql)
{
    if (sql.find('\0') != std::string_view::npos)
        return Error{"statement text contains a NUL byte"};
    if (sql.size() > kMaxClassifyBytes)
        return Error{"statement of " + std::to_string(sql.size()) +
                     " bytes is longer than the classifier's limit of " +
                     std::to_string(kMaxClassifyBytes) + " bytes"};
    return ok_status();
}

// libpg_query's protobuf output is quadratic in the depth of the tree (each level
// measures the size of everything below it again): 1+1+...+1 with 64k terms (128 kB)
// takes seconds, with 500k terms minutes. Its JSON output costs a fraction of that, so
// for a long text we first measure the depth on the JSON (counting brackets, nothing
// more; the tree itself is only ever walked as protobuf) and refuse a tree much deeper
// than PostgreSQL itself takes: with the default max_stack_depth (2 MB) the server
// gives up on 1+1+... before 5,000 terms (JSON depth 10,011) and on UNION ALL chains
// before 20,000 branches (JSON depth 20,011).
constexpr std::size_t kGaugeTextBytes = 16 * 1024;
constexpr std::size_t kMaxJsonDepth = 50000;

Status check_nesting(const std::string& text)
{
    JsonParse parsed(pg_query_parse(text.c_str()));
    if (parsed->error)
        return pg_error(parsed->error);
    std::size_t depth = 0;
    bool in_string = false;
    for (const char* p = str_or_empty(parsed->parse_tree); *p; ++p) {
        char c = *p;
        if (in_string) {
            if (c == '\\' && p[1])
                ++p;
            else if (c == '"')
                in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '{' || c == '[') {
            if (++depth > kMaxJsonDepth)
                return Error{"statement nests too deeply to classify (parse tree deeper than " +
                             std::to_string(kMaxJsonDepth) + " levels)"};
        } else if ((c == '}' || c == ']') && depth > 0) {
            --depth;
        }
    }
    return ok_status();
}

Status with_parser_stack(std::size_t text_bytes, const std::function<void()>& fn)
{
    if (text_bytes <= kInlineTextBytes) {
        fn();
        return ok_status();
    }
    return run_on_deep_stack(kStackBase + text_bytes * kStackPerTextByte, fn);
}

// ---- names ---------------------------------------------------------------------------

bool is_plain_identifier(std::string_view s)
{
    if (s.empty() || !((s[0] >= 'a' && s[0] <= 'z') || s[0] == '_'))
        return false;
    return std::all_of(s.begin(), s.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '$';
    });
}

// One name part as it must be written to mean exactly this identifier.
void append_part(std::string& out, std::string_view part)
{
    if (is_plain_identifier(part)) {
        out += part;
        return;
    }
    out += '"';
    for (char c : part) {
        if (c == '"')
            out += '"';
        out += c;
    }
    out += '"';
}

std::string ascii_lower(std::string_view s)
{
    std::string out(s);
    for (char& c : out)
        if (c >= 'A' && c <= 'Z')
            c = char(c - 'A' + 'a');
    return out;
}

// A qualified name from the parser's list of String nodes.
std::string name_from_list(std::size_t n, PgQuery__Node* const* items)
{
    std::string out;
    for (std::size_t i = 0; i < n; ++i) {
        if (i > 0)
            out += '.';
        const PgQuery__Node* item = items[i];
        if (item && item->node_case == PG_QUERY__NODE__NODE_STRING && item->string)
            append_part(out, str_or_empty(item->string->sval));
        else
            out += "\"?\"";  // not produced by the grammar; keeps the name unmatchable
    }
    return out;
}

// PostgreSQL's parse_bool(): true/false/yes/no/on/off (and unambiguous prefixes), 1/0.
std::optional<bool> parse_bool(std::string_view v)
{
    std::string s = ascii_lower(v);
    auto prefix_of = [&](std::string_view word, std::size_t min) {
        return s.size() >= min && s.size() <= word.size() && word.substr(0, s.size()) == s;
    };
    if (prefix_of("true", 1) || prefix_of("yes", 1) || s == "on" || s == "1")
        return true;
    if (prefix_of("false", 1) || prefix_of("no", 1) || prefix_of("off", 2) || s == "0")
        return false;
    return std::nullopt;
}

// The boolean a constant stands for, if it clearly is one.
std::optional<bool> node_bool(const PgQuery__Node* n)
{
    if (!n)
        return std::nullopt;
    switch (n->node_case) {
    case PG_QUERY__NODE__NODE_INTEGER:
        return n->integer->ival != 0;
    case PG_QUERY__NODE__NODE_BOOLEAN:
        return bool(n->boolean->boolval);
    case PG_QUERY__NODE__NODE_STRING:
        return parse_bool(str_or_empty(n->string->sval));
    case PG_QUERY__NODE__NODE_A_CONST: {
        const PgQuery__AConst* c = n->a_const;
        if (c->isnull)
            return std::nullopt;
        if (c->val_case == PG_QUERY__A__CONST__VAL_IVAL)
            return c->ival->ival != 0;
        if (c->val_case == PG_QUERY__A__CONST__VAL_BOOLVAL)
            return bool(c->boolval->boolval);
        if (c->val_case == PG_QUERY__A__CONST__VAL_SVAL)
            return parse_bool(str_or_empty(c->sval->sval));
        return std::nullopt;
    }
    default:
        return std::nullopt;
    }
}

// Client-only encodings whose second byte can be 0x5C, a backslash: the server
// converts the text to its own encoding before lexing, this parser sees the raw bytes,
// so in E'...' strings they disagree about where the string ends. Names are compared
// the way PostgreSQL does (lower case, letters and digits only).
bool backslash_unsafe_encoding(const PgQuery__Node* value)
{
    if (!value || value->node_case != PG_QUERY__NODE__NODE_A_CONST ||
        value->a_const->val_case != PG_QUERY__A__CONST__VAL_SVAL)
        return false;
    std::string name;
    for (char c : ascii_lower(str_or_empty(value->a_const->sval->sval)))
        if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))
            name += c;
    static constexpr std::string_view kUnsafe[] = {
        "sjis", "shiftjis", "shiftjis2004", "mskanji", "win932", "windows932", "big5",
        "win950", "windows950", "gbk", "win936", "windows936", "cp936", "gb18030", "johab",
    };
    return std::find(std::begin(kUnsafe), std::end(kUnsafe), name) != std::end(kUnsafe);
}

// A DefElem option given without a value (EXPLAIN (ANALYZE)) means true.
std::optional<bool> defelem_bool(const PgQuery__DefElem* d)
{
    return d->arg ? node_bool(d->arg) : std::optional<bool>(true);
}

const PgQuery__DefElem* as_defelem(const PgQuery__Node* n)
{
    return n && n->node_case == PG_QUERY__NODE__NODE_DEF_ELEM ? n->def_elem : nullptr;
}

// Does this option list ask for transaction_read_only = anything but a clear true?
// (BEGIN READ WRITE, SET TRANSACTION READ WRITE, SET SESSION CHARACTERISTICS ...)
bool asks_read_write(std::size_t n, PgQuery__Node* const* options)
{
    for (std::size_t i = 0; i < n; ++i) {
        const PgQuery__DefElem* d = as_defelem(options[i]);
        if (d && ascii_lower(str_or_empty(d->defname)) == "transaction_read_only" &&
            defelem_bool(d) != true)
            return true;
    }
    return false;
}

// ---- the generic walk ----------------------------------------------------------------

// What a walk over every message below a statement finds. The walk follows protobuf-c's
// descriptors rather than a hand-written list of node types, so no node type (today's
// or a future libpg_query's) can hide a function call from it.
struct Facts {
    std::vector<std::string> functions;
    bool dml = false;         // INSERT/UPDATE/DELETE/MERGE anywhere (the root included)
    bool into = false;        // a SelectStmt with INTO
    bool lock_update = false;
    bool lock_share = false;
    std::uint64_t kinds = 0;  // DML, row locks, SELECT INTO
    std::vector<Relation> relations;
    std::vector<std::string> ctes;  // names WITH defines: not relations
};

// A relation's name as written, in the spelling of Statement::functions.
std::string relation_name(const PgQuery__RangeVar* r)
{
    std::string out;
    for (const char* part : {r->catalogname, r->schemaname}) {
        if (part && *part) {
            append_part(out, part);
            out += '.';
        }
    }
    append_part(out, str_or_empty(r->relname));
    return out;
}

void add_relation(Facts& f, std::string name, Access access)
{
    Relation r{std::move(name), access};
    if (std::find(f.relations.begin(), f.relations.end(), r) == f.relations.end())
        f.relations.push_back(std::move(r));
}

// DROP names its objects as lists of strings, not RangeVars.
bool drops_relations(PgQuery__ObjectType t)
{
    return t == PG_QUERY__OBJECT_TYPE__OBJECT_TABLE || t == PG_QUERY__OBJECT_TYPE__OBJECT_VIEW ||
           t == PG_QUERY__OBJECT_TYPE__OBJECT_MATVIEW || t == PG_QUERY__OBJECT_TYPE__OBJECT_SEQUENCE ||
           t == PG_QUERY__OBJECT_TYPE__OBJECT_FOREIGN_TABLE;
}

// The access a child field of m has to the relations below it: the targets of DML,
// COPY FROM and TRUNCATE write, what SELECT INTO / CREATE TABLE AS / CREATE VIEW create
// is ddl, and any query (a SELECT anywhere, the source of an INSERT, a view's body) reads.
Access child_access(const ProtobufCMessage* m, const ProtobufCFieldDescriptor& fd, Access inherited)
{
    const ProtobufCMessageDescriptor* d = m->descriptor;
    auto is = [&](const char* name) { return std::strcmp(fd.name, name) == 0; };
    if (d == &pg_query__select_stmt__descriptor)
        return is("into_clause") ? Access::Ddl : Access::Read;
    if (d == &pg_query__insert_stmt__descriptor || d == &pg_query__update_stmt__descriptor ||
        d == &pg_query__delete_stmt__descriptor || d == &pg_query__merge_stmt__descriptor)
        return is("relation") ? Access::Write : Access::Read;
    if (d == &pg_query__copy_stmt__descriptor)
        return is("relation") && reinterpret_cast<const PgQuery__CopyStmt*>(m)->is_from ? Access::Write
                                                                                        : Access::Read;
    if (d == &pg_query__truncate_stmt__descriptor)
        return Access::Write;
    if (d == &pg_query__create_table_as_stmt__descriptor)
        return is("into") ? Access::Ddl : Access::Read;
    if (d == &pg_query__view_stmt__descriptor)
        return is("view") ? Access::Ddl : Access::Read;
    return inherited;
}

template <typename T>
T load(const ProtobufCMessage* m, unsigned offset)
{
    T v;
    std::memcpy(&v, reinterpret_cast<const char*>(m) + offset, sizeof v);
    return v;
}

void note(const ProtobufCMessage* m, Access access, Facts& f, std::unordered_set<std::string>& seen)
{
    const ProtobufCMessageDescriptor* d = m->descriptor;
    if (d == &pg_query__range_var__descriptor) {
        add_relation(f, relation_name(reinterpret_cast<const PgQuery__RangeVar*>(m)), access);
    } else if (d == &pg_query__common_table_expr__descriptor) {
        std::string name;
        append_part(name, str_or_empty(reinterpret_cast<const PgQuery__CommonTableExpr*>(m)->ctename));
        f.ctes.push_back(std::move(name));
    } else if (d == &pg_query__drop_stmt__descriptor) {
        auto* drop = reinterpret_cast<const PgQuery__DropStmt*>(m);
        if (drops_relations(drop->remove_type))
            for (std::size_t i = 0; i < drop->n_objects; ++i)
                if (const PgQuery__Node* o = drop->objects[i]; o && o->node_case == PG_QUERY__NODE__NODE_LIST)
                    add_relation(f, name_from_list(o->list->n_items, o->list->items), Access::Ddl);
    } else if (d == &pg_query__func_call__descriptor) {
        auto* call = reinterpret_cast<const PgQuery__FuncCall*>(m);
        std::string name = name_from_list(call->n_funcname, call->funcname);
        if (seen.insert(name).second)
            f.functions.push_back(std::move(name));
    } else if (d == &pg_query__select_stmt__descriptor) {
        if (reinterpret_cast<const PgQuery__SelectStmt*>(m)->into_clause) {
            f.into = true;
            f.kinds |= bit(Kind::SelectInto);
        }
    } else if (d == &pg_query__locking_clause__descriptor) {
        switch (reinterpret_cast<const PgQuery__LockingClause*>(m)->strength) {
        case PG_QUERY__LOCK_CLAUSE_STRENGTH__LCS_FORUPDATE:
        case PG_QUERY__LOCK_CLAUSE_STRENGTH__LCS_FORNOKEYUPDATE:
            f.lock_update = true;
            f.kinds |= bit(Kind::SelectForUpdate);
            break;
        default:  // the share strengths, and anything unexpected counts as a lock too
            f.lock_share = true;
            f.kinds |= bit(Kind::SelectForShare);
            break;
        }
    } else {
        Kind k = Kind::Other;
        if (d == &pg_query__insert_stmt__descriptor)
            k = Kind::Insert;
        else if (d == &pg_query__update_stmt__descriptor)
            k = Kind::Update;
        else if (d == &pg_query__delete_stmt__descriptor)
            k = Kind::Delete;
        else if (d == &pg_query__merge_stmt__descriptor)
            k = Kind::Merge;
        if (k != Kind::Other) {
            f.dml = true;
            f.kinds |= bit(k);
        }
    }
}

// Depth-first, pre-order (so functions come in the order they are written), with an
// explicit stack: the tree can be as deep as the text is long.
// `access` is what the statement does to the relations it names outside any query.
Facts walk(const ProtobufCMessage* root, Access access)
{
    Facts f;
    std::unordered_set<std::string> seen;
    std::vector<std::pair<const ProtobufCMessage*, Access>> todo{{root, access}};
    while (!todo.empty()) {
        auto [m, here] = todo.back();
        todo.pop_back();
        note(m, here, f, seen);
        const ProtobufCMessageDescriptor* d = m->descriptor;
        // Children go on the stack last field first, so the first field comes off first.
        for (unsigned i = d->n_fields; i-- > 0;) {
            const ProtobufCFieldDescriptor& fd = d->fields[i];
            if (fd.type != PROTOBUF_C_TYPE_MESSAGE)
                continue;
            const Access below = child_access(m, fd, here);
            if (fd.label == PROTOBUF_C_LABEL_REPEATED) {
                auto n = load<std::size_t>(m, fd.quantifier_offset);
                auto items = load<ProtobufCMessage* const*>(m, fd.offset);
                for (std::size_t j = n; j-- > 0;)
                    if (items[j])
                        todo.emplace_back(items[j], below);
                continue;
            }
            // Members of a oneof share storage: only the one named by the case is real.
            if ((fd.flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
                load<std::uint32_t>(m, fd.quantifier_offset) != fd.id)
                continue;
            if (auto sub = load<const ProtobufCMessage*>(m, fd.offset))
                todo.emplace_back(sub, below);
        }
    }
    // A CTE's name read in FROM is no relation (a table of the same name that the CTE
    // hides in some scope and not in another is lost: rare enough).
    if (!f.ctes.empty())
        std::erase_if(f.relations, [&](const Relation& r) {
            return std::find(f.ctes.begin(), f.ctes.end(), r.name) != f.ctes.end();
        });
    return f;
}

// ---- one statement -------------------------------------------------------------------

Statement classify_node(const PgQuery__Node* node);

void set_writes(Statement& s, std::string_view why)
{
    s.writes = true;
    s.not_read_only = why;
}

// PREPARE, EXPLAIN, DECLARE and COPY (query) take the carried statement's verdict.
// *wrapped tells classify_node that s.inner is set.
Statement carried(const PgQuery__Node* inner, Statement& s, bool* wrapped)
{
    Statement in = classify_node(inner);
    s.inner = in.kind;
    s.audit_class = in.audit_class;
    s.kinds |= in.kinds;
    *wrapped = true;
    return in;
}

void classify_set(const PgQuery__VariableSetStmt* v, Statement& s)
{
    bool reset = v->kind == PG_QUERY__VARIABLE_SET_KIND__VAR_RESET ||
                 v->kind == PG_QUERY__VARIABLE_SET_KIND__VAR_RESET_ALL;
    // GUC names are case-insensitive: SET "Role" = ... sets the role.
    s.setting = ascii_lower(str_or_empty(v->name));
    if (v->kind == PG_QUERY__VARIABLE_SET_KIND__VAR_RESET_ALL)
        s.setting = "all";
    s.kind = reset ? Kind::Reset : Kind::Set;
    if (s.setting == "role") {
        s.kind = Kind::SetRole;
        s.not_read_only = kSetRole;
    } else if (s.setting == "session_authorization") {
        s.kind = Kind::SetSessionAuthorization;
        s.not_read_only = kSessionAuth;
    } else if (s.setting == "transaction_read_only" ||
               s.setting == "default_transaction_read_only") {
        // Only an explicit true may pass: RESET, DEFAULT, FROM CURRENT or false could
        // all end up read-write.
        bool on = v->kind == PG_QUERY__VARIABLE_SET_KIND__VAR_SET_VALUE && v->n_args == 1 &&
                  node_bool(v->args[0]) == true;
        if (!on)
            s.not_read_only = kReadWrite;
    } else if (s.setting == "transaction" || s.setting == "session characteristics") {
        if (asks_read_write(v->n_args, v->args))
            s.not_read_only = kReadWrite;
    } else if (s.setting == "standard_conforming_strings") {
        // With it off the server takes \' inside '...' as a quote, this parser does not:
        // SELECT 'a\' , $$' ; DELETE ... --$$ is one SELECT here and a DELETE there.
        bool on = v->kind == PG_QUERY__VARIABLE_SET_KIND__VAR_SET_VALUE && v->n_args == 1 &&
                  node_bool(v->args[0]) == true;
        if (!on)
            s.not_read_only = kLexing;
    } else if (s.setting == "client_encoding" && v->n_args == 1 &&
               backslash_unsafe_encoding(v->args[0])) {
        s.not_read_only = kLexing;
    }
}

void classify_transaction(const PgQuery__TransactionStmt* t, Statement& s)
{
    s.kind = Kind::Transaction;
    switch (t->kind) {
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_BEGIN:
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_START:
        if (asks_read_write(t->n_options, t->options))
            s.not_read_only = kReadWrite;
        break;
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_PREPARE:
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_COMMIT_PREPARED:
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_ROLLBACK_PREPARED:
        // COMMIT PREPARED makes another session's writes permanent.
        set_writes(s, kTwoPhase);
        break;
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_COMMIT:
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_ROLLBACK:
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_SAVEPOINT:
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_RELEASE:
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_ROLLBACK_TO:
        break;
    default:
        set_writes(s, kOther);
        break;
    }
}

void classify_copy(const PgQuery__CopyStmt* c, Statement& s, bool* wrapped)
{
    if (c->is_from) {
        s.kind = Kind::CopyFrom;
        set_writes(s, kCopyFrom);
        return;
    }
    s.kind = Kind::CopyTo;
    // An empty file name is STDOUT: the rows go to the client.
    if (c->is_program || (c->filename && *c->filename)) {
        set_writes(s, kCopyFile);
        return;
    }
    if (c->query) {
        Statement in = carried(c->query, s, wrapped);
        s.writes = in.writes;
        s.not_read_only = in.not_read_only;
    }
}

void classify_explain(const PgQuery__ExplainStmt* e, Statement& s, bool* wrapped)
{
    // ANALYZE runs the statement. Anything but a clear "false" counts as ANALYZE: a value
    // we misread then errs on the strict side.
    bool analyze = false;
    for (std::size_t i = 0; i < e->n_options; ++i) {
        const PgQuery__DefElem* d = as_defelem(e->options[i]);
        if (d && ascii_lower(str_or_empty(d->defname)) == "analyze" && defelem_bool(d) != false)
            analyze = true;
    }
    Statement in = carried(e->query, s, wrapped);
    if (analyze) {
        s.kind = Kind::ExplainAnalyze;
        s.writes = in.writes;
        s.not_read_only = in.not_read_only;
    } else {
        s.kind = Kind::Explain;
    }
}

void classify_select(const Facts& f, Statement& s)
{
    s.kind = f.into              ? Kind::SelectInto
             : f.lock_update     ? Kind::SelectForUpdate
             : f.lock_share      ? Kind::SelectForShare
                                 : Kind::Select;
    if (f.into)
        set_writes(s, kSelectInto);
    else if (f.dml)  // a SELECT's only place for one is WITH
        set_writes(s, kModifyingWith);
    else if (f.lock_update || f.lock_share)
        set_writes(s, kRowLocks);
}

bool is_ddl(PgQuery__Node__NodeCase c)
{
    switch (c) {
    case PG_QUERY__NODE__NODE_ALTER_TABLE_STMT:
    case PG_QUERY__NODE__NODE_ALTER_DOMAIN_STMT:
    case PG_QUERY__NODE__NODE_CREATE_STMT:
    case PG_QUERY__NODE__NODE_DEFINE_STMT:
    case PG_QUERY__NODE__NODE_DROP_STMT:
    case PG_QUERY__NODE__NODE_COMMENT_STMT:
    case PG_QUERY__NODE__NODE_INDEX_STMT:
    case PG_QUERY__NODE__NODE_CREATE_FUNCTION_STMT:
    case PG_QUERY__NODE__NODE_ALTER_FUNCTION_STMT:
    case PG_QUERY__NODE__NODE_RENAME_STMT:
    case PG_QUERY__NODE__NODE_RULE_STMT:
    case PG_QUERY__NODE__NODE_VIEW_STMT:
    case PG_QUERY__NODE__NODE_CREATE_DOMAIN_STMT:
    case PG_QUERY__NODE__NODE_CREATEDB_STMT:
    case PG_QUERY__NODE__NODE_DROPDB_STMT:
    case PG_QUERY__NODE__NODE_CREATE_SEQ_STMT:
    case PG_QUERY__NODE__NODE_ALTER_SEQ_STMT:
    case PG_QUERY__NODE__NODE_CREATE_TRIG_STMT:
    case PG_QUERY__NODE__NODE_CREATE_PLANG_STMT:
    case PG_QUERY__NODE__NODE_CREATE_ROLE_STMT:
    case PG_QUERY__NODE__NODE_ALTER_ROLE_STMT:
    case PG_QUERY__NODE__NODE_DROP_ROLE_STMT:
    case PG_QUERY__NODE__NODE_CREATE_SCHEMA_STMT:
    case PG_QUERY__NODE__NODE_ALTER_DATABASE_STMT:
    case PG_QUERY__NODE__NODE_ALTER_DATABASE_REFRESH_COLL_STMT:
    case PG_QUERY__NODE__NODE_ALTER_DATABASE_SET_STMT:
    case PG_QUERY__NODE__NODE_ALTER_ROLE_SET_STMT:
    case PG_QUERY__NODE__NODE_CREATE_CONVERSION_STMT:
    case PG_QUERY__NODE__NODE_CREATE_CAST_STMT:
    case PG_QUERY__NODE__NODE_CREATE_OP_CLASS_STMT:
    case PG_QUERY__NODE__NODE_CREATE_OP_FAMILY_STMT:
    case PG_QUERY__NODE__NODE_ALTER_OP_FAMILY_STMT:
    case PG_QUERY__NODE__NODE_CREATE_TABLE_SPACE_STMT:
    case PG_QUERY__NODE__NODE_DROP_TABLE_SPACE_STMT:
    case PG_QUERY__NODE__NODE_ALTER_OBJECT_DEPENDS_STMT:
    case PG_QUERY__NODE__NODE_ALTER_OBJECT_SCHEMA_STMT:
    case PG_QUERY__NODE__NODE_ALTER_OWNER_STMT:
    case PG_QUERY__NODE__NODE_ALTER_OPERATOR_STMT:
    case PG_QUERY__NODE__NODE_ALTER_TYPE_STMT:
    case PG_QUERY__NODE__NODE_DROP_OWNED_STMT:
    case PG_QUERY__NODE__NODE_REASSIGN_OWNED_STMT:
    case PG_QUERY__NODE__NODE_COMPOSITE_TYPE_STMT:
    case PG_QUERY__NODE__NODE_CREATE_ENUM_STMT:
    case PG_QUERY__NODE__NODE_CREATE_RANGE_STMT:
    case PG_QUERY__NODE__NODE_ALTER_ENUM_STMT:
    case PG_QUERY__NODE__NODE_ALTER_TSDICTIONARY_STMT:
    case PG_QUERY__NODE__NODE_ALTER_TSCONFIGURATION_STMT:
    case PG_QUERY__NODE__NODE_CREATE_FDW_STMT:
    case PG_QUERY__NODE__NODE_ALTER_FDW_STMT:
    case PG_QUERY__NODE__NODE_CREATE_FOREIGN_SERVER_STMT:
    case PG_QUERY__NODE__NODE_ALTER_FOREIGN_SERVER_STMT:
    case PG_QUERY__NODE__NODE_CREATE_USER_MAPPING_STMT:
    case PG_QUERY__NODE__NODE_ALTER_USER_MAPPING_STMT:
    case PG_QUERY__NODE__NODE_DROP_USER_MAPPING_STMT:
    case PG_QUERY__NODE__NODE_ALTER_TABLE_SPACE_OPTIONS_STMT:
    case PG_QUERY__NODE__NODE_ALTER_TABLE_MOVE_ALL_STMT:
    case PG_QUERY__NODE__NODE_SEC_LABEL_STMT:
    case PG_QUERY__NODE__NODE_CREATE_FOREIGN_TABLE_STMT:
    case PG_QUERY__NODE__NODE_IMPORT_FOREIGN_SCHEMA_STMT:
    case PG_QUERY__NODE__NODE_CREATE_EXTENSION_STMT:
    case PG_QUERY__NODE__NODE_ALTER_EXTENSION_STMT:
    case PG_QUERY__NODE__NODE_ALTER_EXTENSION_CONTENTS_STMT:
    case PG_QUERY__NODE__NODE_CREATE_EVENT_TRIG_STMT:
    case PG_QUERY__NODE__NODE_ALTER_EVENT_TRIG_STMT:
    case PG_QUERY__NODE__NODE_REPLICA_IDENTITY_STMT:
    case PG_QUERY__NODE__NODE_CREATE_POLICY_STMT:
    case PG_QUERY__NODE__NODE_ALTER_POLICY_STMT:
    case PG_QUERY__NODE__NODE_CREATE_TRANSFORM_STMT:
    case PG_QUERY__NODE__NODE_CREATE_AM_STMT:
    case PG_QUERY__NODE__NODE_CREATE_PUBLICATION_STMT:
    case PG_QUERY__NODE__NODE_ALTER_PUBLICATION_STMT:
    case PG_QUERY__NODE__NODE_CREATE_SUBSCRIPTION_STMT:
    case PG_QUERY__NODE__NODE_ALTER_SUBSCRIPTION_STMT:
    case PG_QUERY__NODE__NODE_DROP_SUBSCRIPTION_STMT:
    case PG_QUERY__NODE__NODE_CREATE_STATS_STMT:
    case PG_QUERY__NODE__NODE_ALTER_COLLATION_STMT:
    case PG_QUERY__NODE__NODE_ALTER_STATS_STMT:
        return true;
    default:
        return false;
    }
}

// ---- what the audit record says of a statement ---------------------------------------

bool is_role_statement(PgQuery__Node__NodeCase c)
{
    return c == PG_QUERY__NODE__NODE_CREATE_ROLE_STMT || c == PG_QUERY__NODE__NODE_ALTER_ROLE_STMT ||
           c == PG_QUERY__NODE__NODE_ALTER_ROLE_SET_STMT || c == PG_QUERY__NODE__NODE_DROP_ROLE_STMT;
}

// What a statement does to the relations it names outside any query (see child_access).
Access root_access(PgQuery__Node__NodeCase c)
{
    switch (c) {
    case PG_QUERY__NODE__NODE_GRANT_STMT:
    case PG_QUERY__NODE__NODE_VACUUM_STMT:
    case PG_QUERY__NODE__NODE_REINDEX_STMT:
    case PG_QUERY__NODE__NODE_CLUSTER_STMT:
    case PG_QUERY__NODE__NODE_REFRESH_MAT_VIEW_STMT:
        return Access::Ddl;
    default:
        return is_ddl(c) ? Access::Ddl : Access::Read;
    }
}

// An ObjectType as the command tag spells it: OBJECT_FOREIGN_TABLE -> "FOREIGN TABLE".
std::string object_words(int type)
{
    static constexpr std::pair<std::string_view, std::string_view> kSpelled[] = {
        {"MATVIEW", "MATERIALIZED VIEW"},
        {"TSCONFIGURATION", "TEXT SEARCH CONFIGURATION"},
        {"TSDICTIONARY", "TEXT SEARCH DICTIONARY"},
        {"TSPARSER", "TEXT SEARCH PARSER"},
        {"TSTEMPLATE", "TEXT SEARCH TEMPLATE"},
        {"FDW", "FOREIGN DATA WRAPPER"},
        {"FOREIGN_SERVER", "SERVER"},
        {"LARGEOBJECT", "LARGE OBJECT"},
        {"OPCLASS", "OPERATOR CLASS"},
        {"OPFAMILY", "OPERATOR FAMILY"},
        {"STATISTIC_EXT", "STATISTICS"},
        {"COLUMN", "TABLE"},
        {"TABCONSTRAINT", "TABLE"},
        {"DOMCONSTRAINT", "DOMAIN"},
    };
    const ProtobufCEnumValue* v = protobuf_c_enum_descriptor_get_value(&pg_query__object_type__descriptor, type);
    std::string_view name = v && v->name ? v->name : "OBJECT_OBJECT";
    if (name.starts_with("OBJECT_"))
        name.remove_prefix(7);
    for (const auto& [raw, spelled] : kSpelled)
        if (name == raw)
            return std::string(spelled);
    std::string out(name);
    std::replace(out.begin(), out.end(), '_', ' ');
    return out;
}

// A parse node's name in command tag style: CreatePolicyStmt -> "CREATE POLICY".
std::string node_words(const ProtobufCMessage* m)
{
    std::string_view name = m->descriptor->short_name;
    if (name.ends_with("Stmt"))
        name.remove_suffix(4);
    std::string out;
    for (std::size_t i = 0; i < name.size(); ++i) {
        char c = name[i];
        if (i > 0 && c >= 'A' && c <= 'Z' && name[i - 1] >= 'a' && name[i - 1] <= 'z')
            out += ' ';
        out += c >= 'a' && c <= 'z' ? char(c - 'a' + 'A') : c;
    }
    return out;
}

std::string transaction_tag(PgQuery__TransactionStmtKind k)
{
    switch (k) {
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_BEGIN:
        return "BEGIN";
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_START:
        return "START TRANSACTION";
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_COMMIT:
        return "COMMIT";
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_SAVEPOINT:
        return "SAVEPOINT";
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_RELEASE:
        return "RELEASE";
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_PREPARE:
        return "PREPARE TRANSACTION";
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_COMMIT_PREPARED:
        return "COMMIT PREPARED";
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_ROLLBACK_PREPARED:
        return "ROLLBACK PREPARED";
    default:  // ROLLBACK, ROLLBACK TO
        return "ROLLBACK";
    }
}

std::string discard_tag(PgQuery__DiscardMode m)
{
    switch (m) {
    case PG_QUERY__DISCARD_MODE__DISCARD_PLANS:
        return "DISCARD PLANS";
    case PG_QUERY__DISCARD_MODE__DISCARD_SEQUENCES:
        return "DISCARD SEQUENCES";
    case PG_QUERY__DISCARD_MODE__DISCARD_TEMP:
        return "DISCARD TEMP";
    default:
        return "DISCARD ALL";
    }
}

// PostgreSQL's CreateCommandTag for the statements the grammar shows it for.
std::string command_tag(const PgQuery__Node* node)
{
    switch (node->node_case) {
    case PG_QUERY__NODE__NODE_SELECT_STMT:
        return node->select_stmt->into_clause ? "SELECT INTO" : "SELECT";
    case PG_QUERY__NODE__NODE_INSERT_STMT:
        return "INSERT";
    case PG_QUERY__NODE__NODE_UPDATE_STMT:
        return "UPDATE";
    case PG_QUERY__NODE__NODE_DELETE_STMT:
        return "DELETE";
    case PG_QUERY__NODE__NODE_MERGE_STMT:
        return "MERGE";
    case PG_QUERY__NODE__NODE_CREATE_STMT:
        return "CREATE TABLE";
    case PG_QUERY__NODE__NODE_CREATE_TABLE_AS_STMT:
        return node->create_table_as_stmt->objtype == PG_QUERY__OBJECT_TYPE__OBJECT_MATVIEW
                   ? "CREATE MATERIALIZED VIEW"
                   : "CREATE TABLE AS";
    case PG_QUERY__NODE__NODE_ALTER_TABLE_STMT:
        return "ALTER " + object_words(node->alter_table_stmt->objtype);
    case PG_QUERY__NODE__NODE_DROP_STMT:
        return "DROP " + object_words(node->drop_stmt->remove_type);
    case PG_QUERY__NODE__NODE_RENAME_STMT:
        return "ALTER " + object_words(node->rename_stmt->rename_type == PG_QUERY__OBJECT_TYPE__OBJECT_COLUMN ||
                                               node->rename_stmt->rename_type ==
                                                   PG_QUERY__OBJECT_TYPE__OBJECT_TABCONSTRAINT
                                           ? node->rename_stmt->relation_type
                                           : node->rename_stmt->rename_type);
    case PG_QUERY__NODE__NODE_ALTER_OBJECT_SCHEMA_STMT:
        return "ALTER " + object_words(node->alter_object_schema_stmt->object_type);
    case PG_QUERY__NODE__NODE_ALTER_OWNER_STMT:
        return "ALTER " + object_words(node->alter_owner_stmt->object_type);
    case PG_QUERY__NODE__NODE_DEFINE_STMT:
        return "CREATE " + object_words(node->define_stmt->kind);
    case PG_QUERY__NODE__NODE_ALTER_FUNCTION_STMT:
        return "ALTER " + object_words(node->alter_function_stmt->objtype);
    case PG_QUERY__NODE__NODE_CREATE_FUNCTION_STMT:
        return node->create_function_stmt->is_procedure ? "CREATE PROCEDURE" : "CREATE FUNCTION";
    case PG_QUERY__NODE__NODE_INDEX_STMT:
        return "CREATE INDEX";
    case PG_QUERY__NODE__NODE_VIEW_STMT:
        return "CREATE VIEW";
    case PG_QUERY__NODE__NODE_CREATE_SEQ_STMT:
        return "CREATE SEQUENCE";
    case PG_QUERY__NODE__NODE_ALTER_SEQ_STMT:
        return "ALTER SEQUENCE";
    case PG_QUERY__NODE__NODE_CREATEDB_STMT:
        return "CREATE DATABASE";
    case PG_QUERY__NODE__NODE_DROPDB_STMT:
        return "DROP DATABASE";
    case PG_QUERY__NODE__NODE_ALTER_DATABASE_STMT:
    case PG_QUERY__NODE__NODE_ALTER_DATABASE_SET_STMT:
    case PG_QUERY__NODE__NODE_ALTER_DATABASE_REFRESH_COLL_STMT:
        return "ALTER DATABASE";
    case PG_QUERY__NODE__NODE_ALTER_ROLE_STMT:
    case PG_QUERY__NODE__NODE_ALTER_ROLE_SET_STMT:
        return "ALTER ROLE";
    case PG_QUERY__NODE__NODE_COMPOSITE_TYPE_STMT:
    case PG_QUERY__NODE__NODE_CREATE_ENUM_STMT:
    case PG_QUERY__NODE__NODE_CREATE_RANGE_STMT:
        return "CREATE TYPE";
    case PG_QUERY__NODE__NODE_ALTER_ENUM_STMT:
        return "ALTER TYPE";
    case PG_QUERY__NODE__NODE_CREATE_TRIG_STMT:
        return "CREATE TRIGGER";
    case PG_QUERY__NODE__NODE_CREATE_PLANG_STMT:
        return "CREATE LANGUAGE";
    case PG_QUERY__NODE__NODE_CREATE_FDW_STMT:
        return "CREATE FOREIGN DATA WRAPPER";
    case PG_QUERY__NODE__NODE_CREATE_FOREIGN_SERVER_STMT:
        return "CREATE SERVER";
    case PG_QUERY__NODE__NODE_CREATE_TABLE_SPACE_STMT:
        return "CREATE TABLESPACE";
    case PG_QUERY__NODE__NODE_DROP_TABLE_SPACE_STMT:
        return "DROP TABLESPACE";
    case PG_QUERY__NODE__NODE_RULE_STMT:
        return "CREATE RULE";
    case PG_QUERY__NODE__NODE_SEC_LABEL_STMT:
        return "SECURITY LABEL";
    case PG_QUERY__NODE__NODE_TRUNCATE_STMT:
        return "TRUNCATE TABLE";
    case PG_QUERY__NODE__NODE_VACUUM_STMT:
        return node->vacuum_stmt->is_vacuumcmd ? "VACUUM" : "ANALYZE";
    case PG_QUERY__NODE__NODE_CHECK_POINT_STMT:
        return "CHECKPOINT";
    case PG_QUERY__NODE__NODE_VARIABLE_SET_STMT:
        return node->variable_set_stmt->kind == PG_QUERY__VARIABLE_SET_KIND__VAR_RESET ||
                       node->variable_set_stmt->kind == PG_QUERY__VARIABLE_SET_KIND__VAR_RESET_ALL
                   ? "RESET"
                   : "SET";
    case PG_QUERY__NODE__NODE_CONSTRAINTS_SET_STMT:
        return "SET CONSTRAINTS";
    case PG_QUERY__NODE__NODE_VARIABLE_SHOW_STMT:
        return "SHOW";
    case PG_QUERY__NODE__NODE_LOCK_STMT:
        return "LOCK TABLE";
    case PG_QUERY__NODE__NODE_GRANT_STMT:
        return node->grant_stmt->is_grant ? "GRANT" : "REVOKE";
    case PG_QUERY__NODE__NODE_GRANT_ROLE_STMT:
        return node->grant_role_stmt->is_grant ? "GRANT ROLE" : "REVOKE ROLE";
    case PG_QUERY__NODE__NODE_TRANSACTION_STMT:
        return transaction_tag(node->transaction_stmt->kind);
    case PG_QUERY__NODE__NODE_DEALLOCATE_STMT:
        return node->deallocate_stmt->name && *node->deallocate_stmt->name ? "DEALLOCATE" : "DEALLOCATE ALL";
    case PG_QUERY__NODE__NODE_DECLARE_CURSOR_STMT:
        return "DECLARE CURSOR";
    case PG_QUERY__NODE__NODE_FETCH_STMT:
        return node->fetch_stmt->ismove ? "MOVE" : "FETCH";
    case PG_QUERY__NODE__NODE_CLOSE_PORTAL_STMT:
        return node->close_portal_stmt->portalname && *node->close_portal_stmt->portalname ? "CLOSE CURSOR"
                                                                                         : "CLOSE CURSOR ALL";
    case PG_QUERY__NODE__NODE_DISCARD_STMT:
        return discard_tag(node->discard_stmt->target);
    case PG_QUERY__NODE__NODE_REFRESH_MAT_VIEW_STMT:
        return "REFRESH MATERIALIZED VIEW";
    case PG_QUERY__NODE__NODE_ALTER_DEFAULT_PRIVILEGES_STMT:
        return "ALTER DEFAULT PRIVILEGES";
    default:
        // CopyStmt -> COPY, CallStmt -> CALL, ExplainStmt -> EXPLAIN, CreateRoleStmt ->
        // CREATE ROLE, CreateSchemaStmt -> CREATE SCHEMA, ...: the node's name is the tag.
        if (const ProtobufCFieldDescriptor* fd =
                protobuf_c_message_descriptor_get_field(&pg_query__node__descriptor, unsigned(node->node_case)))
            if (auto inner = load<const ProtobufCMessage*>(&node->base, fd->offset))
                return node_words(inner);
        return "UNKNOWN";
    }
}

// pgaudit's class, from PostgreSQL's log level of the statement (GetCommandLogLevel:
// mod -> WRITE, ddl -> DDL or ROLE, all -> READ for SELECT and COPY, FUNCTION for DO,
// else MISC; SET -> MISC_SET). CALL is FUNCTION here: the definition.
AuditClass own_audit_class(const PgQuery__Node* node, const Statement& s)
{
    if (is_role_statement(node->node_case))
        return AuditClass::Role;
    switch (s.kind) {
    case Kind::Select:
    case Kind::SelectForUpdate:
    case Kind::SelectForShare:
        return s.not_read_only == kModifyingWith ? AuditClass::Write : AuditClass::Read;
    case Kind::CopyTo:
        return AuditClass::Read;
    case Kind::Insert:
    case Kind::Update:
    case Kind::Delete:
    case Kind::Merge:
    case Kind::Truncate:
    case Kind::CopyFrom:
        return AuditClass::Write;
    case Kind::SelectInto:
    case Kind::CreateTableAs:
    case Kind::Ddl:
    case Kind::AlterSystem:
        return AuditClass::Ddl;
    case Kind::Grant:
    case Kind::Revoke:
        return AuditClass::Role;
    case Kind::Call:
    case Kind::Do:
        return AuditClass::Function;
    case Kind::Other:
        return node->node_case == PG_QUERY__NODE__NODE_REFRESH_MAT_VIEW_STMT ? AuditClass::Ddl : AuditClass::Misc;
    default:
        return s.command == "SET" ? AuditClass::MiscSet : AuditClass::Misc;
    }
}

Statement classify_node(const PgQuery__Node* node)
{
    Statement s;
    if (!node) {  // not produced by the parser; fail closed
        set_writes(s, kOther);
        s.inner = s.kind;
        s.kinds = bit(s.kind);
        return s;
    }
    Facts f = walk(&node->base, root_access(node->node_case));
    s.functions = std::move(f.functions);
    s.relations = std::move(f.relations);
    s.kinds = f.kinds;
    bool wrapped = false;

    switch (node->node_case) {
    case PG_QUERY__NODE__NODE_SELECT_STMT:
        classify_select(f, s);
        break;
    case PG_QUERY__NODE__NODE_INSERT_STMT:
        s.kind = Kind::Insert;
        set_writes(s, kModifiesRows);
        break;
    case PG_QUERY__NODE__NODE_UPDATE_STMT:
        s.kind = Kind::Update;
        set_writes(s, kModifiesRows);
        break;
    case PG_QUERY__NODE__NODE_DELETE_STMT:
        s.kind = Kind::Delete;
        set_writes(s, kModifiesRows);
        break;
    case PG_QUERY__NODE__NODE_MERGE_STMT:
        s.kind = Kind::Merge;
        set_writes(s, kModifiesRows);
        break;
    case PG_QUERY__NODE__NODE_CREATE_TABLE_AS_STMT:
        s.kind = Kind::CreateTableAs;
        set_writes(s, kCreatesTable);
        break;
    case PG_QUERY__NODE__NODE_TRUNCATE_STMT:
        s.kind = Kind::Truncate;
        set_writes(s, kTruncate);
        break;
    case PG_QUERY__NODE__NODE_VACUUM_STMT:
        s.kind = node->vacuum_stmt->is_vacuumcmd ? Kind::Vacuum : Kind::Analyze;
        set_writes(s, kMaintenance);
        break;
    case PG_QUERY__NODE__NODE_REINDEX_STMT:
        s.kind = Kind::Reindex;
        set_writes(s, kMaintenance);
        break;
    case PG_QUERY__NODE__NODE_CLUSTER_STMT:
        s.kind = Kind::Cluster;
        set_writes(s, kMaintenance);
        break;
    case PG_QUERY__NODE__NODE_CHECK_POINT_STMT:
        s.kind = Kind::Checkpoint;
        set_writes(s, kMaintenance);
        break;
    case PG_QUERY__NODE__NODE_COPY_STMT:
        classify_copy(node->copy_stmt, s, &wrapped);
        break;
    case PG_QUERY__NODE__NODE_CALL_STMT:
        s.kind = Kind::Call;
        set_writes(s, kCall);
        break;
    case PG_QUERY__NODE__NODE_DO_STMT:
        s.kind = Kind::Do;
        set_writes(s, kDo);
        break;
    case PG_QUERY__NODE__NODE_ALTER_SYSTEM_STMT:
        s.kind = Kind::AlterSystem;
        if (node->alter_system_stmt->setstmt)
            s.setting = ascii_lower(str_or_empty(node->alter_system_stmt->setstmt->name));
        set_writes(s, kAlterSystem);
        break;
    case PG_QUERY__NODE__NODE_VARIABLE_SET_STMT:
        classify_set(node->variable_set_stmt, s);
        break;
    case PG_QUERY__NODE__NODE_CONSTRAINTS_SET_STMT:
        // SET CONSTRAINTS only moves when the current transaction checks them.
        s.kind = Kind::Set;
        s.setting = "constraints";
        break;
    case PG_QUERY__NODE__NODE_VARIABLE_SHOW_STMT:
        s.kind = Kind::Show;
        s.setting = ascii_lower(str_or_empty(node->variable_show_stmt->name));
        break;
    case PG_QUERY__NODE__NODE_LOCK_STMT:
        s.kind = Kind::Lock;
        s.not_read_only = kLock;
        break;
    case PG_QUERY__NODE__NODE_GRANT_STMT:
        s.kind = node->grant_stmt->is_grant ? Kind::Grant : Kind::Revoke;
        set_writes(s, kPrivileges);
        break;
    case PG_QUERY__NODE__NODE_GRANT_ROLE_STMT:
        s.kind = node->grant_role_stmt->is_grant ? Kind::Grant : Kind::Revoke;
        set_writes(s, kPrivileges);
        break;
    case PG_QUERY__NODE__NODE_ALTER_DEFAULT_PRIVILEGES_STMT: {
        const PgQuery__GrantStmt* action = node->alter_default_privileges_stmt->action;
        s.kind = action && !action->is_grant ? Kind::Revoke : Kind::Grant;
        set_writes(s, kPrivileges);
        break;
    }
    case PG_QUERY__NODE__NODE_TRANSACTION_STMT:
        classify_transaction(node->transaction_stmt, s);
        break;
    case PG_QUERY__NODE__NODE_PREPARE_STMT: {
        // Preparing runs nothing; EXECUTE runs it later. Read-only when what it
        // prepares is, so that EXECUTE could be allowed once the session tracks names.
        s.kind = Kind::Prepare;
        Statement in = carried(node->prepare_stmt->query, s, &wrapped);
        s.not_read_only = in.not_read_only;
        break;
    }
    case PG_QUERY__NODE__NODE_EXECUTE_STMT:
        s.kind = Kind::Execute;
        set_writes(s, kExecute);
        break;
    case PG_QUERY__NODE__NODE_DEALLOCATE_STMT:
        s.kind = Kind::Deallocate;
        break;
    case PG_QUERY__NODE__NODE_DECLARE_CURSOR_STMT: {
        s.kind = Kind::Declare;
        Statement in = carried(node->declare_cursor_stmt->query, s, &wrapped);
        s.writes = in.writes;
        s.not_read_only = in.not_read_only;
        break;
    }
    case PG_QUERY__NODE__NODE_FETCH_STMT:
        s.kind = Kind::Fetch;
        break;
    case PG_QUERY__NODE__NODE_CLOSE_PORTAL_STMT:
        s.kind = Kind::Close;
        break;
    case PG_QUERY__NODE__NODE_EXPLAIN_STMT:
        classify_explain(node->explain_stmt, s, &wrapped);
        break;
    case PG_QUERY__NODE__NODE_LISTEN_STMT:
        s.kind = Kind::Listen;
        break;
    case PG_QUERY__NODE__NODE_UNLISTEN_STMT:
        s.kind = Kind::Unlisten;
        break;
    case PG_QUERY__NODE__NODE_NOTIFY_STMT:
        s.kind = Kind::Notify;
        set_writes(s, kNotify);
        break;
    case PG_QUERY__NODE__NODE_DISCARD_STMT:
        s.kind = Kind::Discard;
        // DISCARD ALL includes SET SESSION AUTHORIZATION DEFAULT, which drops a role
        // the session may have been given.
        if (node->discard_stmt->target != PG_QUERY__DISCARD_MODE__DISCARD_PLANS &&
            node->discard_stmt->target != PG_QUERY__DISCARD_MODE__DISCARD_SEQUENCES &&
            node->discard_stmt->target != PG_QUERY__DISCARD_MODE__DISCARD_TEMP)
            s.not_read_only = kDiscardAll;
        break;
    default:
        if (is_ddl(node->node_case)) {
            s.kind = Kind::Ddl;
            set_writes(s, kDdl);
        } else {
            // LOAD, REFRESH MATERIALIZED VIEW, and whatever a newer grammar adds.
            s.kind = Kind::Other;
            set_writes(s, kOther);
        }
        break;
    }
    if (!wrapped)
        s.inner = s.kind;
    s.kinds |= bit(s.kind) | bit(s.inner);
    s.command = command_tag(node);
    // EXPLAIN ANALYZE, PREPARE and DECLARE do what they carry (carried() set it).
    if (!wrapped || (s.kind != Kind::ExplainAnalyze && s.kind != Kind::Prepare && s.kind != Kind::Declare))
        s.audit_class = own_audit_class(node, s);
    return s;
}

Result<std::vector<Statement>> parse_and_classify(std::string_view sql)
{
    std::string text(sql);  // libpg_query wants a NUL-terminated string
    if (text.size() > kGaugeTextBytes)
        if (Status st = check_nesting(text); !st)
            return Error{st.error()};
    ProtobufParse parsed(pg_query_parse_protobuf(text.c_str()));
    if (parsed->error)
        return pg_error(parsed->error);
    ParseTree tree(pg_query__parse_result__unpack(
        nullptr, parsed->parse_tree.len,
        reinterpret_cast<const std::uint8_t*>(parsed->parse_tree.data)));
    if (!tree)
        return Error{"cannot unpack libpg_query's parse tree"};

    std::vector<Statement> out;
    out.reserve(tree->n_stmts);
    for (std::size_t i = 0; i < tree->n_stmts; ++i) {
        const PgQuery__RawStmt* raw = tree->stmts[i];
        Statement s = classify_node(raw ? raw->stmt : nullptr);
        std::size_t at = raw ? std::size_t(std::max(raw->stmt_location, 0)) : 0;
        at = std::min(at, sql.size());
        // stmt_len 0 means "to the end of the string".
        std::size_t len = raw && raw->stmt_len > 0 ? std::size_t(raw->stmt_len) : sql.size() - at;
        s.offset = at;
        s.length = std::min(len, sql.size() - at);
        out.push_back(std::move(s));
    }
    return out;
}

// Runs fn (which calls into libpg_query) on a stack sized for sql; the result of fn is
// carried out in *out.
template <typename T>
Result<T> on_parser_stack(std::string_view sql, const std::function<Result<T>()>& fn)
{
    if (Status st = check_text(sql); !st)
        return Error{st.error()};
    std::optional<Result<T>> out;
    Status st = with_parser_stack(sql.size(), [&] { out.emplace(fn()); });
    if (!st)
        return Error{st.error()};
    return std::move(*out);
}

// ---- the built-in allowlist ----------------------------------------------------------

// Functions that neither write nor act outside the statement. Deliberately absent:
// nextval/setval/currval/lastval, set_config, pg_advisory_* and pg_try_advisory_*,
// pg_sleep*, pg_notify, pg_cancel_backend/pg_terminate_backend, pg_reload_conf,
// pg_rotate_logfile, pg_switch_wal, pg_stat_reset*, lo_* and other large-object
// functions, dblink*, pg_read_file/pg_ls_dir and other server-file functions,
// txid_current/pg_current_xact_id (they assign a transaction id), query_to_xml and
// ts_stat (they run a query given as text), setseed.
constexpr std::string_view kBuiltinFunctions[] = {
    // aggregates
    "count", "sum", "avg", "min", "max", "array_agg", "string_agg", "bool_and", "bool_or",
    "every", "bit_and", "bit_or", "bit_xor", "json_agg", "jsonb_agg", "json_object_agg",
    "jsonb_object_agg", "stddev", "stddev_pop", "stddev_samp", "variance", "var_pop",
    "var_samp", "corr", "covar_pop", "covar_samp", "regr_slope", "regr_intercept",
    "regr_count", "regr_r2", "percentile_cont", "percentile_disc", "mode",
    // window functions
    "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag", "lead",
    "first_value", "last_value", "nth_value",
    // date and time
    "now", "clock_timestamp", "statement_timestamp", "transaction_timestamp", "timeofday",
    "date_trunc", "date_part", "extract", "date_bin", "age", "make_date", "make_time",
    "make_timestamp", "make_timestamptz", "make_interval", "to_timestamp", "to_date",
    "to_char", "to_number", "justify_days", "justify_hours", "justify_interval", "isfinite",
    "timezone", "overlaps",
    // strings
    "lower", "upper", "initcap", "length", "char_length", "character_length",
    "octet_length", "bit_length", "substring", "substr", "position", "strpos", "concat",
    "concat_ws", "format", "replace", "translate", "btrim", "ltrim", "rtrim", "lpad", "rpad",
    "left", "right", "repeat", "reverse", "split_part", "starts_with", "string_to_array",
    "string_to_table", "array_to_string", "regexp_replace", "regexp_match",
    "regexp_matches", "regexp_split_to_array", "regexp_split_to_table", "regexp_like",
    "regexp_count", "regexp_instr", "regexp_substr", "similar_to_escape", "md5", "sha224",
    "sha256", "sha384", "sha512", "encode", "decode", "quote_ident", "quote_literal",
    "quote_nullable", "ascii", "chr", "overlay", "to_hex", "pg_collation_for", "normalize",
    "is_normalized", "convert_from", "convert_to", "unistr", "parse_ident",
    // numbers
    "abs", "ceil", "ceiling", "floor", "round", "trunc", "mod", "div", "power", "pow",
    "sqrt", "cbrt", "exp", "ln", "log", "log10", "sign", "pi", "degrees", "radians", "sin",
    "cos", "tan", "asin", "acos", "atan", "atan2", "width_bucket", "random", "gcd", "lcm",
    "factorial", "scale", "trim_scale",
    // arrays
    "array_length", "array_lower", "array_upper", "array_dims", "array_ndims",
    "cardinality", "unnest", "array_position", "array_positions", "array_remove",
    "array_replace", "array_append", "array_prepend", "array_cat", "array_fill",
    "trim_array",
    // json
    "to_json", "to_jsonb", "row_to_json", "array_to_json", "json_build_object",
    "jsonb_build_object", "json_build_array", "jsonb_build_array", "json_object",
    "jsonb_object", "json_array_elements", "jsonb_array_elements",
    "json_array_elements_text", "jsonb_array_elements_text", "json_array_length",
    "jsonb_array_length", "json_each", "jsonb_each", "json_each_text", "jsonb_each_text",
    "json_extract_path", "jsonb_extract_path", "json_extract_path_text",
    "jsonb_extract_path_text", "json_object_keys", "jsonb_object_keys", "json_typeof",
    "jsonb_typeof", "jsonb_pretty", "jsonb_set", "jsonb_insert", "jsonb_strip_nulls",
    "json_strip_nulls", "jsonb_path_query", "jsonb_path_query_array",
    "jsonb_path_query_first", "jsonb_path_exists", "jsonb_path_match", "json_to_record",
    "jsonb_to_record", "json_to_recordset", "jsonb_to_recordset", "json_populate_record",
    "jsonb_populate_record",
    // set-returning and misc
    "generate_series", "generate_subscripts", "num_nulls", "num_nonnulls",
    "gen_random_uuid", "pg_typeof", "host", "family", "masklen", "network", "broadcast",
    "to_tsvector", "to_tsquery", "plainto_tsquery", "phraseto_tsquery",
    "websearch_to_tsquery", "ts_rank", "ts_headline",
    // session and server information
    "version", "current_database", "current_schema", "current_schemas", "current_setting",
    "pg_backend_pid", "inet_client_addr", "inet_client_port", "inet_server_addr",
    "inet_server_port", "pg_postmaster_start_time", "pg_conf_load_time",
    "pg_is_in_recovery", "pg_blocking_pids", "pg_encoding_to_char", "pg_char_to_encoding",
    "pg_client_encoding", "pg_jit_available",
    // sizes
    "pg_size_pretty", "pg_size_bytes", "pg_relation_size", "pg_total_relation_size",
    "pg_table_size", "pg_indexes_size", "pg_database_size", "pg_column_size",
    "pg_tablespace_size",
    // catalog information (what psql's \d commands and GUI tools call)
    "format_type", "pg_get_userbyid", "pg_get_viewdef", "pg_get_indexdef",
    "pg_get_constraintdef", "pg_get_functiondef", "pg_get_function_arguments",
    "pg_get_function_identity_arguments", "pg_get_function_result", "pg_get_triggerdef",
    "pg_get_ruledef", "pg_get_expr", "pg_get_serial_sequence", "pg_get_partkeydef",
    "pg_get_partition_constraintdef", "pg_get_statisticsobjdef",
    "pg_get_statisticsobjdef_columns", "obj_description", "col_description",
    "shobj_description", "pg_table_is_visible", "pg_type_is_visible",
    "pg_function_is_visible", "pg_tablespace_location", "has_table_privilege",
    "has_column_privilege", "has_schema_privilege", "has_database_privilege",
    "has_function_privilege", "has_sequence_privilege", "pg_has_role", "to_regclass",
    "to_regtype", "to_regproc", "to_regprocedure", "to_regnamespace", "to_regrole",
    "pg_get_keywords",
};

std::string strip_pg_catalog(std::string name)
{
    constexpr std::string_view prefix = "pg_catalog.";
    if (name.size() > prefix.size() && name.compare(0, prefix.size(), prefix) == 0)
        name.erase(0, prefix.size());
    return name;
}

} // namespace

std::string_view kind_name(Kind k)
{
    auto i = std::size_t(k);
    return i < kKinds.size() ? kKinds[i].name : "other";
}

std::string_view audit_class_name(AuditClass c)
{
    static constexpr std::string_view kNames[] = {"READ", "WRITE", "FUNCTION", "ROLE", "DDL", "MISC", "MISC_SET"};
    auto i = std::size_t(c);
    return i < std::size(kNames) ? kNames[i] : "MISC";
}

std::string_view access_name(Access a)
{
    switch (a) {
    case Access::Write:
        return "write";
    case Access::Ddl:
        return "ddl";
    default:
        return "read";
    }
}

std::optional<Kind> kind_from_name(std::string_view name)
{
    std::string lower = ascii_lower(name);
    for (const KindInfo& info : kKinds)
        if (info.name == lower)
            return info.kind;
    return std::nullopt;
}

std::span<const Kind> all_kinds() { return kAllKinds; }

Result<std::vector<Statement>> classify(std::string_view sql)
{
    return on_parser_stack<std::vector<Statement>>(sql, [sql] { return parse_and_classify(sql); });
}

namespace {

// The text as a client-only encoding's server-side conversion leaves it for the lexer:
// every byte inside a multibyte character becomes 'x' (an identifier or string byte to
// the lexer, as the converted character is), following PostgreSQL's character lengths
// for the encoding (pg_*_mblen). `kind`: 'S' SJIS, 'B' BIG5/GBK/UHC, 'G' GB18030,
// 'J' JOHAB (EUC rules).
std::string as_client_only_encoding(std::string_view sql, char kind)
{
    std::string out(sql);
    for (size_t i = 0; i < out.size();) {
        const unsigned char c = static_cast<unsigned char>(out[i]);
        size_t len = 1;
        if (c >= 0x80) {
            if (kind == 'S')
                len = (c >= 0xa1 && c <= 0xdf) ? 1 : 2;
            else if (kind == 'G')
                len = (i + 1 < out.size() && out[i + 1] >= '0' && out[i + 1] <= '9') ? 4 : 2;
            else if (kind == 'J')
                len = c == 0x8f ? 3 : 2;
            else
                len = 2;
        }
        for (size_t j = i + 1; j < i + len && j < out.size(); ++j)
            out[j] = 'x';
        i += len;
    }
    return out;
}

Result<std::vector<Statement>> classify_with(std::string_view sql, bool scs)
{
    const bool saved = standard_conforming_strings;
    standard_conforming_strings = scs;
    auto r = classify(sql);
    standard_conforming_strings = saved;
    return r;
}

} // namespace

Classified classify_readings(std::string_view sql)
{
    Classified c{classify(sql), {}};
    // Only a backslash makes standard_conforming_strings matter. A client-only encoding
    // matters only where a byte above 127 is followed by an ASCII byte that its
    // multibyte characters can hold and that is not an identifier character here: no
    // quote, dollar, dash, slash or star is ever a second byte, so strings, comments
    // and dollar quotes end where this parser sees them end, but a backslash or a
    // semicolon (JOHAB) can vanish into a character.
    const bool backslash = sql.find('\\') != std::string_view::npos;
    bool swallowable = false;
    for (std::size_t i = 0; i + 1 < sql.size() && !swallowable; ++i)
        swallowable = static_cast<unsigned char>(sql[i]) >= 0x80 &&
                      std::string_view(":;<=>?@[\\]^`{|}~").find(sql[i + 1]) != std::string_view::npos;
    if (backslash)
        c.others.push_back({"standard_conforming_strings = off", classify_with(sql, false)});
    if (!swallowable)
        return c;
    static constexpr std::pair<char, std::string_view> kEncodings[] = {
        {'S', "client_encoding = SJIS"}, {'B', "client_encoding = BIG5, GBK or UHC"},
        {'G', "client_encoding = GB18030"}, {'J', "client_encoding = JOHAB"}};
    std::vector<std::string> seen;
    for (const auto& [kind, how] : kEncodings) {
        std::string text = as_client_only_encoding(sql, kind);
        if (text == sql || std::find(seen.begin(), seen.end(), text) != seen.end())
            continue;
        seen.push_back(text);
        c.others.push_back({how, classify_with(text, true)});
        if (backslash)
            c.others.push_back({how, classify_with(text, false)});
    }
    return c;
}

Result<std::string> normalize(std::string_view sql)
{
    return on_parser_stack<std::string>(sql, [sql]() -> Result<std::string> {
        std::string text(sql);
        Normalized r(pg_query_normalize(text.c_str()));
        if (r->error)
            return pg_error(r->error);
        return std::string(str_or_empty(r->normalized_query));
    });
}

Result<std::string> fingerprint(std::string_view sql)
{
    return on_parser_stack<std::string>(sql, [sql]() -> Result<std::string> {
        std::string text(sql);
        Fingerprinted r(pg_query_fingerprint(text.c_str()));
        if (r->error)
            return pg_error(r->error);
        return std::string(str_or_empty(r->fingerprint_str));
    });
}

// ---- names from configuration ------------------------------------------------------

Result<std::string> canonical_function_name(std::string_view written)
{
    // PostgreSQL's NAMEDATALEN - 1: longer identifiers are cut, as the server does.
    constexpr std::size_t kMaxIdentifier = 63;
    auto bad = [&](const std::string& why) {
        return Error{"invalid function name \"" + std::string(written) + "\": " + why};
    };
    std::string_view s = written;
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
        s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t'))
        s.remove_suffix(1);
    if (s.empty())
        return bad("empty");

    std::vector<std::string> parts;
    std::size_t i = 0;
    for (;;) {
        std::string part;
        if (i < s.size() && s[i] == '"') {
            ++i;
            for (;;) {
                if (i >= s.size())
                    return bad("unterminated quoted identifier");
                if (s[i] == '"') {
                    if (i + 1 < s.size() && s[i + 1] == '"') {
                        part += '"';
                        i += 2;
                        continue;
                    }
                    ++i;
                    break;
                }
                part += s[i++];
            }
            if (part.empty())
                return bad("zero-length quoted identifier");
        } else {
            auto ident_char = [](unsigned char c, bool first) {
                return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                       c >= 0x80 || (!first && ((c >= '0' && c <= '9') || c == '$'));
            };
            if (i >= s.size() || !ident_char(static_cast<unsigned char>(s[i]), true))
                return bad("expected an identifier at offset " + std::to_string(i));
            while (i < s.size() && ident_char(static_cast<unsigned char>(s[i]), part.empty()))
                part += s[i++];
            part = ascii_lower(part);
        }
        if (part.size() > kMaxIdentifier) {
            std::size_t cut = kMaxIdentifier;
            // Do not split a UTF-8 sequence: back up over continuation bytes.
            while (cut > 0 && (static_cast<unsigned char>(part[cut]) & 0xC0) == 0x80)
                --cut;
            part.resize(cut > 0 ? cut : kMaxIdentifier);  // not UTF-8 at all: cut anyway
        }
        parts.push_back(std::move(part));
        if (i == s.size())
            break;
        if (s[i] != '.')
            return bad("unexpected character at offset " + std::to_string(i));
        ++i;
    }
    if (parts.size() > 3)
        return bad("too many dotted names");
    std::string out;
    for (std::size_t p = 0; p < parts.size(); ++p) {
        if (p > 0)
            out += '.';
        append_part(out, parts[p]);
    }
    return out;
}

// ---- allowlist and the read-only rules --------------------------------------------------

const FunctionAllowlist& FunctionAllowlist::builtin()
{
    static const FunctionAllowlist list = [] {
        FunctionAllowlist l;
        for (std::string_view name : kBuiltinFunctions)
            l.names_.emplace(name);
        return l;
    }();
    return list;
}

Result<FunctionAllowlist> FunctionAllowlist::with_extra(const std::vector<std::string>& names)
{
    FunctionAllowlist l = builtin();
    for (const std::string& written : names) {
        Result<std::string> name = canonical_function_name(written);
        if (!name)
            return Error{name.error()};
        l.names_.insert(strip_pg_catalog(std::move(*name)));
    }
    return l;
}

bool FunctionAllowlist::allows(std::string_view function) const
{
    return names_.count(strip_pg_catalog(std::string(function))) > 0;
}

std::string read_only_violation(const Statement& s, const FunctionAllowlist& allow)
{
    if (!s.not_read_only.empty())
        return std::string(s.not_read_only);
    if (s.writes)  // every writing statement has a reason; this is the fail-safe
        return std::string(kModifiesRows);
    for (const std::string& fn : s.functions)
        if (!allow.allows(fn))
            return "calls " + fn + "(), which is not known to be read-only";
    return {};
}

bool is_read_only(const Statement& s, const FunctionAllowlist& allow)
{
    return read_only_violation(s, allow).empty();
}

// ---- cache -------------------------------------------------------------------------------

ClassifyCache::ClassifyCache(std::size_t max_entries, std::size_t max_bytes)
    : max_entries_(max_entries), max_bytes_(max_bytes)
{
}

namespace {

// Roughly what an entry holds on the heap; the byte budget only has to be in the right
// order of magnitude.
std::size_t cost_of(const Result<std::vector<Statement>>& r)
{
    if (!r)
        return r.error().size();
    std::size_t cost = 0;
    for (const Statement& s : r.value()) {
        cost += sizeof(Statement) + s.setting.size();
        for (const std::string& fn : s.functions)
            cost += sizeof(std::string) + fn.size();
    }
    return cost;
}

std::size_t cost_of(std::string_view text, const Classified& c)
{
    std::size_t cost = 128 + text.size() + cost_of(c.primary);
    for (const Reading& r : c.others)
        cost += sizeof(Reading) + cost_of(r.statements);
    return cost;
}

} // namespace

std::optional<std::string> literal_key(std::string_view sql)
{
    auto ident = [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '$';
    };
    auto digit = [](char c) { return c >= '0' && c <= '9'; };
    std::string out(sql);
    const std::size_t n = out.size();
    // Skips a quoted run from i (at its opening quote q) to just past its closing quote,
    // a doubled quote standing for one; false when it does not end.
    auto skip_quoted = [&](std::size_t& i, char q) {
        for (++i; i < n; ++i)
            if (out[i] == q) {
                if (i + 1 < n && out[i + 1] == q) {
                    ++i;
                    continue;
                }
                ++i;
                return true;
            }
        return false;
    };
    for (char c : out)
        if (c == '\\' || c == '\0' || static_cast<unsigned char>(c) >= 0x80)
            return std::nullopt;
    std::size_t i = 0;
    while (i < n) {
        const char c = out[i];
        const char prev = i > 0 ? out[i - 1] : ' ';
        if (c == '-' && i + 1 < n && out[i + 1] == '-') {
            while (i < n && out[i] != '\n')
                ++i;
        } else if (c == '/' && i + 1 < n && out[i + 1] == '*') {
            int depth = 0;  // comments nest
            do {
                if (i + 1 < n && out[i] == '/' && out[i + 1] == '*') {
                    ++depth;
                    i += 2;
                } else if (i + 1 < n && out[i] == '*' && out[i + 1] == '/') {
                    --depth;
                    i += 2;
                } else {
                    ++i;
                }
            } while (depth > 0 && i < n);
            if (depth > 0)
                return std::nullopt;
        } else if (c == '\'' || c == '"') {
            if (!skip_quoted(i, c))
                return std::nullopt;
        } else if (c == '$' && !ident(prev)) {
            if (i + 1 < n && digit(out[i + 1])) {  // a parameter, $1
                for (++i; i < n && digit(out[i]); ++i) {
                }
                continue;
            }
            // A dollar quote: $tag$ ... $tag$ (the tag does not start with a digit).
            std::size_t end = i + 1;
            while (end < n && ident(out[end]) && out[end] != '$')
                ++end;
            if (end < n && out[end] == '$') {
                const std::string delim = out.substr(i, end - i + 1);
                std::size_t close = out.find(delim, end + 1);
                if (close == std::string::npos)
                    return std::nullopt;
                i = close + delim.size();
            } else {
                ++i;
            }
        } else if (ident(c)) {
            // An identifier or keyword (digits in it stay), or a number (they go).
            const bool number = digit(c) && !ident(prev);
            for (; i < n && ident(out[i]); ++i)
                if (number && digit(out[i]))
                    out[i] = '0';
                else if (number)
                    break;  // 12abc: PostgreSQL 15 reads 12, then the identifier abc
        } else {
            ++i;
        }
    }
    return out;
}

bool shareable_by_literal_key(const std::vector<Statement>& statements)
{
    const std::uint64_t kShareable = bit(Kind::Select) | bit(Kind::SelectForUpdate) |
                                         bit(Kind::SelectForShare) | bit(Kind::Insert) | bit(Kind::Update) |
                                         bit(Kind::Delete);
    for (const Statement& s : statements)
        if ((s.kinds & ~kShareable) != 0 || !s.setting.empty())
            return false;
    return true;
}

void ClassifyCache::evict_until(std::size_t entries, std::size_t bytes)
{
    while (!lru_.empty() && (map_.size() > entries || bytes_ > bytes)) {
        const Entry& last = lru_.back();
        bytes_ -= last.cost;
        map_.erase(std::string_view(last.text));
        lru_.pop_back();
    }
}

ClassifyCache::Value ClassifyCache::get(std::string_view sql)
{
    auto hit = [this](auto it) {
        ++hits_;
        lru_.splice(lru_.begin(), lru_, it->second);
        return it->second->value;
    };
    // The exact text first (an entry stored by key whose key is this very text is a
    // classification of a text that differs from it only in numbers: equally valid).
    if (auto it = map_.find(sql); it != map_.end())
        return hit(it);
    std::optional<std::string> key = literal_key(sql);
    if (key && *key != sql)
        if (auto it = map_.find(*key); it != map_.end() && it->second->by_key) {
            ++key_hits_;
            return hit(it);
        }
    ++misses_;
    auto value = std::make_shared<const Classified>(classify_readings(sql));
    std::size_t cost = cost_of(sql, *value);
    // One huge statement must not push out hundreds of small ones.
    if (max_entries_ == 0 || cost > max_bytes_ / 8)
        return value;
    const bool by_key = key && value->primary.ok() && value->others.empty() &&
                        shareable_by_literal_key(value->primary.value());
    const std::string& stored = by_key ? *key : std::string(sql);
    if (map_.count(stored))
        return value;  // an exact entry with the key's text: keep it
    evict_until(max_entries_ - 1, max_bytes_ - cost);
    lru_.push_front(Entry{stored, value, cost, by_key});
    map_.emplace(std::string_view(lru_.front().text), lru_.begin());
    bytes_ += cost;
    return value;
}

} // namespace pgw::policy
