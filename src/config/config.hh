// The immutable configuration value built from an INI file, and its parser.
// Errors carry the file, line and option so an operator can fix them at once.
#pragma once

#include "auth/jwt.hh"
#include "auth/rules.hh"
#include "common/log.hh"
#include "common/result.hh"
#include "policy/policy.hh"

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace pgw::config {

// Pooling keys taken out of the entry's connection string (PgBouncer's names);
// conninfo keeps only what libpq understands.
struct PoolSettings {
    bool pooled = false;          // pool_mode was given (only "session" exists so far)
    long pool_size = -1;          // -1: default_pool_size
    long min_pool_size = -1;      // -1: [pgwicket] min_pool_size
    long reserve_pool_size = -1;  // -1: [pgwicket] reserve_pool_size
    long max_db_connections = -1; // -1: [pgwicket] max_db_connections
};

// pgwicket's keys for an entry of several hosts (host=a,b,c): how a host is chosen
// among those that fit the entry's target_session_attrs (which stays in the string:
// libpq checks it again on the host chosen).
enum class LoadBalance { RoundRobin, Random, InOrder, LeastConnections };

struct ReplicaSettings {
    LoadBalance load_balance = LoadBalance::RoundRobin;
    long max_lag_bytes = -1;  // max_replica_lag as a size; -1: none
    long max_lag_ms = -1;     // max_replica_lag as a time; -1: none
    long ban_time = -1;       // seconds; -1: [pgwicket] ban_time
    bool read_routing = false;        // read_routing = auto: reads to standbys, the rest to the primary
    long read_after_write_ms = 1000;  // read_after_write_delay
};

struct DatabaseEntry {
    std::string name;      // client-visible database name, or "*"
    std::string conninfo;  // libpq connection string, without the pool keys
    int line = 0;
    // Brace-initialised so that DatabaseEntry{name, conninfo, line} stays free of
    // -Wmissing-field-initializers.
    PoolSettings pool{};
    ReplicaSettings replicas{};
};

// Another pgwicket instance behind the same load balancer, for cancel forwarding.
struct PeerEntry {
    long id = 0;
    std::string host;  // a host name, an address, or a Unix socket directory
    std::string port;
    int line = 0;
};

struct Config {
    std::string path;  // the file it came from

    // [pgwicket]; defaults come from the options table.
    std::string listen_addr;
    long listen_port = 0;
    std::string unix_socket_dir;
    long unix_socket_mode = 0;
    long max_client_conn = 0;
    long listen_backlog = 0;
    long spare_workers = 0;
    long client_login_timeout = 0;
    long server_connect_timeout = 0;
    std::string log_level;
    std::string logfile;
    std::string pidfile;
    std::string application_name_prefix;
    long query_timeout = 0;
    long peer_id = 0;
    long syslog = 0;
    std::string syslog_ident;
    std::string syslog_facility;
    long shutdown_timeout = 0;
    std::string admin_users;
    std::string stats_users;
    std::string metrics_listen;
    std::string client_tls_sslmode;
    std::string client_tls_cert_file;
    std::string client_tls_key_file;
    std::string client_tls_ca_file;
    std::string client_tls_protocols;
    std::string client_tls_ciphers;
    std::string auth_type;
    std::string auth_hba_file;
    std::string auth_file;
    std::string jwt_jwks_file;
    std::string jwt_jwks_uri;
    std::string jwt_ca_file;
    std::string jwt_http_proxy;
    std::string jwt_jwks_cache;
    long jwt_fetch_connect_timeout = 0;
    long jwt_fetch_timeout = 0;
    long jwt_jwks_min_refresh = 0;
    long jwt_jwks_max_stale = 0;
    std::string jwt_issuer;
    std::string jwt_audience;
    std::string jwt_identity_claim;
    std::string jwt_groups_claim;
    std::string jwt_oauth_scope;
    std::string default_policy;
    std::string audit_file;
    long audit_journald = 0;
    std::string audit_statement_text;
    std::string audit_parameters;
    long audit_parameter_max_size = 0;
    std::string audit_failure;
    long log_statements = 0;
    long jwt_leeway = 0;
    // Pooling (pooled [databases] entries only; see PoolSettings).
    long default_pool_size = 0;
    long min_pool_size = 0;
    long reserve_pool_size = 0;
    long reserve_pool_timeout = 0;
    long max_db_connections = 0;  // 0: no limit
    std::string server_reset_query;
    std::string server_check_query;  // empty: an empty query
    long server_check_delay = 0;
    long server_lifetime = 0;      // 0: no limit
    long server_idle_timeout = 0;  // 0: no limit
    long query_wait_timeout = 0;   // 0: wait forever
    long server_check_period = 0;  // the health checker's period per host
    long ban_time = 0;             // a host that failed a connect is passed over this long

    // [databases]
    std::vector<DatabaseEntry> databases;
    // [peers]
    std::vector<PeerEntry> peers;
    // [identity_map]: an SSO identity to the user names it may log in as.
    std::map<std::string, std::vector<std::string>> identity_map;
    // [roles]: an SSO group to the upstream role its members' sessions log in as,
    // in file order (the first group the person is in wins).
    std::vector<std::pair<std::string, std::string>> role_map;
    // The role for a person in `groups`, or nullptr.
    const std::string* role_for(const std::vector<std::string>& groups) const;

    // [policy.NAME] sections, and where they apply: [group_policies] (an SSO group),
    // a rule's policy=NAME, [database_policies] (a client database name), then
    // default_policy. Empty names mean no policy.
    std::vector<policy::Policy> policies;
    std::map<std::string, std::string> database_policies;
    std::vector<std::pair<std::string, std::string>> group_policies;
    const policy::Policy* find_policy(const std::string& name) const;
    // The policy for a session, or nullptr; `source` says which setting chose it.
    const policy::Policy* policy_for(const std::vector<std::string>& groups, const std::string& rule_policy,
                                     const std::string& database, std::string* source = nullptr) const;

    // Read from the files the options name, when the config is loaded (so
    // --check-config and a reload see their errors too).
    std::vector<auth::Rule> rules;                 // auth_hba_file, or one rule from auth_type
    std::map<std::string, std::string> users;      // auth_file
    std::shared_ptr<const auth::jwt::Jwks> jwks;   // jwt_jwks_file
    // Signing keys fetched from the identity provider (src/jwks/): empty when they are
    // not (no jwt rule, or jwt_jwks_file), else what they are fetched for, "jwks_uri URI"
    // or "issuer ISS1 ISS2", which the cache file must name too. The cache directory:
    // jwt_jwks_cache, or its default.
    std::string jwks_fetch_for;
    std::string jwks_cache_dir;

    // The entry for a client database name: the exact name, else "*", else null.
    const DatabaseEntry* find_database(const std::string& name) const;
    // The entry of exactly this name ("*" included), else null: a pool's own entry.
    const DatabaseEntry* find_entry(const std::string& name) const;
    // An entry's pool settings, its own value or else the [pgwicket] option's.
    long pool_size_for(const DatabaseEntry& entry) const;
    long min_pool_size_for(const DatabaseEntry& entry) const;
    long reserve_pool_size_for(const DatabaseEntry& entry) const;
    long max_db_connections_for(const DatabaseEntry& entry) const;
    // listen_addr split on commas and blanks; "*" stays "*".
    std::vector<std::string> listen_addresses() const;
    bool is_admin_user(const std::string& user) const;
    bool is_stats_user(const std::string& user) const;  // admin users are stats users too
};

// A comma- or blank-separated list, as listen_addr, admin_users and stats_users use.
std::vector<std::string> split_list(const std::string& text);

// Splits metrics_listen ("host:port", "[v6]:port" or ":port") into host and port.
struct HostPort {
    std::string host;
    std::string port;
};
Result<HostPort> parse_host_port(const std::string& text);

// Rules between options and sections ([peers] and peer_id, something to listen
// on); load_file applies them, and a reload again after keeping restart-only values.
std::vector<std::string> cross_check(const Config& cfg);

// A reload: keeps `running`'s values of the restart-only options in `next`, and calls
// `note` for each option whose value differs (restart-only ones too: `next` has the
// running value then).
struct OptionSpec;
void keep_restart_only(const Config& running, Config& next,
                       const std::function<void(const OptionSpec&, const std::string& was, const std::string& now)>& note);

// SHA-256 (hex) of every file a load of this configuration reads: the file itself and,
// when set, auth_hba_file, auth_file and jwt_jwks_file. Two processes that each loaded
// the file and got the same digest read the same configuration.
std::string source_digest(const Config& cfg);

// Reads and parses a JWKS file (jwt_jwks_file); workers call it again for an unknown kid.
Result<std::shared_ptr<const auth::jwt::Jwks>> load_jwks(const std::string& path);

// The log settings a configuration asks for.
log::Settings log_settings(const Config& cfg);

// Defaults only (what an empty file yields).
Config defaults();

Result<Config> load_file(const std::string& path);
// For tests: parse text as if it came from a file named `name`.
Result<Config> load_string(const std::string& text, const std::string& name = "<string>");

} // namespace pgw::config
