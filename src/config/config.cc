// INI parsing (inih) into an immutable Config, with file:line errors.
// inih has no line numbers in its callback here, so the reader counts lines.
#include "config/config.hh"

#include "auth/ossl.hh"
#include "auth/userlist.hh"
#include "config/options.hh"
#include "config/pool_keys.hh"

#include <ini.h>
#include <libpq-fe.h>

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <set>
#include <sstream>

namespace pgw::config {
namespace {

struct ParseState {
    std::string name;      // file name for messages
    const char* text = nullptr;  // load_string: remaining text
    FILE* file = nullptr;        // load_file
    int line = 0;
    bool continuation = false;  // the current physical line starts with blanks
    bool line_too_long = false;
    Config cfg;
    std::vector<std::string> errors;
    std::map<std::string, int> seen_options;
    std::string last_section, last_name;
};

std::string where(const ParseState& st) { return st.name + ":" + std::to_string(st.line); }

bool is_policy_section(const std::string& sec) { return sec.rfind("policy.", 0) == 0 && sec.size() > 7; }

// The policy of that name, created (at the current line) on first sight: at its section
// header, so that a section without settings still defines an allow-all policy.
policy::Policy& policy_at(ParseState& st, const std::string& name)
{
    for (auto& existing : st.cfg.policies)
        if (existing.name == name)
            return existing;
    policy::Policy& p = st.cfg.policies.emplace_back();
    p.name = name;
    p.file = st.name;
    p.line = st.line;
    return p;
}

// Reads one physical line into buf, counting lines so the handler can cite them.
char* read_line(char* buf, int size, void* stream)
{
    auto* st = static_cast<ParseState*>(stream);
    std::string line;
    bool got = false;
    if (st->file) {
        int c;
        while ((c = std::fgetc(st->file)) != EOF) {
            got = true;
            line.push_back(static_cast<char>(c));
            if (c == '\n')
                break;
        }
    } else if (st->text && *st->text) {
        got = true;
        const char* nl = std::strchr(st->text, '\n');
        size_t n = nl ? (size_t)(nl - st->text + 1) : std::strlen(st->text);
        line.assign(st->text, n);
        st->text += n;
    }
    if (!got)
        return nullptr;
    ++st->line;
    // One limit whatever the line ending: the text without "\n" or "\r\n" must leave
    // room in inih's buffer for a newline and the NUL.
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r'))
        line.pop_back();
    const size_t max_text = size_t(size) - 2;
    if (line.size() > max_text) {
        // inih would split it and misparse the rest; refuse with a clear message.
        st->errors.push_back(where(*st) + ": line is longer than " + std::to_string(max_text) +
                             " characters; split a long connection string over indented "
                             "continuation lines");
        line.clear();
    }
    size_t first = line.find_first_not_of(" \t");
    st->continuation = first != std::string::npos && first > 0;
    if (first != std::string::npos && line[first] == '[') {
        // inih forgets the previous name at a section header; so do we.
        st->last_section.clear();
        st->last_name.clear();
        // inih reports only name = value lines; a policy exists from its header on.
        size_t close = line.find(']', first);
        if (close != std::string::npos) {
            std::string sec = line.substr(first + 1, close - first - 1);
            if (is_policy_section(sec))
                policy_at(*st, sec.substr(7));
        }
    }
    line.push_back('\n');
    std::memcpy(buf, line.c_str(), line.size() + 1);
    return buf;
}

bool parse_integer(const std::string& v, int base, long& out)
{
    if (v.empty())
        return false;
    errno = 0;
    char* end = nullptr;
    long n = std::strtol(v.c_str(), &end, base);
    if (errno != 0 || *end != '\0')
        return false;
    out = n;
    return true;
}

void set_option(ParseState& st, const OptionSpec& spec, const std::string& value)
{
    std::string err;
    switch (spec.type) {
    case OptionType::String:
        st.cfg.*(spec.str_field) = value;
        return;
    case OptionType::Enum: {
        std::string allowed(spec.enum_values);
        std::stringstream ss(allowed);
        std::string item;
        while (std::getline(ss, item, '|'))
            if (item == value) {
                st.cfg.*(spec.str_field) = value;
                return;
            }
        for (char& c : allowed)
            if (c == '|')
                c = ',';
        err = "invalid value \"" + value + "\" (expected one of: " + allowed + ")";
        break;
    }
    case OptionType::Integer:
    case OptionType::Seconds: {
        long n = 0;
        int base = spec.name == "unix_socket_mode" ? 8 : 10;
        if (!parse_integer(value, base, n)) {
            err = "invalid value \"" + value + "\" (expected " +
                  (base == 8 ? "an octal number" : "a whole number") +
                  (spec.type == OptionType::Seconds ? " of seconds" : "") + ")";
        } else if (n < spec.min || n > spec.max) {
            err = "value " + value + " is out of range (" + std::to_string(spec.min) + " to " +
                  std::to_string(spec.max) + ")";
        } else {
            st.cfg.*(spec.int_field) = n;
            return;
        }
        break;
    }
    }
    st.errors.push_back(where(st) + ": option \"" + std::string(spec.name) + "\": " + err);
}

void add_database(ParseState& st, const std::string& name, const std::string& value, bool continues)
{
    auto& dbs = st.cfg.databases;
    if (continues && !dbs.empty() && dbs.back().name == name) {
        dbs.back().conninfo += " " + value;
        return;
    }
    for (const auto& d : dbs)
        if (d.name == name) {
            st.errors.push_back(where(st) + ": database \"" + name + "\" is already defined at line " +
                                std::to_string(d.line));
            return;
        }
    dbs.push_back(DatabaseEntry{name, value, st.line});
}

void add_peer(ParseState& st, const std::string& name, const std::string& value)
{
    long id = 0;
    if (!parse_integer(name, 10, id) || id < 1 || id > 63) {
        st.errors.push_back(where(st) + ": peer \"" + name + "\": the name must be a peer_id from 1 to 63");
        return;
    }
    for (const auto& p : st.cfg.peers)
        if (p.id == id) {
            st.errors.push_back(where(st) + ": peer " + name + " is already defined at line " +
                                std::to_string(p.line));
            return;
        }
    char* errmsg = nullptr;
    PQconninfoOption* opts = PQconninfoParse(value.c_str(), &errmsg);
    if (!opts) {
        std::string msg = errmsg ? errmsg : "out of memory";
        while (!msg.empty() && msg.back() == '\n')
            msg.pop_back();
        PQfreemem(errmsg);
        st.errors.push_back(where(st) + ": peer " + name + ": " + msg);
        return;
    }
    PeerEntry peer{id, "", "6432", st.line};
    for (PQconninfoOption* o = opts; o->keyword; ++o) {
        if (!o->val || !*o->val)
            continue;
        std::string k = o->keyword;
        if (k == "host" || k == "hostaddr")
            peer.host = o->val;
        else if (k == "port")
            peer.port = o->val;
        else
            st.errors.push_back(where(st) + ": peer " + name + ": only host and port may be given (not \"" +
                                k + "\")");
    }
    PQconninfoFree(opts);
    if (peer.host.empty())
        st.errors.push_back(where(st) + ": peer " + name + ": host= is missing");
    st.cfg.peers.push_back(peer);
}

int on_entry(void* user, const char* section, const char* name, const char* value)
{
    auto* st = static_cast<ParseState*>(user);
    std::string sec(section), key(name), val(value);
    // inih passes an indented line as more of the previous name's value.
    const bool continues = st->continuation && st->last_section == sec && st->last_name == key;
    if (sec == "pgwicket") {
        const OptionSpec* spec = find_option(key);
        if (!spec) {
            if (!continues)  // reported once, on the line that named it
                st->errors.push_back(where(*st) + ": unknown option \"" + key +
                                     "\" in section [pgwicket]");
        } else if (continues) {
            if (spec->type == OptionType::String)
                set_option(*st, *spec, st->cfg.*(spec->str_field) + " " + val);
            else
                st->errors.push_back(where(*st) + ": option \"" + key +
                                     "\": only text values may continue on an indented line");
        } else if (auto seen = st->seen_options.find(key); seen != st->seen_options.end()) {
            st->errors.push_back(where(*st) + ": option \"" + key + "\" is already set at line " +
                                 std::to_string(seen->second));
        } else {
            st->seen_options.emplace(key, st->line);
            set_option(*st, *spec, val);
        }
    } else if (sec == "databases") {
        add_database(*st, key, val, continues);
    } else if (sec == "peers") {
        add_peer(*st, key, val);
    } else if (is_policy_section(sec)) {
        policy::Policy& p = policy_at(*st, sec.substr(7));
        if (auto ok = policy::set_policy_value(p, key, val, continues); !ok)
            st->errors.push_back(where(*st) + ": [" + sec + "] " + key + ": " + ok.error());
    } else if (sec == "database_policies") {
        if (!st->cfg.database_policies.emplace(key, val).second)
            st->errors.push_back(where(*st) + ": database \"" + key + "\" has a policy already");
    } else if (sec == "group_policies") {
        st->cfg.group_policies.emplace_back(key, val);
    } else if (sec == "roles") {
        bool dup = false;
        for (const auto& [g, r] : st->cfg.role_map)
            dup |= g == key;
        if (dup)
            st->errors.push_back(where(*st) + ": group \"" + key + "\" is mapped twice");
        else if (val.empty() || val.find_first_of(" \t,") != std::string::npos)
            st->errors.push_back(where(*st) + ": group \"" + key + "\": give one upstream role name");
        else
            st->cfg.role_map.emplace_back(key, val);
    } else if (sec == "identity_map") {
        auto users = split_list(val);
        if (users.empty())
            st->errors.push_back(where(*st) + ": identity \"" + key + "\": list the users it may log in as");
        else if (!st->cfg.identity_map.emplace(key, users).second)
            st->errors.push_back(where(*st) + ": identity \"" + key + "\" is mapped twice");
    } else if (sec.empty()) {
        st->errors.push_back(where(*st) + ": option \"" + key +
                             "\" appears before any [section] header");
    } else {
        st->errors.push_back(where(*st) + ": unknown section [" + sec + "] (option \"" + key +
                             "\")");
    }
    st->last_section = sec;
    st->last_name = key;
    return 1;
}

} // namespace

Result<std::shared_ptr<const auth::jwt::Jwks>> load_jwks(const std::string& path)
{
    std::ifstream in(path);
    if (!in)
        return Error{path + ": could not open jwt_jwks_file: " + std::strerror(errno)};
    std::stringstream ss;
    ss << in.rdbuf();
    auto jwks = auth::jwt::Jwks::parse(ss.str());
    if (!jwks)
        return Error{path + ": " + jwks.error()};
    return std::make_shared<const auth::jwt::Jwks>(std::move(*jwks));
}

std::vector<std::string> cross_check(const Config& c)
{
    std::vector<std::string> errors;
    for (const auto& p : c.peers)
        if (p.id == c.peer_id)
            errors.push_back(c.path + ":" + std::to_string(p.line) + ": peer " + std::to_string(p.id) +
                             " is this instance's own peer_id");
    auto check_policy = [&](const std::string& name, const std::string& where) {
        if (!name.empty() && !c.find_policy(name))
            errors.push_back(c.path + ": " + where + " names policy \"" + name + "\", but there is no [policy." +
                             name + "] section");
    };
    check_policy(c.default_policy, "default_policy");
    for (const auto& [db, name] : c.database_policies)
        check_policy(name, "[database_policies] " + db);
    for (const auto& [group, name] : c.group_policies)
        check_policy(name, "[group_policies] " + group);
    for (const auto& r : c.rules)
        check_policy(r.policy, "the rule at " + r.file + ":" + std::to_string(r.line));
    if (!c.peers.empty() && c.peer_id == 0)
        errors.push_back(c.path + ": [peers] is set but peer_id is 0: give this instance its own "
                                  "peer_id (1 to 63)");
    if (c.listen_addresses().empty() && c.unix_socket_dir.empty())
        errors.push_back(c.path + ": listen_addr and unix_socket_dir are both empty: nothing to listen on");
    return errors;
}

namespace {

bool is_https_url(const std::string& s)
{
    static constexpr std::string_view kScheme = "https://";
    if (s.size() <= kScheme.size())
        return false;
    for (size_t i = 0; i < kScheme.size(); ++i)
        if (std::tolower(static_cast<unsigned char>(s[i])) != kScheme[i])
            return false;
    return std::none_of(s.begin(), s.end(), [](char ch) { return static_cast<unsigned char>(ch) <= ' '; });
}

// Signing keys fetched over HTTPS by the key fetcher (src/jwks/): what for, and where
// the cache lives. Nothing is fetched here: the supervisor loads configurations and
// never waits for the network.
void plan_jwks_fetch(ParseState& st)
{
    Config& c = st.cfg;
    auto line_of = [&](const char* option) { return std::to_string(st.seen_options[option]); };
    if (!c.jwt_jwks_uri.empty()) {
        if (!is_https_url(c.jwt_jwks_uri)) {
            st.errors.push_back(st.name + ":" + line_of("jwt_jwks_uri") + ": jwt_jwks_uri must be an https:// address");
            return;
        }
        c.jwks_fetch_for = "jwks_uri " + c.jwt_jwks_uri;
    } else {
        c.jwks_fetch_for = "issuer";
        for (const auto& iss : split_list(c.jwt_issuer)) {
            if (!is_https_url(iss)) {
                st.errors.push_back(st.name + ":" + line_of("jwt_issuer") + ": issuer \"" + iss +
                                    "\" is not an https:// address, so its discovery document cannot be "
                                    "fetched: set jwt_jwks_uri or jwt_jwks_file");
                return;
            }
            c.jwks_fetch_for += " " + iss;
        }
    }
    if (!c.jwt_ca_file.empty() && ::access(c.jwt_ca_file.c_str(), R_OK) != 0)
        st.errors.push_back(st.name + ":" + line_of("jwt_ca_file") + ": jwt_ca_file " + c.jwt_ca_file + ": " +
                            std::strerror(errno));
    if (!c.jwt_jwks_cache.empty()) {
        c.jwks_cache_dir = c.jwt_jwks_cache;
    } else {
        // systemd's RuntimeDirectory= (a list when there are several), else /tmp.
        std::string base = "/tmp";
        if (const char* rd = std::getenv("RUNTIME_DIRECTORY"); rd && rd[0] == '/')
            base = std::string(rd).substr(0, std::string(rd).find(':'));
        c.jwks_cache_dir = base + "/pgwicket-jwks." + std::to_string(c.listen_port);
    }
    while (c.jwks_cache_dir.size() > 1 && c.jwks_cache_dir.back() == '/')
        c.jwks_cache_dir.pop_back();
    if (c.jwks_cache_dir.empty() || c.jwks_cache_dir[0] != '/')
        st.errors.push_back(st.name + ":" + line_of("jwt_jwks_cache") + ": jwt_jwks_cache must be an absolute path");
    // Workers reach the fetcher through a Unix socket in it (sun_path holds 107 bytes).
    else if (c.jwks_cache_dir.size() > 90)
        st.errors.push_back(st.name + ":" + line_of("jwt_jwks_cache") + ": jwt_jwks_cache " + c.jwks_cache_dir +
                            " is longer than 90 bytes");
}

// The files behind the auth options, and which of them the methods in use need.
void load_auth(ParseState& st)
{
    Config& c = st.cfg;
    auto line_of = [&](const char* option) { return std::to_string(st.seen_options[option]); };
    if (c.auth_type == "hba") {
        if (c.auth_hba_file.empty()) {
            st.errors.push_back(st.name + ":" + line_of("auth_type") + ": auth_type = hba needs auth_hba_file");
            return;
        }
        auto rules = auth::load_rules(c.auth_hba_file);
        if (!rules) {
            st.errors.push_back(rules.error());
            return;
        }
        c.rules = std::move(*rules);
    } else {
        // One method for everyone, as two rules (Unix socket and TCP).
        auth::Rule r;
        auth::parse_method(c.auth_type, r.method);
        r.file = st.name;
        r.line = st.seen_options["auth_type"];
        r.type = auth::ConnType::Local;
        c.rules.push_back(r);
        r.type = auth::ConnType::Host;
        c.rules.push_back(r);
    }
    bool needs_users = false, needs_jwks = false;
    for (const auto& r : c.rules) {
        needs_users |= r.method == auth::Method::Scram || r.method == auth::Method::Md5;
        needs_jwks |= r.method == auth::Method::Jwt;
    }
    if (needs_users) {
        if (c.auth_file.empty()) {
            st.errors.push_back(st.name + ": the scram-sha-256 and md5 methods need auth_file (\"user\" \"verifier\" lines)");
        } else if (auto users = auth::load_userlist(c.auth_file); !users) {
            st.errors.push_back(users.error());
        } else {
            c.users = std::move(*users);
        }
    }
    if (needs_jwks) {
        if (split_list(c.jwt_issuer).empty() || split_list(c.jwt_audience).empty()) {
            st.errors.push_back(st.name + ": the jwt method needs jwt_issuer and jwt_audience (the signing keys "
                                          "then come from jwt_issuer's discovery document, jwt_jwks_uri or "
                                          "jwt_jwks_file)");
        } else if (!c.jwt_jwks_file.empty()) {
            if (!c.jwt_jwks_uri.empty())
                st.errors.push_back(st.name + ":" + line_of("jwt_jwks_uri") +
                                    ": set jwt_jwks_file or jwt_jwks_uri, not both");
            else if (auto jwks = load_jwks(c.jwt_jwks_file); !jwks)
                st.errors.push_back(jwks.error());
            else
                c.jwks = std::move(*jwks);
        } else {
            plan_jwks_fetch(st);
        }
    }
}

Status validate(ParseState& st)
{
    Config& c = st.cfg;
    for (auto& d : c.databases) {
        const std::string at = st.name + ":" + std::to_string(d.line) + ": database \"" + d.name + "\": ";
        // Here, not in add_database: the continuation lines are all in by now.
        auto split = split_pool_keys(d.conninfo);
        if (!split) {
            st.errors.push_back(at + split.error());
            continue;
        }
        d.conninfo = std::move(split->conninfo);
        d.pool = split->pool;
        d.replicas = split->replicas;
        if (d.pool.pooled && c.min_pool_size_for(d) > c.pool_size_for(d))
            st.errors.push_back(at + "min_pool_size " + std::to_string(c.min_pool_size_for(d)) +
                                " is more than the pool size " + std::to_string(c.pool_size_for(d)));
        char* errmsg = nullptr;
        PQconninfoOption* opts = PQconninfoParse(d.conninfo.c_str(), &errmsg);
        if (!opts) {
            std::string msg = errmsg ? errmsg : "out of memory";
            while (!msg.empty() && msg.back() == '\n')
                msg.pop_back();
            st.errors.push_back(at + "invalid connection string: " + msg);
        }
        PQfreemem(errmsg);
        PQconninfoFree(opts);
    }
    // Only when nothing else is wrong: an entry refused above would otherwise be
    // reported a second time as "no entries".
    if (c.databases.empty() && st.errors.empty())
        st.errors.push_back(st.name + ": no [databases] entries: add one, for example \"* = "
                                      "host=127.0.0.1 port=5432\"");
    for (auto& e : cross_check(c))
        st.errors.push_back(std::move(e));
    if (!c.metrics_listen.empty())
        if (auto hp = parse_host_port(c.metrics_listen); !hp)
            st.errors.push_back(st.name + ":" + std::to_string(st.seen_options["metrics_listen"]) +
                                ": option \"metrics_listen\": " + hp.error());
    if (st.errors.empty())
        return ok_status();
    std::string all;
    for (const auto& e : st.errors) {
        if (!all.empty())
            all += "\n";
        all += e;
    }
    return Error{all};
}

Result<Config> parse(ParseState& st)
{
    st.cfg = defaults();
    st.cfg.path = st.name;
    int rc = ini_parse_stream(read_line, &st, on_entry, &st);
    if (rc > 0)
        st.errors.push_back(st.name + ":" + std::to_string(rc) +
                            ": syntax error (expected [section], name = value, or a comment)");
    else if (rc < 0)
        st.errors.push_back(st.name + ": could not parse (out of memory)");
    for (auto& p : st.cfg.policies)
        if (auto ok = policy::finish_policy(p); !ok)
            st.errors.push_back(p.file + ":" + std::to_string(p.line) + ": [policy." + p.name + "] " + ok.error());
    if (st.errors.empty())
        load_auth(st);
    Status s = validate(st);
    if (!s)
        return Error{s.error()};
    return std::move(st.cfg);
}

} // namespace

Config defaults()
{
    Config c;
    for (const auto& spec : options()) {
        std::string v(spec.default_value);
        if (spec.str_field)
            c.*(spec.str_field) = v;
        else
            c.*(spec.int_field) = std::strtol(v.c_str(), nullptr, spec.name == "unix_socket_mode" ? 8 : 10);
    }
    return c;
}

void keep_restart_only(const Config& running, Config& next,
                       const std::function<void(const OptionSpec&, const std::string& was, const std::string& now)>& note)
{
    for (const auto& spec : options()) {
        const std::string was = option_value(running, spec), now = option_value(next, spec);
        if (was == now)
            continue;
        if (spec.reload == ReloadClass::Restart) {
            if (spec.str_field)
                next.*(spec.str_field) = running.*(spec.str_field);
            else
                next.*(spec.int_field) = running.*(spec.int_field);
        }
        note(spec, was, now);
    }
}

std::string source_digest(const Config& cfg)
{
    std::string all;
    for (const std::string* path : {&cfg.path, &cfg.auth_hba_file, &cfg.auth_file, &cfg.jwt_jwks_file}) {
        all += *path;
        all.push_back('\0');
        if (path->empty())
            continue;
        std::ifstream in(*path, std::ios::binary);
        const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        all += std::to_string(text.size());
        all.push_back('\0');
        all += text;
    }
    const auto md = auth::ossl::sha256({reinterpret_cast<const std::uint8_t*>(all.data()), all.size()});
    static const char hex[] = "0123456789abcdef";
    std::string out;
    for (std::uint8_t b : md) {
        out.push_back(hex[b >> 4]);
        out.push_back(hex[b & 15]);
    }
    return out;
}

Result<Config> load_file(const std::string& path)
{
    std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "re"), &std::fclose);
    if (!f)
        return Error{path + ": could not open configuration file: " + std::strerror(errno)};
    ParseState st;
    st.name = path;
    st.file = f.get();
    return parse(st);
}

