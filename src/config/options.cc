// Definitions of every [pgwicket] option. Adding an option here is the whole
// change for the parser; make check then asks for its man page and sample entry.
#include "config/options.hh"

#include "config/config.hh"

#include <array>
#include <cstdio>

namespace pgw::config {
namespace {

using T = OptionType;
using R = ReloadClass;

const std::array<OptionSpec, 67> kOptions = {{
    {"listen_addr", T::String, "127.0.0.1", 0, 0, "", R::Restart,
     "TCP addresses to listen on, comma-separated; * for all, empty for none",
     nullptr, &Config::listen_addr},
    {"listen_port", T::Integer, "6432", 1, 65535, "", R::Restart,
     "TCP port, also used in the Unix socket name", &Config::listen_port, nullptr},
    {"unix_socket_dir", T::String, "/tmp", 0, 0, "", R::Restart,
     "directory for the Unix socket .s.PGSQL.<port>; empty disables it", nullptr,
     &Config::unix_socket_dir},
    {"unix_socket_mode", T::Integer, "0777", 0, 0777, "", R::Restart,
     "permissions of the Unix socket (octal)", &Config::unix_socket_mode, nullptr},
    {"max_client_conn", T::Integer, "100", 1, 100000, "", R::Restart,
     "most client sessions at once; more get SQLSTATE 53300", &Config::max_client_conn,
     nullptr},
    {"listen_backlog", T::Integer, "0", 0, 65535, "", R::Restart,
     "length of each listener's queue of connections not yet accepted; 0: the kernel's most",
     &Config::listen_backlog, nullptr},
    {"spare_workers", T::Integer, "4", 0, 256, "", R::Reload,
     "pre-forked idle workers kept ready so fork is off the connect path",
     &Config::spare_workers, nullptr},
    {"client_login_timeout", T::Seconds, "60", 1, 86400, "", R::Reload,
     "seconds a client has to send its startup packet", &Config::client_login_timeout,
     nullptr},
    {"server_connect_timeout", T::Seconds, "15", 1, 3600, "", R::Reload,
     "seconds to connect and log in to the upstream server", &Config::server_connect_timeout,
     nullptr},
    {"log_level", T::Enum, "info", 0, 0, "error|warning|info|debug", R::Reload,
     "least severe level written to the log", nullptr, &Config::log_level},
    {"logfile", T::String, "", 0, 0, "", R::Reload,
     "append the log to this file instead of stderr or journald; reopened on SIGHUP", nullptr,
     &Config::logfile},
    {"syslog", T::Integer, "0", 0, 1, "", R::Reload,
     "1 sends the log to syslog instead of stderr or journald", &Config::syslog, nullptr},
    {"syslog_ident", T::String, "pgwicket", 0, 0, "", R::Reload,
     "program name in syslog lines", nullptr, &Config::syslog_ident},
    {"syslog_facility", T::Enum, "daemon", 0, 0,
     "daemon|user|local0|local1|local2|local3|local4|local5|local6|local7", R::Reload,
     "syslog facility", nullptr, &Config::syslog_facility},
    {"pidfile", T::String, "", 0, 0, "", R::Restart,
     "write the supervisor's pid to this file", nullptr, &Config::pidfile},
    {"query_timeout", T::Seconds, "0", 0, 604800, "", R::Reload,
     "cancel a query that runs longer than this many seconds; 0 disables",
     &Config::query_timeout, nullptr},
    {"peer_id", T::Integer, "0", 0, 63, "", R::Restart,
     "this instance's id in the cancel keys it hands out, for [peers] forwarding",
     &Config::peer_id, nullptr},
    {"shutdown_timeout", T::Seconds, "30", 0, 86400, "", R::Reload,
     "on SIGTERM, seconds sessions may run before they are ended with 57P01", &Config::shutdown_timeout,
     nullptr},
    {"admin_users", T::String, "", 0, 0, "", R::Reload,
     "users who may run every admin console command (database pgwicket), comma-separated",
     nullptr, &Config::admin_users},
    {"stats_users", T::String, "", 0, 0, "", R::Reload,
     "users who may run the admin console's SHOW commands, comma-separated", nullptr,
     &Config::stats_users},
    {"metrics_listen", T::String, "", 0, 0, "", R::Restart,
     "host:port of the Prometheus metrics endpoint; empty disables it", nullptr,
     &Config::metrics_listen},
    {"client_tls_sslmode", T::Enum, "disable", 0, 0, "disable|allow|prefer|require", R::Reload,
     "TLS for clients: disable, allow or prefer (offered), require (plaintext refused)", nullptr,
     &Config::client_tls_sslmode},
    {"client_tls_cert_file", T::String, "", 0, 0, "", R::Reload,
     "PEM certificate (chain) pgwicket presents to clients; reread on SIGHUP", nullptr,
     &Config::client_tls_cert_file},
    {"client_tls_key_file", T::String, "", 0, 0, "", R::Reload,
     "PEM private key of client_tls_cert_file", nullptr, &Config::client_tls_key_file},
    {"client_tls_ca_file", T::String, "", 0, 0, "", R::Reload,
     "CA certificates for client certificates; when set, clients are asked for one", nullptr,
     &Config::client_tls_ca_file},
    {"client_tls_protocols", T::String, "tlsv1.2,tlsv1.3", 0, 0, "", R::Reload,
     "TLS versions accepted from clients: tlsv1.2, tlsv1.3, comma-separated", nullptr,
     &Config::client_tls_protocols},
    {"client_tls_ciphers", T::String, "HIGH:!aNULL:!MD5", 0, 0, "", R::Reload,
     "OpenSSL cipher list for TLS 1.2 clients", nullptr, &Config::client_tls_ciphers},
    {"auth_type", T::Enum, "trust", 0, 0, "trust|reject|scram-sha-256|md5|jwt|pass-through|hba", R::Reload,
     "how clients authenticate: one method for all, or hba to use auth_hba_file's rules",
     nullptr, &Config::auth_type},
    {"auth_hba_file", T::String, "", 0, 0, "", R::Reload,
     "rules file (pg_hba.conf style) used when auth_type = hba", nullptr, &Config::auth_hba_file},
    {"auth_file", T::String, "", 0, 0, "", R::Reload,
     "users and SCRAM (or md5) verifiers, \"user\" \"verifier\" per line", nullptr,
     &Config::auth_file},
    {"jwt_jwks_file", T::String, "", 0, 0, "", R::Reload,
     "JWKS file with the issuer's signing keys, instead of fetching them; reread on SIGHUP and unknown kid",
     nullptr, &Config::jwt_jwks_file},
    {"jwt_jwks_uri", T::String, "", 0, 0, "", R::Reload,
     "HTTPS address of the issuer's signing keys; empty: found through jwt_issuer's discovery document",
     nullptr, &Config::jwt_jwks_uri},
    {"jwt_ca_file", T::String, "", 0, 0, "", R::Reload,
     "CA certificates that the identity provider's HTTPS certificate must chain to; empty: the system's",
     nullptr, &Config::jwt_ca_file},
    {"jwt_http_proxy", T::String, "", 0, 0, "", R::Reload,
     "HTTP(S) proxy for fetching signing keys; empty: none (proxy environment variables are ignored)",
     nullptr, &Config::jwt_http_proxy},
    {"jwt_jwks_cache", T::String, "", 0, 0, "", R::Reload,
     "private directory where fetched signing keys are kept; empty: pgwicket-jwks.<port> in $RUNTIME_DIRECTORY or /tmp",
     nullptr, &Config::jwt_jwks_cache},
    {"jwt_fetch_connect_timeout", T::Seconds, "5", 1, 60, "", R::Reload,
     "seconds to connect to the identity provider when fetching signing keys",
     &Config::jwt_fetch_connect_timeout, nullptr},
    {"jwt_fetch_timeout", T::Seconds, "10", 1, 300, "", R::Reload,
     "seconds one HTTPS request for signing keys may take in all", &Config::jwt_fetch_timeout, nullptr},
    {"jwt_jwks_min_refresh", T::Seconds, "60", 1, 86400, "", R::Reload,
     "least time between two fetches of the signing keys (unknown kid, retries)",
     &Config::jwt_jwks_min_refresh, nullptr},
    {"jwt_jwks_max_stale", T::Seconds, "86400", 0, 2592000, "", R::Reload,
     "how long past their lifetime fetched keys stay in use while fetching fails",
     &Config::jwt_jwks_max_stale, nullptr},
    {"jwt_issuer", T::String, "", 0, 0, "", R::Reload,
     "accepted token issuers (iss), comma-separated", nullptr, &Config::jwt_issuer},
    {"jwt_audience", T::String, "", 0, 0, "", R::Reload,
     "accepted token audiences (aud), comma-separated", nullptr, &Config::jwt_audience},
    {"jwt_identity_claim", T::String, "email", 0, 0, "", R::Reload,
     "claim naming the person: email, upn, preferred_username, sub, ...", nullptr,
     &Config::jwt_identity_claim},
    {"jwt_groups_claim", T::String, "groups", 0, 0, "", R::Reload,
     "claim listing the person's groups or roles", nullptr, &Config::jwt_groups_claim},
    {"jwt_oauth_scope", T::String, "openid", 0, 0, "", R::Reload,
     "scope libpq 18 asks the provider for, in OAUTHBEARER's discovery answer", nullptr,
     &Config::jwt_oauth_scope},
    {"jwt_leeway", T::Seconds, "60", 0, 3600, "", R::Reload,
     "clock skew allowed when checking exp, nbf and iat", &Config::jwt_leeway, nullptr},
    {"default_policy", T::String, "", 0, 0, "", R::Reload,
     "the [policy.NAME] for sessions no other setting gives one; empty: none", nullptr,
     &Config::default_policy},
    {"audit_file", T::String, "", 0, 0, "", R::Reload,
     "append an audit record (JSON, one per line) per session and statement here; reopened on SIGHUP",
     nullptr, &Config::audit_file},
    {"audit_journald", T::Integer, "0", 0, 1, "", R::Reload,
     "1 also sends audit records to journald, with structured fields", &Config::audit_journald, nullptr},
    {"audit_statement_text", T::Enum, "normalized", 0, 0, "normalized|full", R::Reload,
     "normalized replaces literals with $1, $2, ...; full keeps them", nullptr, &Config::audit_statement_text},
    {"audit_parameters", T::Enum, "off", 0, 0, "off|on", R::Reload,
     "on records the bind parameters of extended-protocol statements (they hold data)", nullptr,
     &Config::audit_parameters},
    {"audit_parameter_max_size", T::Integer, "256", 0, 1048576, "", R::Reload,
     "bytes of each bind parameter recorded; longer ones are cut and marked", &Config::audit_parameter_max_size,
     nullptr},
    {"audit_failure", T::Enum, "block", 0, 0, "block|continue", R::Reload,
     "when a record cannot be written: block the session's statements, or continue with an alarm",
     nullptr, &Config::audit_failure},
    {"log_statements", T::Integer, "0", 0, 1, "", R::Reload,
     "1 logs a line per statement: tag, rows, bytes, duration, error code", &Config::log_statements, nullptr},
    {"application_name_prefix", T::String, "pgwicket", 0, 0, "", R::Reload,
     "prefix of the upstream application_name that names the client", nullptr,
     &Config::application_name_prefix},
    // Pooling: PgBouncer's names and meanings, for [databases] entries with pool_mode.
    {"default_pool_size", T::Integer, "20", 1, 10000, "", R::Reload,
     "upstream connections per pooled route, unless its entry sets pool_size",
     &Config::default_pool_size, nullptr},
    {"min_pool_size", T::Integer, "0", 0, 10000, "", R::Reload,
     "upstream connections a pooled route keeps open while no client uses them",
     &Config::min_pool_size, nullptr},
    {"reserve_pool_size", T::Integer, "0", 0, 10000, "", R::Reload,
     "extra upstream connections a full pooled route may open for clients waiting too long",
     &Config::reserve_pool_size, nullptr},
    {"reserve_pool_timeout", T::Seconds, "5", 0, 3600, "", R::Reload,
     "seconds a client waits on a full pool before the reserve is used", &Config::reserve_pool_timeout,
     nullptr},
    {"max_db_connections", T::Integer, "0", 0, 100000, "", R::Reload,
     "most upstream connections of one pooled entry, all its routes together; 0 for no limit",
     &Config::max_db_connections, nullptr},
    {"server_reset_query", T::String, "DISCARD ALL", 0, 0, "", R::Reload,
     "query that resets a pooled upstream connection before its next client", nullptr,
     &Config::server_reset_query},
    {"server_check_query", T::String, "", 0, 0, "", R::Reload,
     "query that checks an upstream connection idle for server_check_delay; empty sends an empty query",
     nullptr, &Config::server_check_query},
    {"server_check_delay", T::Seconds, "30", 0, 86400, "", R::Reload,
     "seconds a pooled upstream connection may sit idle before it is checked on reuse",
     &Config::server_check_delay, nullptr},
    {"server_lifetime", T::Seconds, "3600", 0, 604800, "", R::Reload,
     "seconds after which a pooled upstream connection is closed once free; 0 for no limit",
     &Config::server_lifetime, nullptr},
    {"server_idle_timeout", T::Seconds, "600", 0, 604800, "", R::Reload,
     "seconds a pooled upstream connection stays open unused; 0 for no limit",
     &Config::server_idle_timeout, nullptr},
    {"query_wait_timeout", T::Seconds, "120", 0, 86400, "", R::Reload,
     "seconds a client waits for a full pool before SQLSTATE 53300; 0 waits forever",
     &Config::query_wait_timeout, nullptr},
    {"server_check_period", T::Seconds, "5", 1, 3600, "", R::Reload,
     "seconds between the health checker's checks of each host of a multi-host entry",
     &Config::server_check_period, nullptr},
    {"ban_time", T::Seconds, "15", 0, 86400, "", R::Reload,
     "seconds a host that refused a connection is passed over (an entry's ban_time overrides it)",
     &Config::ban_time, nullptr},
}};

const std::array<std::string_view, 8> kSections = {"pgwicket",         "databases",         "peers",
                                                   "identity_map",     "roles",             "policy.NAME",
                                                   "database_policies", "group_policies"};

} // namespace

std::span<const OptionSpec> options() { return kOptions; }

const OptionSpec* find_option(std::string_view name)
{
    for (const auto& o : kOptions)
        if (o.name == name)
            return &o;
    return nullptr;
}

std::span<const std::string_view> sections() { return kSections; }

std::string option_value(const Config& cfg, const OptionSpec& spec)
{
    if (spec.str_field)
        return cfg.*(spec.str_field);
    long v = cfg.*(spec.int_field);
    if (spec.name == "unix_socket_mode") {
        char buf[16];
        std::snprintf(buf, sizeof buf, "0%lo", v);
        return buf;
    }
    return std::to_string(v);
}

} // namespace pgw::config
