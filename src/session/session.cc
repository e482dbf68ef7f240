// The session state machine: first packet (SSL/GSS refusals, cancel, startup),
// database lookup, upstream connect, greeting, relay, and the log line at the end.
#include "session/session_impl.hh"

#include "admin/console.hh"
#include "auth/authenticate.hh"
#include "admin/metrics_http.hh"
#include "common/log.hh"
#include "common/net.hh"
#include "protocol/messages.hh"
#include "protocol/startup.hh"
#include "session/cancel.hh"
#include "session/audit_trail.hh"
#include "session/read_router.hh"
#include "session/policy_gate.hh"
#include "session/relay.hh"
#include "session/session_control.hh"
#include "upstream/connect.hh"
#include "tls/server_tls.hh"
#include "upstream/passthrough.hh"
#include "upstream/transport.hh"
#include "pool/context.hh"
#include "health/hosts.hh"
#include "pool/held.hh"

#include <poll.h>
#include <sys/socket.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <variant>

namespace pgw::session {

volatile std::sig_atomic_t g_stop_requested = 0;
volatile std::sig_atomic_t g_cancel_signal = 0;
volatile std::sig_atomic_t g_reopen_log = 0;
volatile std::sig_atomic_t g_drain_notice = 0;

using namespace std::chrono_literals;
using protocol::Bytes;

namespace {

struct PgCancelDeleter {
    void operator()(PGcancel* c) const { PQfreeCancel(c); }
};

// read_routing: the session's standby connection, as the router uses it.
class SessionStandby final : public StandbyLink {
public:
    SessionStandby(pool::HeldUpstream up, const ipc::TableHeader& table, ipc::Slot* slot, int row,
                   const config::ReplicaSettings& r)
        : held_(std::move(up)), transport_(held_.transport()), cancel_(PQgetCancel(held_.conn.get())), table_(table),
          slot_(slot), row_(row), replicas_(r)
    {
        PGconn* c = held_.conn.get();
        health::note_session_host(table, slot, 1, PQhost(c), PQport(c));
        watch_ = health::watch_of(table, health::Target::Standby, PQhost(c), PQport(c));
        route.transport = transport_.get();
        route.cancel = cancel_.get();
        route.where = held_.where;
        route.host = PQhost(c) ? PQhost(c) : "";
        route.port = PQport(c) ? PQport(c) : "";
        route.backend_pid = held_.backend_pid;
    }
    ~SessionStandby() override { health::note_session_host(table_, slot_, 1, nullptr, nullptr); }
    SessionStandby(const SessionStandby&) = delete;
    SessionStandby& operator=(const SessionStandby&) = delete;
    pool::HeldUpstream& held() { return held_; }
    int row() const { return row_; }
    bool fits() override
    {
        if (health::role_changed(table_, watch_, nullptr))
            return false;
        if (row_ < 0)
            return true;  // not listed by the checker: libpq checked its role at connect
        health::Candidate c{true, health::read_host(table_, std::uint32_t(row_))};
        return !health::choose_hosts({c}, health::Target::Standby, replicas_, health::monotonic_ms(), 0, 0)
                    .order.empty();
    }

private:
    pool::HeldUpstream held_;
    std::unique_ptr<upstream::Transport> transport_;
    std::unique_ptr<PGcancel, PgCancelDeleter> cancel_;
    const ipc::TableHeader& table_;
    ipc::Slot* slot_;
    int row_;
    config::ReplicaSettings replicas_;
    health::HostWatch watch_;
};

const char* str_or_empty(const char* s) { return s ? s : ""; }


ipc::Counter auth_failure_counter(auth::Method m)
{
    switch (m) {
    case auth::Method::Scram:
        return ipc::kAuthFailuresScram;
    case auth::Method::Md5:
        return ipc::kAuthFailuresMd5;
    case auth::Method::Jwt:
        return ipc::kAuthFailuresJwt;
    case auth::Method::Reject:
    case auth::Method::Trust:
    case auth::Method::PassThrough:
        break;
    }
    return ipc::kAuthFailuresRejected;
}
} // namespace

// A port as libpq or the config spells it; 0 (null in the record) when it is not a number.
std::uint32_t port_number(const std::string& port)
{
    char* end = nullptr;
    unsigned long v = std::strtoul(port.c_str(), &end, 10);
    return port.empty() || *end != '\0' || v > 65535 ? 0 : std::uint32_t(v);
}

// The login and startup packet a session context carries (a moved client, a prefill).
std::pair<Login, protocol::StartupMessage> login_of(pool::SessionContext&& ctx)
{
    protocol::StartupMessage startup;
    startup.major = 3;
    startup.minor = ctx.protocol_minor;
    startup.params = std::move(ctx.startup);
    return {Login{std::move(ctx.user), std::move(ctx.database), std::move(ctx.identity), auth::Method(ctx.method),
                  std::move(ctx.groups), std::move(ctx.rule_policy)},
            std::move(startup)};
}

// What the upstream connection of a login depends on besides the entry: the client's
// startup settings, the policy's settings, the [roles] role. Pooled routes are keyed on
// it, so a client's session and a prefill must build it alike.
upstream::ClientInfo client_info(const config::Config& cfg, const Login& login, const protocol::StartupMessage& startup,
                                 const std::string& host, const policy::Policy* policy)
{
    upstream::ClientInfo info{login.user, login.database, host, &startup,
                              login.sso() ? login.identity : std::string(), "", {}};
    if (policy)
        info.settings = policy->upstream_settings();
    if (const std::string* role = cfg.role_for(login.groups))
        info.role = *role;
    return info;
}

std::variant<protocol::StartupMessage, ExitCode> Session::read_startup()
{
    const auto deadline = login_deadline_;
    bool ssl_refused = false, gss_refused = false;
    bool refused_just_now = false;  // 'N' sent: the startup packet is a round trip away
    for (;;) {
        if (std::exchange(refused_just_now, false)) {
            // Wait before reading, not after a read that finds nothing (a timeout or a
            // signal here is seen by the read below).
            pollfd p{client_.get(), POLLIN, 0};
            ::poll(&p, 1, net::ms_until(deadline));
        }
        // One read takes the length, the code and, for the 8-byte requests, whatever the
        // client sent behind them; the rest of a longer packet follows in one more.
        std::byte head[16];
        size_t have = 0;
        auto rs = conn_.read_between(head, 4, sizeof head, deadline, have);
        if (rs == net::ReadStatus::Timeout) {
            log_info("startup packet not received within client_login_timeout (%lds)",
                     cfg_.client_login_timeout);
            return kExitStartupTimeout;
        }
        if (rs != net::ReadStatus::Ok) {
            // Port probes and clients that give up close here; nothing to answer.
            log_debug("client closed the connection before its startup packet");
            return kExitOk;
        }
        std::uint32_t len = protocol::load_be32(head);
        if (auto err = protocol::check_startup_length(len)) {
            log_info("rejected startup: %s (length %u)", err->message.c_str(), len);
            return refuse_startup(*err);
        }
        std::vector<std::byte> body(len - 4);
        const size_t in_head = std::min(have - 4, body.size());
        std::copy_n(head + 4, in_head, body.begin());
        // Bytes read past a short packet: sent behind it, before our answer.
        const bool sent_behind = have - 4 > body.size();
        rs = conn_.read_exact(body.data() + in_head, body.size() - in_head, deadline);
        if (rs == net::ReadStatus::Timeout) {
            log_info("incomplete startup packet: timed out after client_login_timeout (%lds)",
                     cfg_.client_login_timeout);
            return kExitStartupTimeout;
        }
        if (rs != net::ReadStatus::Ok) {
            log_info("incomplete startup packet");
            return kExitClientError;
        }
        auto decoded = protocol::decode_first_packet(body);
        if (auto* err = std::get_if<protocol::StartupError>(&decoded)) {
            log_info("rejected startup: %s", err->message.c_str());
            return refuse_startup(*err);
        }
        auto& fp = std::get<protocol::FirstPacket>(decoded);
        switch (fp.kind) {
        case protocol::FirstPacketKind::SslRequest:
        case protocol::FirstPacketKind::GssEncRequest: {
            const bool ssl = fp.kind == protocol::FirstPacketKind::SslRequest;
            bool& seen = ssl ? ssl_refused : gss_refused;
            if (seen) {
                // PostgreSQL takes a second request's code for a protocol version.
                log_info("rejected startup: a second %s", ssl ? "SSLRequest" : "GSSENCRequest");
                return refuse_startup(
                    protocol::unsupported_protocol(ssl ? protocol::kSslRequestCode : protocol::kGssEncRequestCode));
            }
            seen = true;
            // Bytes sent behind the request, before our answer, were not protected by
            // the TLS the client asked for: refuse them, as PostgreSQL does (CVE-2021-23214),
            // after the answer. Those that came with the request were read with it (as
            // PostgreSQL finds them in its buffer); later bytes are the client's reply.
            const bool injected = !conn_.is_tls() && sent_behind;
            // GSS encryption is always declined, TLS when it is off; libpq then goes on in
            // plaintext on the same socket (or gives up, if it requires encryption).
            const bool tls = ssl && tls_ctx_ && !conn_.is_tls();
            const char answer = tls ? 'S' : 'N';
            if (!conn_.write_all(&answer, 1, deadline))
                return kExitClientError;
            refused_just_now = !tls;
            if (injected) {
                protocol::ErrorFields e;
                e.sqlstate = "08P01";
                e.message = ssl ? "received unencrypted data after SSL request"
                                : "received unencrypted data after GSSAPI encryption request";
                e.detail = "This could be either a client-software bug or evidence of an attempted "
                           "man-in-the-middle attack.";
                log_info("rejected startup: %s", e.message.c_str());
                return fail(e, kExitClientError);
            }
            if (tls) {
                if (auto st = conn_.start_tls(tls_ctx_, deadline); !st) {
                    log_info("%s", st.error().c_str());
                    return kExitClientError;
                }
                log_debug("TLS established: %s", conn_.describe_tls().c_str());
            }
            continue;
        }
        case protocol::FirstPacketKind::Cancel:
            // Answered, as by PostgreSQL, only by closing the connection.
            handle_cancel_request(cfg_, table_, fp.cancel, fp.hops, peer_,
                                  slot() ? &slot()->counters : nullptr);
            return kExitOk;
        case protocol::FirstPacketKind::Startup:
            if (may_pass_on())
                startup_packet_ = std::move(body);
            return std::move(fp.startup);
        }
    }
}

std::variant<protocol::StartupMessage, ExitCode> Session::passed_on_startup()
{
    auto decoded = protocol::decode_first_packet(protocol::as_bytes(payload_));
    auto* fp = std::get_if<protocol::FirstPacket>(&decoded);
    if (!fp || fp->kind != protocol::FirstPacketKind::Startup) {
        log_error("a session passed on without a startup packet");
        return kExitChannelError;
    }
    log_debug("startup packet passed on by a warm worker");
    return std::move(fp->startup);
}

ExitCode Session::start_session(const protocol::StartupMessage& startup)
{
    const std::string user = *startup.get("user");
    const std::string* db_param = startup.get("database");
    const std::string database = db_param && !db_param->empty() ? *db_param : user;
    if (!startup_packet_.empty() && serves_elsewhere(user, database))
        return pass_on();
    log::set_prefix("C-" + std::to_string(handoff_.session_id) + ": " + database + "/" + user +
                    "@" + peer_);

    // 3.2 as asked, and its 32-byte cancel secret (as PostgreSQL 18); a newer minor is
    // offered 3.2; 3.1, which no client uses, 3.0, as PostgreSQL 15 answers it. Unknown
    // _pq_ options are listed, as the server does.
    const std::uint16_t minor = startup.minor == 1 ? 0 : std::min(startup.minor, protocol::kNewestMinor);
    if (startup.minor != minor || !startup.unknown_protocol_options.empty())
        if (!send(protocol::negotiate_protocol_version(minor, startup.unknown_protocol_options)))
            return kExitClientError;
    secret_length_ = minor >= 2 ? ipc::kSecretBytes : 4;
    if (const std::string* repl = startup.get("replication");
        repl && *repl != "false" && *repl != "off" && *repl != "no" && *repl != "0") {
        log_info("refused replication connection");
        return fail("0A000", "replication connections are not supported by pgwicket",
                    kExitRefused, "Connect replication clients to the server directly.");
    }

    if (cfg_.client_tls_sslmode == "require" && !local() && !conn_.is_tls()) {
        log_info("refused: plaintext connection and client_tls_sslmode = require");
        if (ipc::Slot* sl = slot())
            sl->counters.add(ipc::kAuthFailuresRejected, 1);
        return fail("28000", "pgwicket requires TLS connections (client_tls_sslmode = require)", kExitRefused,
                    "Connect with sslmode=require or verify-full.");
    }

    auth::AuthRequest areq{cfg_, conn_, user, database, local(), local() ? nullptr : &handoff_.peer, peer_host_,
                           login_deadline_, &table_};
    auth::AuthResult who = auth::authenticate(areq);
    if (!who.ok) {
        if (who.client_left) {
            // libpq closes and asks the user for a password when it has none: not an error.
            log_debug("%s", who.log.c_str());
            return kExitOk;
        }
        log_info("authentication failed: %s", who.log.c_str());
        if (ipc::Slot* sl = slot())
            sl->counters.add(auth_failure_counter(who.method), 1);
        protocol::ErrorFields e;
        e.sqlstate = who.sqlstate;
        e.message = who.message;
        e.hint = who.hint;
        return fail(e, kExitRefused);
    }
    Login login{user, database, who.identity, who.method, who.groups, who.rule_policy};
    log_info("%s (%s%s%s)%s%s",
             who.method == auth::Method::PassThrough ? "login handed to the upstream server" : "authenticated",
             auth::method_name(who.method), login.sso() ? ", identity " : "",
             login.sso() ? login.identity.c_str() : "", conn_.is_tls() ? ", " : "",
             conn_.is_tls() ? conn_.describe_tls().c_str() : "");
    if (database == admin::kConsoleDatabase) {
        set_login_prefix(login);
        if (ipc::Slot* sl = slot())
            sl->identity.set(login.identity);
        const std::string* app = startup.get("application_name");
        publish_client(user, database, startup);
        admin::ConsoleSession cs{cfg_, table_, conn_, slot(), user, app ? *app : "", secret_length_};
        return ExitCode(admin::run_console(cs));
    }
    return proceed(login, startup);
}

void Session::set_login_prefix(const Login& login)
{
    if (login.sso())
        log::set_prefix("C-" + std::to_string(handoff_.session_id) + ": " + login.database + "/" + login.user +
                        "(" + login.identity + ")@" + peer_);
    else
        log::set_prefix("C-" + std::to_string(handoff_.session_id) + ": " + login.database + "/" + login.user +
                        "@" + peer_);
}

// From an authenticated login to the relay: the entry, the policy, the audit trail,
// the upstream (connected here, or held from the previous session on a pooled route).
ExitCode Session::proceed(const Login& login, const protocol::StartupMessage& startup)
{
    const std::string& user = login.user;
    const std::string& database = login.database;
    set_login_prefix(login);
    if (ipc::Slot* sl = slot())
        sl->identity.set(login.identity);

    const config::DatabaseEntry* entry = cfg_.find_database(database);
    if (!entry) {
        log_info("refused: no [databases] entry for \"%s\"", database.c_str());
        return fail("3D000", "database \"" + database + "\" does not exist", kExitRefused,
                    "pgwicket has no [databases] entry for it and no \"*\" fallback.");
    }

    std::string policy_source;
    policy_ = cfg_.policy_for(login.groups, login.rule_policy, database, &policy_source);
    if (policy_)
        log_info("policy \"%s\" (from %s)", policy_->name.c_str(), policy_source.c_str());
    const upstream::ClientInfo info = client_info(cfg_, login, startup, peer_host_, policy_);
    if (!info.role.empty())
        log_info("upstream role \"%s\" from [roles]", info.role.c_str());
    if (audit_sink_.enabled() || cfg_.log_statements) {
        audit::SessionInfo ai;
        ai.session_id = handoff_.session_id;
        ai.identity = login.identity;
        ai.user = user;
        ai.client = peer_;
        const std::string* app = startup.get("application_name");
        ai.application_name = app ? *app : "";
        ai.database = database;
        ai.policy = policy_ ? policy_->name : "";
        trail_.emplace(audit_sink_, std::move(ai), cfg_.audit_statement_text == "full", cfg_.log_statements != 0,
                       cfg_.audit_parameters == "on" ? cfg_.audit_parameter_max_size : -1);
    }
    if ((!entry->pool.pooled || login.method == auth::Method::PassThrough) && ws_.held) {
        // A warm worker got a client of an unpooled entry: its pooled connection goes,
        // and the process ends with this session, as every unpooled one does.
        log_debug("closing the pooled connection of %s for an unpooled session", ws_.held->route.c_str());
        ws_.held.reset();
        if (auto st = ipc::send_message(ws_.channel, ipc::HandoffType::Released); !st)
            log_warning("telling the supervisor of a closed pooled connection: %s", st.error().c_str());
    }
    if (login.method == auth::Method::PassThrough)
        return pass_through(*entry, info, startup);
    auto params = upstream::build_params(*entry, info, cfg_.application_name_prefix);
    if (!params)
        return fail("08006", params.error(), kExitUpstreamFailure);
    publish_client(user, database, startup);

    if (entry->replicas.read_routing) {
        // The session's own connection is the primary's; reads go to a standby of the
        // same hosts, opened when the first one comes.
        routing_entry_ = entry;  // (build_params made the session's own connection the primary's)
        routing_params_ = *params;
        upstream::put(routing_params_, "target_session_attrs", "standby");
    }
    // The hosts to try, from what the health checker last saw (multi-host entries).
    ban_seconds_ = entry->replicas.ban_time >= 0 ? entry->replicas.ban_time : cfg_.ban_time;
    health::Attempts plan = plan_hosts(*params, entry->replicas);
    target_ = plan.target;
    if (plan.tries.empty()) {
        log_info("refused: %s", plan.why_none.c_str());
        return fail("08006", "no upstream host of database \"" + database + "\" can take this session: " + plan.why_none,
                    kExitUpstreamFailure, "Try again later; SHOW HOSTS in pgwicket's admin console lists the hosts.");
    }
    std::string front_route;  // the first host's route key, when known here
    if (entry->pool.pooled && ws_.held) {
        // A warm worker: its connection's host first when it fits (a moved client goes
        // on with the host its first worker chose, whatever fits now).
        auto held_host = [&](const health::Attempt& a) { return pool::route_key(entry->name, a.params) == ws_.held->route; };
        auto fit = std::find_if(plan.tries.begin(), plan.tries.end(), held_host);
        if (fit != plan.tries.end()) {
            std::rotate(plan.tries.begin(), fit, fit + 1);
            front_route = ws_.held->route;
        } else if (handoff_.type == ipc::HandoffType::MoveClient) {
            if (auto any = std::find_if(plan.every.begin(), plan.every.end(), held_host); any != plan.every.end()) {
                plan.tries.insert(plan.tries.begin(), *any);
                front_route = ws_.held->route;
            }
        }
    }
    if (entry->pool.pooled)
        return pooled_session(login, startup, *entry, plan.tries, front_route);

    upstream::PgConnPtr conn;
    std::string where;
    if (auto code = connect_upstream(plan.tries, database, conn, &where))
        return *code;
    PGconn* pg = conn.get();
    log_info("connected to upstream (%s), backend pid %d%s", where.c_str(), PQbackendPID(pg),
             PQsslInUse(pg) ? ", TLS" : "");
    pool::HeldUpstream up = pool::hold(std::move(conn), "", where);
    up.watch = watch_of(up.conn.get());
    return establish(up);
}

// Opens the session's own upstream connection, trying each host of the plan in turn;
// on failure the client has its error and the returned code ends the session.
std::optional<ExitCode> Session::connect_upstream(const std::vector<health::Attempt>& tries, const std::string& database,
                                                  upstream::PgConnPtr& conn, std::string* where_out)
{
    std::string where;
    upstream::ConnectFailure why;
    for (size_t i = 0; i < tries.size(); ++i) {
        where = upstream::describe(tries[i].params);
        if (where_out)
            *where_out = where;
        if (try_host(tries[i], database, conn, why))
            return std::nullopt;
        if (i + 1 < tries.size())
            log_warning("upstream connection failed (%s): %s; trying the next host", where.c_str(), why.message.c_str());
    }
    return connect_failed(why, where, database);
}

bool Session::try_host(const health::Attempt& attempt, const std::string& database, upstream::PgConnPtr& conn,
                       upstream::ConnectFailure& why)
{
    auto deadline = net::Clock::now() + std::chrono::seconds(cfg_.server_connect_timeout);
    why = {};
    // Should libpq stay inside one step past the deadline (a server asking for 2^31
    // SCRAM iterations), the watchdog ends the worker; a plaintext client gets this
    // first (a TLS client, only the close: no TLS record can be made in a signal handler).
    upstream::set_watchdog_last_words(
        conn_.is_tls() ? -1 : client_.get(),
        protocol::fatal("08006", "could not connect to upstream server for database \"" + database + "\" (" +
                                     upstream::describe(attempt.params) +
                                     "): timed out (server_connect_timeout) while libpq was busy with the server's login"),
        kExitUpstreamFailure);
    auto c = upstream::connect(attempt.params, deadline, &why);
    upstream::set_watchdog_last_words(-1, {}, kExitUpstreamFailure);
    if (c) {
        conn = std::move(*c);
        return true;
    }
    ban_if_host_failed(attempt.row, why);
    return false;
}

void Session::ban_if_host_failed(int row, const upstream::ConnectFailure& why)
{
    if (row >= 0 && upstream::host_refused(why) && ban_seconds_ > 0)
        health::ban_host(*table_.header(), std::uint32_t(row), health::monotonic_ms() + ban_seconds_ * 1000);
}

ExitCode Session::connect_failed(const upstream::ConnectFailure& why, const std::string& where,
                                 const std::string& database)
{
    if (ipc::Slot* sl = slot()) {
        sl->counters.add(ipc::kUpstreamConnectFailures, 1);
        if (why.server_sqlstate.compare(0, 2, "28") == 0)
            sl->counters.add(ipc::kAuthFailuresUpstream, 1);
    }
    log_warning("upstream connection failed (%s): %s%s%s", where.c_str(), why.server_sqlstate.c_str(),
                why.server_sqlstate.empty() ? "" : ": ", why.message.c_str());
    if (!why.server_sqlstate.empty()) {
        // The server refused this login: pass its own error on, as a direct
        // connection would show it, and say which upstream said it.
        protocol::ErrorFields e;
        e.sqlstate = why.server_sqlstate;
        e.message = why.message;
        e.detail = "Reported by the upstream server for database \"" + database + "\" (" + where + ").";
        return fail(e, kExitUpstreamFailure);
    }
    return fail("08006",
                "could not connect to upstream server for database \"" + database + "\" (" + where +
                    "): " + why.message,
                kExitUpstreamFailure);
}

// The greeting on a connected upstream, then the relay. With `reusable` (a pooled
// session) the client's Terminate stays here, and it says whether the connection may
// serve another client.
ExitCode Session::establish(pool::HeldUpstream& up, bool* reusable)
{
    // The greeting: the upstream's real parameters and status, our own cancel key.
    protocol::Writer greeting;
    greeting.raw(protocol::authentication_ok());
    for (const auto& [name, value] : up.parameters)
        protocol::parameter_status(greeting, name, value);
    // The cancel key: the backend's own pid, so that drivers, pg_stat_activity and the
    // server's log agree, and our secret (the upstream's stays here), new for every
    // session. Published in the slot before the client can know it.
    auto secret = ipc::new_cancel_secret(secret_length_);
    if (!secret)
        return fail("XX000", "could not generate a cancel key", kExitInternal);
    ipc::publish_cancel_key(slot(), up.backend_pid, *secret);
    greeting.raw(protocol::backend_key_data(up.backend_pid, *secret));
    char status = 'I';
    switch (PQtransactionStatus(up.conn.get())) {
    case PQTRANS_INTRANS:
        status = 'T';
        break;
    case PQTRANS_INERROR:
        status = 'E';
        break;
    default:
        break;
    }
    note_upstream(up.where, str_or_empty(PQhost(up.conn.get())), str_or_empty(PQport(up.conn.get())),
                  up.backend_pid);
    health::note_session_host(*table_.header(), slot(), 0, PQhost(up.conn.get()), PQport(up.conn.get()));
    if (auto refused = audit_session_start())
        return *refused;
    greeting.raw(protocol::ready_for_query(status));
    if (!send(greeting.bytes())) {
        // The client left before the greeting: the upstream never saw it.
        if (reusable)
            *reusable = true;
        return kExitOk;
    }

    watch_ = up.watch;
    int upstream_fd = up.fd();  // non-blocking since pool::hold()
    auto server = up.transport();
    std::unique_ptr<PGcancel, PgCancelDeleter> pg_cancel(PQgetCancel(up.conn.get()));
    auto cancel = [c = pg_cancel.get()]() -> Status {
        char err[256] = "";
        if (!PQcancel(c, err, sizeof err))
            return Error{err};
        return ok_status();
    };
    if (!routing_entry_)
        return run_relay(*server, upstream_fd, status, pg_cancel ? std::function<Status()>(cancel) : nullptr, reusable);

    RouteHost primary{server.get(), pg_cancel.get(), up.where, str_or_empty(PQhost(up.conn.get())),
                      str_or_empty(PQport(up.conn.get())), up.backend_pid};
    ReadRouter::Hooks hooks;
    hooks.open_standby = [this] { return open_standby(); };
    hooks.on_switch = [this](const RouteHost& h, ReadRouter::Side side) {
        log_debug("read routing: statements go to the %s (%s) now", side == ReadRouter::kStandby ? "standby" : "primary",
                  h.where.c_str());
        note_upstream(h.where, h.host, h.port, h.backend_pid);
    };
    hooks.on_unit = [this](ReadRouter::Side side) {
        if (ipc::Slot* sl = slot())
            sl->counters.add(side == ReadRouter::kStandby ? ipc::kRoutedStandby : ipc::kRoutedPrimary, 1);
    };
    ReadRouter router(primary, policy_ ? policy_->functions : policy::FunctionAllowlist::builtin(), classify_cache_,
                      routing_entry_->replicas.read_after_write_ms, std::move(hooks));
    router_ = &router;
    const ExitCode code =
        run_relay(router, upstream_fd, status, [&router] { return router.cancel_running(); }, reusable);
    router_ = nullptr;
    log_info("read routing: %llu units to the primary, %llu to a standby%s",
             (unsigned long long)router.units(ReadRouter::kPrimary),
             (unsigned long long)router.units(ReadRouter::kStandby), router.pinned() ? " (pinned to the primary)" : "");
    if (reusable && *reusable) {
        // A pooled connection serves its next client with its standby connection, when
        // nothing was under way on either host as the client left.
        if (!router.idle()) {
            *reusable = false;
        } else if (auto link = router.release_standby()) {
            auto& used = static_cast<SessionStandby&>(*link);
            up.standby = std::make_unique<pool::HeldUpstream>(std::move(used.held()));
            up.standby_row = used.row();
            up.standby->reset_pending = true;  // keep_warm resets it with the primary
            up.standby->idle_since = net::Clock::now();
            ++up.standby->sessions;
        }
    }
    return code;
}

// read_routing: a connection to a standby of the session's entry, chosen as a session
// with target_session_attrs=standby would be; null when none can be had now.
std::unique_ptr<StandbyLink> Session::open_standby()
{
    if (ws_.held && ws_.held->standby) {
        // A pooled connection's standby, kept from an earlier session: used again when it
        // still serves reads and the server left it alone, named for this client.
        std::unique_ptr<pool::HeldUpstream> kept = std::move(ws_.held->standby);
        auto link = std::make_unique<SessionStandby>(std::move(*kept), *table_.header(), slot(), ws_.held->standby_row,
                                                     routing_entry_->replicas);
        pool::HeldUpstream& h = link->held();
        Status ok = ok_status();
        if (!h.conn || pool::stirred(h))
            ok = Error{"the server closed it or spoke while it was idle"};
        else if (!link->fits())
            ok = Error{"its host no longer serves reads"};
        else if (const std::string* app = upstream::get(routing_params_, "application_name");
                 app && h.parameters["application_name"] != *app)
            ok = pool::set_application_name(h, *app,
                                            net::Clock::now() + std::chrono::seconds(cfg_.server_connect_timeout));
        if (ok) {
            log_debug("read routing: reusing the standby connection (%s, backend pid %u)", h.where.c_str(),
                      h.backend_pid);
            return link;
        }
        log_info("read routing: the kept standby connection (%s, backend pid %u) is not usable (%s); connecting afresh",
                 h.where.c_str(), h.backend_pid, ok.error().c_str());
    }
    health::Attempts plan = plan_hosts(routing_params_, routing_entry_->replicas);
    if (plan.tries.empty()) {
        log_debug("read routing: reads go to the primary: %s", plan.why_none.c_str());
        return nullptr;
    }
    // Two tries at most: the session waits meanwhile.
    for (size_t i = 0; i < plan.tries.size() && i < 2; ++i) {
        const health::Attempt& t = plan.tries[i];
        const std::string where = upstream::describe(t.params);
        upstream::ConnectFailure why;
        auto c = upstream::connect(t.params, net::Clock::now() + std::chrono::seconds(cfg_.server_connect_timeout), &why);
        if (!c) {
            log_warning("read routing: standby connection failed (%s): %s; reads go to the primary meanwhile",
                        where.c_str(), why.message.c_str());
            ban_if_host_failed(t.row, why);
            continue;
        }
        log_info("read routing: connected to standby (%s), backend pid %d%s", where.c_str(), PQbackendPID(c->get()),
                 PQsslInUse(c->get()) ? ", TLS" : "");
        return std::make_unique<SessionStandby>(pool::hold(std::move(*c), "", where), *table_.header(), slot(), t.row,
                                                routing_entry_->replicas);
    }
    return nullptr;
}

// The session_start record, written before the client's first ReadyForQuery: with
// audit_failure = block, a session that cannot be recorded never looks established.
std::optional<ExitCode> Session::audit_session_start()
{
    if (!trail_ || trail_->write(audit::Event::SessionStart))
        return std::nullopt;
    log_error("AUDIT FAILURE: %s", trail_->error().c_str());
    if (cfg_.audit_failure != "block")
        return std::nullopt;
    return fail("58030", "pgwicket cannot write its audit trail, so it accepts no sessions", kExitRefused,
                "Tell the pgwicket operator (audit_file).");
}

// The established session, whichever way the upstream was reached: relay until the
// end, then log it and name the exit.
ExitCode Session::run_relay(upstream::Transport& server, int upstream_fd, char status, std::function<Status()> cancel,
                           bool* reusable)
{
    const bool pooled = reusable != nullptr;
    std::unique_ptr<upstream::Transport> client;
    if (conn_.is_tls())
        client = std::make_unique<upstream::TlsTransport>(conn_.ssl(), client_.get());
    else
        client = std::make_unique<upstream::PlainTransport>(client_.get());
    std::optional<PolicyGate> gate;
    SessionControl* control_ptr = nullptr;  // set below; the gate's override callback needs it
    if (policy_ || trail_)
        gate.emplace(policy_, classify_cache_, [this](char type, protocol::ByteSpan body, const std::string& kind,
                                     const std::string& reason) {
            log_info("denied by policy \"%s\": %s statement: %s", policy_->name.c_str(), kind.c_str(), reason.c_str());
            if (ipc::Slot* sl = slot())
                sl->counters.add(ipc::kStatementsDenied, 1);
            if (trail_)
                trail_->on_denied(type, body, policy_->name, kind, reason);
        }, [this, &control_ptr](const std::string& setting, long value) {
            if (control_ptr && policy_)
                control_ptr->set_cap(setting, value, *policy_);
        });
    const long query_timeout = policy_ && policy_->query_timeout >= 0 ? policy_->query_timeout : cfg_.query_timeout;
    SessionControl control(cfg_, slot(), std::move(cancel), client_.get(), upstream_fd, gate ? &*gate : nullptr,
                           trail_ ? &*trail_ : nullptr, query_timeout, policy_ ? policy_->client_idle_timeout : 0);
    control_ptr = &control;
    control.set_keep_upstream(pooled);
    control.set_router(router_);
    if (watch_.row >= 0)
        control.watch_host(table_.header(), watch_);
    if (policy_)
        control.set_caps(policy_->max_rows, policy_->max_bytes, policy_->allow_override);
    control.on_ready_for_query(status);
    const auto started = net::Clock::now();
    RelayOutcome out = relay(*client, server, status, &g_stop_requested, &control);
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(net::Clock::now() - started);

    // A pooled connection is kept only when nothing of this session can be in flight:
    // the client left between statements, outside a transaction, with no cancel running.
    if (reusable)
        *reusable = (out.end == RelayEnd::ClientTerminate || out.end == RelayEnd::ClientClosed) &&
                    out.upstream_at_boundary && out.transaction_status == 'I' && control.quiescent();
    if (out.end == RelayEnd::Shutdown || out.end == RelayEnd::ClientViolation)
        control.abandon(relay_end_name(out.end));
    if (!out.upstream_at_boundary) {
        // libpq would append its Terminate inside a half-sent message; make the
        // upstream see a plain end of stream instead.
        ::shutdown(upstream_fd, SHUT_RDWR);
    }
    if (trail_)
        trail_->write(audit::Event::SessionEnd, relay_end_name(out.end));
    if (classify_cache_.misses() > 0)
        log_debug("statement texts classified: %llu parsed, %llu from the session's cache",
                  (unsigned long long)classify_cache_.misses(), (unsigned long long)classify_cache_.hits());
    log_info("session ended: %s%s%s; %llu bytes / %llu messages from client, %llu bytes / %llu "
             "messages from server, %lld ms",
             relay_end_name(out.end), out.detail.empty() ? "" : ": ", out.detail.c_str(),
             (unsigned long long)out.bytes_from_client, (unsigned long long)out.messages_from_client,
             (unsigned long long)out.bytes_from_server, (unsigned long long)out.messages_from_server,
             (long long)ms.count());
    switch (out.end) {
    case RelayEnd::ClientTerminate:
    case RelayEnd::ClientClosed:
        return kExitOk;
    case RelayEnd::ClientViolation:
        return kExitClientError;
    case RelayEnd::UpstreamClosed:
    case RelayEnd::UpstreamViolation:
        return kExitUpstreamFailure;
    case RelayEnd::Shutdown:
        return kExitShutdown;
    }
    return kExitOk;
}

ExitCode Session::pass_through(const config::DatabaseEntry& entry, const upstream::ClientInfo& info,
                               const protocol::StartupMessage& startup)
{
    auto target = upstream::pass_through_target(entry);
    if (!target)
        return fail("08006", target.error(), kExitUpstreamFailure);
    if (target->dbname.empty())
        target->dbname = info.database;
    // The client's own parameters, as it sent them; application_name names the client.
    std::vector<std::pair<std::string, std::string>> params = {{"user", info.user}, {"database", target->dbname}};
    std::string app = upstream::application_name_base(cfg_.application_name_prefix, info);
    for (const auto& [k, v] : startup.params) {
        if (k == "user" || k == "database" || k == "replication")
            continue;
        if (k == "application_name") {
            if (!v.empty())
                app += " " + v;
            continue;
        }
        params.emplace_back(k, v);
    }
    params.emplace_back("application_name", app);
    for (const auto& setting : info.settings)
        params.push_back(setting);
    publish_client(info.user, info.database, startup);
    auto secret = ipc::new_cancel_secret(secret_length_);
    if (!secret)
        return fail("XX000", "could not generate a cancel key", kExitInternal);
    const auto deadline = net::Clock::now() + std::chrono::seconds(cfg_.server_connect_timeout);
    auto login = upstream::pass_through_login(*target, params, conn_, *secret, deadline);
    if (auto* f = std::get_if<upstream::PassThroughFailure>(&login)) {
        if (f->client_left) {
            log_debug("%s", f->log.c_str());
            return kExitOk;
        }
        if (ipc::Slot* sl = slot()) {
            if (f->sqlstate.compare(0, 2, "28") == 0)
                sl->counters.add(ipc::kAuthFailuresUpstream, 1);
            else
                sl->counters.add(ipc::kUpstreamConnectFailures, 1);
        }
        log_info("pass-through login failed (%s): %s", target->describe().c_str(), f->log.c_str());
        if (f->forwarded) {
            conn_.linger_close(net::Clock::now() + 1s);
            return kExitRefused;
        }
        return fail(f->sqlstate.c_str(),
                    f->sqlstate == "08006" ? "could not connect to upstream server for database \"" + info.database +
                                                 "\" (" + target->describe() + "): " + f->message
                                           : f->message,
                    kExitUpstreamFailure, f->hint);
    }
    auto& up = std::get<upstream::PassThroughSession>(login);
    log_info("connected to upstream (pass-through, %s), backend pid %u%s", target->describe().c_str(),
             up.backend_pid, up.conn->is_tls() ? ", TLS" : "");
    // The client got the server's pid with our secret; nothing can be cancelled before
    // its first ReadyForQuery, which comes below.
    ipc::publish_cancel_key(slot(), up.backend_pid, *secret);
    std::unique_ptr<upstream::Transport> server;
    if (up.conn->is_tls())
        server = std::make_unique<upstream::TlsTransport>(up.conn->ssl(), up.fd.get());
    else
        server = std::make_unique<upstream::PlainTransport>(up.fd.get());
    auto cancel = [t = *target, pid = up.backend_pid, key = up.backend_secret]() {
        return upstream::send_cancel(t, pid, key, net::Clock::now() + std::chrono::seconds(10));
    };
    note_upstream(target->describe(), target->host, target->port, up.backend_pid);
    if (auto refused = audit_session_start())
        return *refused;
    if (!send(protocol::ready_for_query(up.status)))
        return kExitOk;
    return run_relay(*server, up.fd.get(), up.status, cancel);
}

ExitCode Session::run()
{
    // The client socket is non-blocking already: the supervisor accepts with
    // SOCK_NONBLOCK, and the flag travels with the descriptor.
    if (handoff_.type == ipc::HandoffType::Metrics)
        return ExitCode(admin::serve_metrics(client_.get(), table_));
    if (handoff_.type == ipc::HandoffType::MoveClient)
        return moved_in();
    // TCP_NODELAY and keepalive come from the listener (net::tune_listener).
    login_deadline_ = net::Clock::now() + std::chrono::seconds(cfg_.client_login_timeout);
    auto startup = payload_.empty() ? read_startup() : passed_on_startup();
    if (auto* code = std::get_if<ExitCode>(&startup))
        return *code;
    if (handoff_.type == ipc::HandoffType::Refuse) {
        log_info("refused: max_client_conn (%ld) reached", cfg_.max_client_conn);
        return fail("53300", "sorry, too many clients already", kExitRefused);
    }
    if (handoff_.type == ipc::HandoffType::ShuttingDown) {
        log_info("refused: pgwicket is shutting down");
        return fail("57P03", "pgwicket is shutting down", kExitRefused,
                    "The proxy is draining its sessions before it stops; connect again in a moment.");
    }
    return start_session(std::get<protocol::StartupMessage>(startup));
}

ExitCode run_session(const config::Config& cfg, const ipc::SessionTable& table, SSL_CTX* tls,
                     ipc::Received&& work, WorkerState& ws)
{
    Session s(cfg, table, tls, std::move(work), ws);
    return s.run();
}

} // namespace pgw::session