Result<Config> load_string(const std::string& text, const std::string& name)
{
    ParseState st;
    st.name = name;
    st.text = text.c_str();
    return parse(st);
}

const DatabaseEntry* Config::find_entry(const std::string& name) const
{
    for (const auto& d : databases)
        if (d.name == name)
            return &d;
    return nullptr;
}

const DatabaseEntry* Config::find_database(const std::string& name) const
{
    if (const DatabaseEntry* d = find_entry(name))
        return d;
    return find_entry("*");
}

long Config::pool_size_for(const DatabaseEntry& entry) const
{
    return entry.pool.pool_size >= 0 ? entry.pool.pool_size : default_pool_size;
}

long Config::min_pool_size_for(const DatabaseEntry& entry) const
{
    return entry.pool.min_pool_size >= 0 ? entry.pool.min_pool_size : min_pool_size;
}

long Config::reserve_pool_size_for(const DatabaseEntry& entry) const
{
    return entry.pool.reserve_pool_size >= 0 ? entry.pool.reserve_pool_size : reserve_pool_size;
}

long Config::max_db_connections_for(const DatabaseEntry& entry) const
{
    return entry.pool.max_db_connections >= 0 ? entry.pool.max_db_connections : max_db_connections;
}

const policy::Policy* Config::find_policy(const std::string& name) const
{
    for (const auto& p : policies)
        if (p.name == name)
            return &p;
    return nullptr;
}

const policy::Policy* Config::policy_for(const std::vector<std::string>& groups, const std::string& rule_policy,
                                         const std::string& database, std::string* source) const
{
    auto found = [&](const std::string& name, std::string why) -> const policy::Policy* {
        if (source)
            *source = std::move(why);
        return find_policy(name);
    };
    for (const auto& [group, name] : group_policies)
        for (const auto& g : groups)
            if (g == group)
                return found(name, "[group_policies] " + group);
    if (!rule_policy.empty())
        return found(rule_policy, "the rule's policy");
    if (auto it = database_policies.find(database); it != database_policies.end())
        return found(it->second, "[database_policies] " + database);
    if (!default_policy.empty())
        return found(default_policy, "default_policy");
    return nullptr;
}

const std::string* Config::role_for(const std::vector<std::string>& groups) const
{
    for (const auto& [group, role] : role_map)
        for (const auto& g : groups)
            if (g == group)
                return &role;
    return nullptr;
}


std::vector<std::string> Config::listen_addresses() const { return split_list(listen_addr); }

bool Config::is_admin_user(const std::string& user) const
{
    for (const auto& u : split_list(admin_users))
        if (u == user)
            return true;
    return false;
}

bool Config::is_stats_user(const std::string& user) const
{
    if (is_admin_user(user))
        return true;
    for (const auto& u : split_list(stats_users))
        if (u == user)
            return true;
    return false;
}

Result<HostPort> parse_host_port(const std::string& text)
{
    HostPort hp;
    size_t colon = text.rfind(':');
    if (colon == std::string::npos || colon + 1 == text.size())
        return Error{"\"" + text + "\" has no port; write host:port, for example 127.0.0.1:9632"};
    hp.host = text.substr(0, colon);
    hp.port = text.substr(colon + 1);
    if (hp.host.size() >= 2 && hp.host.front() == '[' && hp.host.back() == ']')
        hp.host = hp.host.substr(1, hp.host.size() - 2);
    char* end = nullptr;
    long port = std::strtol(hp.port.c_str(), &end, 10);
    if (*end != '\0' || port < 1 || port > 65535)
        return Error{"\"" + text + "\": port must be a number from 1 to 65535"};
    return hp;
}

log::Settings log_settings(const Config& cfg)
{
    log::Settings s;
    log::parse_level(cfg.log_level, s.level);
    s.logfile = cfg.logfile;
    s.syslog = cfg.syslog != 0;
    s.syslog_ident = cfg.syslog_ident;
    s.syslog_facility = cfg.syslog_facility;
    return s;
}

std::vector<std::string> split_list(const std::string& text)
{
    std::vector<std::string> out;
    std::string cur;
    for (char ch : text + ",") {
        if (ch == ',' || ch == ' ' || ch == '\t') {
            if (!cur.empty())
                out.push_back(cur);
            cur.clear();
        } else {
            cur.push_back(ch);
        }
    }
    return out;
}

} // namespace pgw::config
