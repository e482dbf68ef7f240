// The session state machine: first packet (SSL/GSS refusals, cancel, startup),
// database lookup, upstream connect, greeting, relay, and the log line at the end.
#include "session/session.hh"

#include "admin/console.hh"
#include "auth/authenticate.hh"
#include "admin/metrics_http.hh"
#include "common/held_signals.hh"
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

#include <openssl/err.h>
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

namespace {

using namespace std::chrono_literals;
using protocol::Bytes;

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

// A port as libpq or the config spells it; 0 (null in the record) when it is not a number.
std::uint32_t port_number(const std::string& port)
{
    char* end = nullptr;
    unsigned long v = std::strtoul(port.c_str(), &end, 10);
    return port.empty() || *end != '\0' || v > 65535 ? 0 : std::uint32_t(v);
}

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

// Who authenticated, and how: all a session needs of the login after it.
struct Login {
    std::string user;
    std::string database;
    std::string identity;  // the SSO identity, else the user name
    auth::Method method = auth::Method::Trust;
    std::vector<std::string> groups;
    std::string rule_policy;
    bool sso() const { return identity != user; }
};

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

class Session {
public:
    Session(const config::Config& cfg, const ipc::SessionTable& table, SSL_CTX* tls, ipc::Received&& work,
            WorkerState& ws)
        : cfg_(cfg), table_(table), tls_ctx_(tls), handoff_(work.handoff), client_(std::move(work.client)),
          conn_(client_.get()), payload_(std::move(work.payload)), ws_(ws)
    {
        peer_ = net::describe_peer(handoff_.peer, handoff_.peer_len);
        peer_host_ = net::peer_host(handoff_.peer, handoff_.peer_len);
        log::set_prefix("C-" + std::to_string(handoff_.session_id) + ": " + peer_);
    }

    ExitCode run();

private:
    // Sends a message we built ourselves, with a short deadline (errors, greeting).
    bool send(const Bytes& b)
    {
        return conn_.write_all(b.data(), b.size(), net::Clock::now() + 10s);
    }
    // Ends the session with an error the client can read before the close.
    ExitCode fail(const protocol::ErrorFields& e, ExitCode code)
    {
        send(protocol::error_response(e));
        conn_.linger_close(net::Clock::now() + 1s);
        return code;
    }
    ExitCode fail(const char* sqlstate, const std::string& message, ExitCode code,
                  const std::string& hint = {})
    {
        protocol::ErrorFields e;
        e.sqlstate = sqlstate;
        e.message = message;
        e.hint = hint;
        return fail(e, code);
    }
    // A startup packet PostgreSQL would refuse: with its FATAL, or by closing without a
    // word where the server does (see protocol::StartupError).
    ExitCode refuse_startup(const protocol::StartupError& err)
    {
        if (!err.reply) {
            // Read what the client already sent, so the close is a FIN, not a reset
            // that a driver would report as an error of its own.
            net::discard_pending(client_.get());
            return kExitClientError;
        }
        return fail(err.sqlstate, err.message, kExitClientError);
    }
    // Who and where, in the slot, for SHOW SESSIONS and the metrics.
    void publish_client(const std::string& user, const std::string& database, const protocol::StartupMessage& startup)
    {
        if (ipc::Slot* sl = slot()) {
            sl->client_addr.set(peer_);
            sl->user.set(user);
            sl->database.set(database);
            const std::string* app = startup.get("application_name");
            sl->application_name.set(app ? *app : "");
        }
    }
    // `reusable` (pooled sessions only): whether the connection may serve another client.
    ExitCode run_relay(upstream::Transport& server, int upstream_fd, char status, std::function<Status()> cancel,
                       bool* reusable = nullptr);
    ExitCode establish(pool::HeldUpstream& up, bool* reusable = nullptr);
    ExitCode proceed(const Login& login, const protocol::StartupMessage& startup);
    void set_login_prefix(const Login& login);
    std::optional<ExitCode> connect_upstream(const std::vector<health::Attempt>& tries, const std::string& database,
                                             upstream::PgConnPtr& conn, std::string* where = nullptr);
    // One host of a plan: true with `conn`, or false with why not (a host that did not
    // answer is banned for ban_time).
    bool try_host(const health::Attempt& attempt, const std::string& database, upstream::PgConnPtr& conn,
                  upstream::ConnectFailure& why);
    // A connection to the host of `row` failed: when it was the host's failure, the next
    // sessions (of every entry) go elsewhere until ban_time has passed (or the checker
    // sees it up again).
    void ban_if_host_failed(int row, const upstream::ConnectFailure& why);
    // After the last host failed: the counters, the log and the client's error.
    ExitCode connect_failed(const upstream::ConnectFailure& why, const std::string& where,
                            const std::string& database);
    // `front_route`: the first host's route key when the caller has it ("": computed here).
    ExitCode pooled_session(const Login& login, const protocol::StartupMessage& startup,
                            const config::DatabaseEntry& entry, const std::vector<health::Attempt>& tries,
                            const std::string& front_route);
    std::optional<ExitCode> pooled_connect(const Login& login, const protocol::StartupMessage& startup,
                                           const config::DatabaseEntry& entry,
                                           const std::vector<health::Attempt>& tries);
    // What the session watches of its upstream host (failover), from a new connection.
    health::HostWatch watch_of(PGconn* conn) const
    {
        return health::watch_of(*table_.header(), target_, PQhost(conn), PQport(conn));
    }
    // Asks the supervisor for a pooled route and waits for its answer.
    struct RouteAnswer {
        std::optional<ipc::HandoffType> type;
        std::optional<ExitCode> error_code;
        explicit operator bool() const { return type.has_value(); }
    };
    RouteAnswer ask_for_route(pool::SessionContext ctx);
    // A TLS client whose session went to a warm worker: relays between the client and
    // the socket that went instead of it, until either side ends.
    ExitCode relay_tls_client();
    // A session moved here from the worker that authenticated it.
    ExitCode moved_in();
    std::optional<ExitCode> audit_session_start();
    // Where the session's statements run, for its audit records.
    void note_upstream(std::string where, std::string host, const std::string& port, std::uint32_t backend_pid)
    {
        if (!trail_)
            return;
        audit::SessionInfo& ai = trail_->info();
        ai.upstream = std::move(where);
        ai.upstream_host = std::move(host);
        ai.upstream_port = port_number(port);
        ai.backend_pid = backend_pid;
    }
    ExitCode pass_through(const config::DatabaseEntry& entry, const upstream::ClientInfo& info,
                          const protocol::StartupMessage& startup);

    // Reads packets until a StartupMessage; answers SSL/GSS requests with 'N'.
    std::variant<protocol::StartupMessage, ExitCode> read_startup();
    // The startup packet a warm worker read and passed on with the client (PassOn).
    std::variant<protocol::StartupMessage, ExitCode> passed_on_startup();
    ExitCode start_session(const protocol::StartupMessage& startup);
    // A warm worker that the supervisor's guess gave a new plaintext connection can send
    // its client on to a spare, startup packet and all, and stay warm (PassOn).
    bool may_pass_on() const
    {
        return ws_.held && handoff_.type == ipc::HandoffType::Session && !conn_.is_tls();
    }
    // Whether this warm worker should pass the client on rather than serve it: the
    // console, and entries that are not pooled (or whose rule hands the login to the
    // server), would otherwise keep the route's connection from its clients while they
    // last, or close it. Clients of another pooled route ask for it (NeedRoute).
    bool serves_elsewhere(const std::string& user, const std::string& database) const;
    ExitCode pass_on();

    ipc::Slot* slot() const
    {
        return handoff_.slot < table_.capacity() ? &table_.slot(handoff_.slot) : nullptr;
    }

    const config::Config& cfg_;
    const ipc::SessionTable& table_;
    SSL_CTX* tls_ctx_;  // null: client TLS is off
    ipc::Handoff handoff_;
    UniqueFd client_;
    tls::Conn conn_;  // reads and writes client_, through TLS once it is on
    const policy::Policy* policy_ = nullptr;  // the session's, chosen after authentication
    // Statement classifications, shared by the policy gate and the read router: a text
    // both look at is parsed once. Empty (nothing allocated) until one of them asks.
    policy::ClassifyCache classify_cache_;
    audit::Sink audit_sink_{cfg_.audit_file, cfg_.audit_journald != 0};
    std::optional<AuditTrail> trail_;  // when audit or log_statements is on
    net::Clock::time_point login_deadline_{};  // client_login_timeout: startup and authentication
    std::string peer_, peer_host_;
    std::size_t secret_length_ = 4;  // of the client's cancel secret: 4 (protocol 3.0), 32 (3.2)
    std::string payload_;  // MoveClient: the session context; Session: a startup packet passed on
    std::vector<std::byte> startup_packet_;  // as read, while it may be passed on (may_pass_on)
    UniqueFd relay_end_;   // ask_for_route, TLS client: our end of the socket offered instead of it
    WorkerState& ws_;      // the worker's channel and pooled upstream, which outlive the session
    // The entry's target_session_attrs, and how long a host that failed a connect is
    // passed over (multi-host entries).
    health::Target target_ = health::Target::Any;
    long ban_seconds_ = 0;
    health::HostWatch watch_;  // the established session's host (failover)
    // read_routing = auto: the entry, its libpq parameters (for the standby connection),
    // and the router while the session runs.
    const config::DatabaseEntry* routing_entry_ = nullptr;
    upstream::Params routing_params_;
    ReadRouter* router_ = nullptr;
    std::unique_ptr<StandbyLink> open_standby();
    // The hosts to try, from what the health checker last saw; sessions per host row
    // only for least-connections (no scan of the slots otherwise).
    health::Attempts plan_hosts(const upstream::Params& params, const config::ReplicaSettings& r) const
    {
        if (r.load_balance != config::LoadBalance::LeastConnections)
            return health::plan_connection(params, r, *table_.header(), nullptr);
        const auto sessions = health::sessions_by_host(table_);
        return health::plan_connection(params, r, *table_.header(), &sessions);
    }
};

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

bool Session::serves_elsewhere(const std::string& user, const std::string& database) const
{
    if (database == admin::kConsoleDatabase)
        return true;
    const config::DatabaseEntry* entry = cfg_.find_database(database);
    if (!entry)
        return false;  // refused here as anywhere
    if (!entry->pool.pooled)
        return true;
    const bool local = handoff_.listener_kind == 1;
    const auth::Rule* rule = auth::match_rule(
        cfg_.rules, auth::ConnectionFacts{local, false, local ? nullptr : &handoff_.peer, database, user});
    return rule && rule->method == auth::Method::PassThrough;
}

ExitCode Session::pass_on()
{
    ipc::Handoff h = handoff_;
    h.type = ipc::HandoffType::PassOn;
    const std::string_view packet(reinterpret_cast<const char*>(startup_packet_.data()), startup_packet_.size());
    if (auto st = ipc::send_handoff(ws_.channel, h, client_.get(), packet); !st) {
        log_error("passing the client on to another worker: %s", st.error().c_str());
        return kExitChannelError;
    }
    log_debug("not for pool %s: client passed on to a spare", pool::route_label(ws_.held->route).c_str());
    return kExitHandedOver;
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

    const bool local = handoff_.listener_kind == 1;
    if (cfg_.client_tls_sslmode == "require" && !local && !conn_.is_tls()) {
        log_info("refused: plaintext connection and client_tls_sslmode = require");
        if (ipc::Slot* sl = slot())
            sl->counters.add(ipc::kAuthFailuresRejected, 1);
        return fail("28000", "pgwicket requires TLS connections (client_tls_sslmode = require)", kExitRefused,
                    "Connect with sslmode=require or verify-full.");
    }

    auth::AuthRequest areq{cfg_, conn_, user, database, local, local ? nullptr : &handoff_.peer, peer_host_,
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

    if (entry->replicas.read_routing && !entry->pool.pooled) {
        // The session's own connection is the primary's; reads go to a standby of the
        // same hosts, opened when the first one comes.
        routing_entry_ = entry;
        upstream::put(*params, "target_session_attrs", "primary");
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

// Asks the supervisor for the route of each host in turn (the next one when a host does
// not take the connection: its place in the pool is given back first), and connects
// when told to. Returns the session's end when it does not go on here: moved to a warm
// worker, refused, or no host took it.
std::optional<ExitCode> Session::pooled_connect(const Login& login, const protocol::StartupMessage& startup,
                                                const config::DatabaseEntry& entry,
                                                const std::vector<health::Attempt>& tries)
{
    pool::SessionContext ctx;
    ctx.entry = entry.name;
    ctx.user = login.user;
    ctx.database = login.database;
    ctx.identity = login.identity;
    ctx.rule_policy = login.rule_policy;
    ctx.method = std::uint32_t(login.method);
    ctx.secret_length = std::uint32_t(secret_length_);
    ctx.protocol_minor = startup.minor;
    ctx.groups = login.groups;
    ctx.startup = startup.params;
    for (size_t i = 0;; ++i) {
        const std::string route = pool::route_key(entry.name, tries[i].params);
        const std::string where = upstream::describe(tries[i].params);
        ctx.route = route;
        auto answer = ask_for_route(ctx);
        if (!answer)
            return *answer.error_code;
        switch (*answer.type) {
        case ipc::HandoffType::HandedOver:
            if (relay_end_.valid())
                return relay_tls_client();
            log_debug("handed to a warm worker on route %s", pool::route_label(route).c_str());
            return kExitHandedOver;
        case ipc::HandoffType::PoolTimeout:
            log_info("refused: no connection of pool %s within query_wait_timeout (%ld s)",
                     pool::route_label(route).c_str(), cfg_.query_wait_timeout);
            return fail("53300",
                        "no upstream connection of pool \"" + pool::route_label(route) +
                            "\" became free within query_wait_timeout (" + std::to_string(cfg_.query_wait_timeout) +
                            " s)",
                        kExitRefused, "The pool is full (pool_size); try again later, or ask the operator to raise it.");
        default:
            break;  // Connect
        }
        relay_end_.reset();
        ws_.held.reset();  // another route's: the pool no longer counts it
        upstream::PgConnPtr conn;
        upstream::ConnectFailure why;
        if (try_host(tries[i], login.database, conn, why)) {
            log_info("connected to upstream (%s), backend pid %d%s; pooled on %s", where.c_str(),
                     PQbackendPID(conn.get()), PQsslInUse(conn.get()) ? ", TLS" : "",
                     pool::route_label(route).c_str());
            ws_.held = pool::hold(std::move(conn), route, where);
            ws_.held->watch = watch_of(ws_.held->conn.get());
            return std::nullopt;
        }
        if (i + 1 == tries.size())
            return connect_failed(why, where, login.database);
        log_warning("upstream connection failed (%s): %s; trying the next host", where.c_str(), why.message.c_str());
        // The supervisor counted a connection being opened on that route: not any more.
        if (auto st = ipc::send_message(ws_.channel, ipc::HandoffType::Released); !st) {
            log_error("telling the supervisor of a failed pooled connection: %s", st.error().c_str());
            return fail("08006", "pgwicket could not reach its pool", kExitChannelError);
        }
    }
}

// A session on a pooled route. The worker that authenticated the client asks the
// supervisor for the route: a plaintext client may move to a warm worker (this worker
// is then a spare again), otherwise this worker connects, or waits for room. A warm
// worker that received the client carries on with the connection it holds.
ExitCode Session::pooled_session(const Login& login, const protocol::StartupMessage& startup,
                                 const config::DatabaseEntry& entry, const std::vector<health::Attempt>& tries,
                                 const std::string& front_route)
{
    const health::Attempt& attempt = tries.front();
    const upstream::Params& params = attempt.params;
    const std::string route = front_route.empty() ? pool::route_key(entry.name, params) : front_route;
    const std::string where = upstream::describe(params);
    const std::string* app = nullptr;
    for (const auto& [k, v] : params)
        if (k == "application_name")
            app = &v;
    if (ws_.held && ws_.held->route != route && handoff_.type == ipc::HandoffType::MoveClient) {
        // The supervisor matched the asker's key; ours must agree.
        log_error("a client for route %s reached a worker warm on %s", route.c_str(), ws_.held->route.c_str());
        return fail("XX000", "pgwicket internal error: pooled connection of the wrong route", kExitInternal);
    }
    // A warm worker given a new connection guessed it would be for its route; when it is
    // for another, it asks for that one as a spare would, keeping its own meanwhile.
    if (!ws_.held || ws_.held->route != route) {
        if (auto code = pooled_connect(login, startup, entry, tries))
            return *code;
    } else {
        // Reused: make sure it still works (the socket is looked at unless the warm
        // wait that this client ended saw it silent a moment ago), and name the new
        // client upstream.
        auto& held = *ws_.held;
        const auto now = net::Clock::now();
        const auto deadline = now + std::chrono::seconds(cfg_.server_connect_timeout);
        Status ok = ok_status();
        if (!held.conn)
            ok = Error{"its reset failed"};
        else if (ipc::HostRole role{}; health::role_changed(*table_.header(), held.watch, &role))
            ok = Error{"its host " + held.watch.label + " is a " + health::role_name(role) + " now"};
        else if (now - held.quiet_at > std::chrono::milliseconds(10) && pool::stirred(held))
            ok = Error{"the server closed it or spoke while it was idle"};
        else if (now - held.checked >= std::chrono::seconds(cfg_.server_check_delay)) {
            // The route's startup settings hold the client's search_path: the check runs
            // with pg_catalog's functions and operators, never ones the client put first.
            ok = pool::simple_query(held,
                                    cfg_.server_check_query.empty()
                                        ? cfg_.server_check_query
                                        : "SET LOCAL search_path = pg_catalog, pg_temp; " + cfg_.server_check_query,
                                    deadline);
            held.checked = now;
        }
        if (!ok) {
            log_info("pooled connection (backend pid %u) is not usable (%s); connecting afresh", held.backend_pid,
                     ok.error().c_str());
            ws_.held.reset();
            upstream::PgConnPtr conn;
            if (auto code = connect_upstream({attempt}, login.database, conn))
                return *code;
            ws_.held = pool::hold(std::move(conn), route, where);
            ws_.held->watch = watch_of(ws_.held->conn.get());
        } else if (app && held.parameters["application_name"] != *app) {
            char* lit = PQescapeLiteral(held.conn.get(), app->c_str(), app->size());
            Status named = lit ? pool::simple_query(held, std::string("SET application_name = ") + lit, deadline)
                               : Status(Error{"could not quote application_name"});
            PQfreemem(lit);
            if (!named) {
                log_warning("pooled connection (backend pid %u): %s; closing it", held.backend_pid,
                            named.error().c_str());
                ws_.held.reset();
                return fail("08006", "pooled upstream connection failed: " + named.error(), kExitUpstreamFailure);
            }
        }
        log_debug("reusing pooled connection to %s (backend pid %u, session %u on it)", where.c_str(),
                  ws_.held->backend_pid, ws_.held->sessions + 1);
    }
    auto& held = *ws_.held;
    ++held.sessions;
    pool::mark_server(held, table_, pool::ServerState::Active);
    bool reusable = false;
    const ExitCode code = establish(held, &reusable);
    if (reusable)
        held.reset_pending = true;  // keep_warm resets it
    else
        ws_.held.reset();
    return code;
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
    if (!routing_entry_ || reusable)
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
    const ExitCode code = run_relay(router, upstream_fd, status, [&router] { return router.cancel_running(); });
    router_ = nullptr;
    log_info("read routing: %llu units to the primary, %llu to a standby%s",
             (unsigned long long)router.units(ReadRouter::kPrimary),
             (unsigned long long)router.units(ReadRouter::kStandby), router.pinned() ? " (pinned to the primary)" : "");
    return code;
}

// read_routing: a connection to a standby of the session's entry, chosen as a session
// with target_session_attrs=standby would be; null when none can be had now.
std::unique_ptr<StandbyLink> Session::open_standby()
{
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

Session::RouteAnswer Session::ask_for_route(pool::SessionContext ctx)
{
    RouteAnswer answer;
    ipc::Handoff h = handoff_;
    h.type = ipc::HandoffType::NeedRoute;
    // A plaintext client may move to a warm worker. A TLS session cannot leave this
    // process: one end of a socket pair goes instead, and if the client is given to a
    // warm worker this one relays between them (relay_tls_client).
    int movable = client_.get();
    UniqueFd far_end;
    if (conn_.is_tls()) {
        int sv[2];
        movable = -1;
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) == 0) {
            relay_end_ = UniqueFd(sv[0]);
            far_end = UniqueFd(sv[1]);
            movable = sv[1];
            ctx.relayed_by = std::uint32_t(getpid());
        } else {
            log_warning("socketpair: %s; this TLS client cannot be given a warm connection", std::strerror(errno));
        }
    }
    if (auto st = ipc::send_handoff(ws_.channel, h, movable, pool::encode(ctx)); !st) {
        log_error("asking the supervisor for a pooled connection: %s", st.error().c_str());
        answer.error_code = fail("08006", "pgwicket could not reach its pool", kExitChannelError);
        return answer;
    }
    // SIGTERM and SIGINT are let in only inside ppoll(), so the wait (up to
    // query_wait_timeout, which the supervisor keeps) needs no tick.
    HeldSignals stop_signals{SIGTERM, SIGINT};
    // The client is watched too: it says nothing until it has its greeting, so its
    // socket wakes us only when it goes away (or breaks the protocol: then it is left to
    // the session). A client that gives up leaves the queue at once, with this process.
    // A TLS client's goodbye (close_notify) is a record like any other in TLS 1.3: it is
    // looked at with SSL_peek, which keeps any data it decrypts for the session.
    auto client_gone = [&](short revents) {
        if (revents & (POLLHUP | POLLRDHUP | POLLERR))
            return true;
        if (conn_.is_tls()) {
            char byte;
            ERR_clear_error();
            const int r = SSL_peek(conn_.ssl(), &byte, 1);
            if (r > 0)
                return false;
            const int e = SSL_get_error(conn_.ssl(), r);
            ERR_clear_error();
            return e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE;
        }
        char byte;
        return ::recv(client_.get(), &byte, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
    };
    bool watch_client = true;
    for (;;) {
        pollfd p[2] = {{ws_.channel, POLLIN, 0}, {client_.get(), POLLIN | POLLRDHUP, 0}};
        int n = g_stop_requested ? 0 : ::ppoll(p, watch_client ? 2 : 1, nullptr, stop_signals.wait_mask());
        if (g_stop_requested) {
            answer.error_code = fail("57P01", "terminating connection due to administrator command", kExitShutdown);
            return answer;
        }
        if (n > 0 && watch_client && p[1].revents) {
            if (client_gone(p[1].revents)) {
                log_info("the client left while waiting for a pooled connection of %s",
                         pool::route_label(ctx.route).c_str());
                answer.error_code = kExitOk;
                return answer;
            }
            // Bytes for the session (SSL_peek may also have read a record that was no
            // data, such as a key update: then the client is still watched).
            watch_client = conn_.is_tls() && SSL_has_pending(conn_.ssl()) != 1;
        }
        if (n <= 0 || !p[0].revents)
            continue;
        auto reply = ipc::receive_handoff(ws_.channel);
        if (!reply) {
            log_error("waiting for a pooled connection: %s", reply.error().c_str());
            answer.error_code = fail("08006", "pgwicket could not reach its pool", kExitChannelError);
            return answer;
        }
        switch (reply->handoff.type) {
        case ipc::HandoffType::Connect:
        case ipc::HandoffType::HandedOver:
        case ipc::HandoffType::PoolTimeout:
            answer.type = reply->handoff.type;
            return answer;
        default:
            log_error("unexpected message %u while waiting for a pooled connection", unsigned(reply->handoff.type));
            answer.error_code = fail("XX000", "pgwicket internal error while waiting for its pool", kExitInternal);
            return answer;
        }
    }
}

ExitCode Session::relay_tls_client()
{
    log_info("session given to a warm worker; relaying for this TLS client");
    // Our connection of another route, if we were warm: the supervisor has counted it gone.
    ws_.held.reset();
    upstream::TlsTransport client(conn_.ssl(), client_.get());
    upstream::PlainTransport worker(relay_end_.get());
    // No stop flag: the warm worker runs the session, and its end (a message to the
    // client included) reaches the client through here.
    const RelayOutcome out = relay(client, worker, 'I', nullptr);
    log_info("relay for the TLS client ended: %s", relay_end_name(out.end));
    return kExitOk;
}

ExitCode Session::moved_in()
{
    auto ctx = pool::decode_context(payload_);
    if (!ctx) {
        log_error("session moved in: %s", ctx.error().c_str());
        return kExitChannelError;
    }
    secret_length_ = ctx->secret_length == ipc::kSecretBytes ? ipc::kSecretBytes : 4;
    auto [login, startup] = login_of(std::move(*ctx));
    return proceed(login, startup);
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

} // namespace

namespace {

// The upstream parameters of a login with no client address on a pooled entry: what a
// prefill connects with, and what its route is keyed on.
Result<upstream::Params> prefill_params(const config::Config& cfg, const config::DatabaseEntry& entry,
                                        pool::SessionContext ctx)
{
    auto [login, startup] = login_of(std::move(ctx));
    const policy::Policy* policy = cfg.policy_for(login.groups, login.rule_policy, login.database);
    return upstream::build_params(entry, client_info(cfg, login, startup, "", policy), cfg.application_name_prefix);
}

// The connections a session of this entry could use, one host each as a session's host
// plan makes them, with their route keys: those that fit now first (`fits`), then the
// other hosts as written. An entry of several hosts that the health checker has not
// answered for yet gives one connection of every host (libpq chooses). `checked`: the
// health checker has answered for the host (always, for an entry of one host).
struct HostRoute {
    health::Attempt attempt;
    std::string route;
    bool fits = false;
    bool checked = true;
};
std::vector<HostRoute> host_routes(const config::DatabaseEntry& entry, const upstream::Params& params,
                                   ipc::TableHeader& hosts)
{
    const health::Attempts plan = health::plan_connection(params, entry.replicas, hosts);
    const bool one_host = health::hosts_of(params).size() <= 1;
    // (libpq's whole list, before any answer, has no row: not checked.)
    auto checked = [&](const health::Attempt& a) {
        return one_host ||
               (a.row >= 0 && health::read_host(hosts, std::uint32_t(a.row)).state != ipc::HostState::Unknown);
    };
    std::vector<HostRoute> out;
    for (const auto& a : plan.tries)
        out.push_back({a, pool::route_key(entry.name, a.params), true, checked(a)});
    for (const auto& a : plan.every) {
        std::string key = pool::route_key(entry.name, a.params);
        if (std::none_of(out.begin(), out.end(), [&](const HostRoute& h) { return h.route == key; }))
            out.push_back({a, std::move(key), false, checked(a)});
    }
    return out;
}

} // namespace

std::vector<pool::SessionContext> starting_contexts(const config::Config& cfg, const config::DatabaseEntry& entry,
                                                   ipc::TableHeader& hosts)
{
    if (!entry.pool.pooled || entry.name == "*" || cfg.min_pool_size_for(entry) <= 0)
        return {};
    pool::SessionContext ctx;
    ctx.entry = ctx.database = entry.name;
    ctx.method = std::uint32_t(auth::Method::Trust);
    ctx.startup = {{"user", ""}, {"database", entry.name}};
    // Which upstream user? Only the entry can say before a client comes: with no user
    // of its own, the client's name is used, and none is known yet.
    auto probe = prefill_params(cfg, entry, ctx);
    if (!probe)
        return {};
    std::string user;
    for (const auto& [k, v] : *probe)
        if (k == "user")
            user = v;
    if (user.empty())
        return {};
    ctx.user = ctx.identity = ctx.startup[0].second = user;
    auto params = prefill_params(cfg, entry, ctx);
    if (!params)
        return {};
    // An entry of several hosts has a pool per host: a route for each host that takes
    // its sessions, once the health checker has answered for every host (until then
    // none: the supervisor asks again every few seconds, and so learns of hosts that
    // come to fit later).
    const auto routes = host_routes(entry, *params, hosts);
    if (std::any_of(routes.begin(), routes.end(), [](const HostRoute& h) { return !h.checked; }))
        return {};
    std::vector<pool::SessionContext> out;
    for (const auto& h : routes) {
        if (!h.fits)
            continue;
        ctx.route = h.route;
        out.push_back(ctx);
    }
    return out;
}

Result<std::vector<std::string>> routes_for(const config::Config& cfg, const pool::SessionContext& ctx,
                                            ipc::TableHeader& hosts)
{
    const config::DatabaseEntry* entry = cfg.find_entry(ctx.entry);
    if (!entry || !entry->pool.pooled)
        return Error{"entry \"" + ctx.entry + "\" is gone or no longer pooled"};
    auto params = prefill_params(cfg, *entry, ctx);
    if (!params)
        return Error{params.error()};
    std::vector<std::string> keys;
    for (auto& h : host_routes(*entry, *params, hosts))
        keys.push_back(std::move(h.route));
    return keys;
}

ExitCode prefill_route(const config::Config& cfg, ipc::TableHeader& hosts, const std::string& context,
                       WorkerState& ws)
{
    auto ctx = pool::decode_context(context);
    if (!ctx) {
        log_error("prefill: %s", ctx.error().c_str());
        return kExitChannelError;
    }
    log::set_prefix("pool " + pool::route_label(ctx->route) + ": ");
    const config::DatabaseEntry* entry = cfg.find_entry(ctx->entry);
    if (!entry || !entry->pool.pooled) {
        log_info("min_pool_size: entry \"%s\" is gone or no longer pooled", ctx->entry.c_str());
        return kExitOk;
    }
    // The same parameters the route's clients get (application_name aside, which each
    // client sets).
    const std::string route = ctx->route;
    auto all = prefill_params(cfg, *entry, std::move(*ctx));
    if (!all) {
        log_info("min_pool_size: the route's settings changed; not opening a connection");
        return kExitOk;
    }
    // The route's host (an entry of several hosts has a pool per host), as a session's
    // host plan would connect to it.
    const auto routes = host_routes(*entry, *all, hosts);
    auto mine = std::find_if(routes.begin(), routes.end(), [&](const HostRoute& h) { return h.route == route; });
    if (mine == routes.end()) {
        log_info("min_pool_size: the route's settings changed; not opening a connection");
        return kExitOk;
    }
    if (!mine->fits) {
        // Down, banned, lagging or of the wrong role: its minimum is dropped (the
        // supervisor's next look at the entry brings it back when the host fits again).
        log_info("min_pool_size: %s does not take this entry's sessions now; not opening a connection",
                 upstream::describe(mine->attempt.params).c_str());
        return kExitOk;
    }
    const upstream::Params& params = mine->attempt.params;
    const std::string where = upstream::describe(params);
    upstream::ConnectFailure why;
    auto conn = upstream::connect(params, net::Clock::now() + std::chrono::seconds(cfg.server_connect_timeout), &why);
    if (!conn) {
        log_warning("min_pool_size: upstream connection failed (%s): %s%s%s", where.c_str(),
                    why.server_sqlstate.c_str(), why.server_sqlstate.empty() ? "" : ": ", why.message.c_str());
        return kExitUpstreamFailure;
    }
    log_info("opened a connection for min_pool_size (%s), backend pid %d", where.c_str(), PQbackendPID(conn->get()));
    ws.held = pool::hold(std::move(*conn), route, where);
    return kExitOk;
}

ExitCode run_session(const config::Config& cfg, const ipc::SessionTable& table, SSL_CTX* tls,
                     ipc::Received&& work, WorkerState& ws)
{
    Session s(cfg, table, tls, std::move(work), ws);
    return s.run();
}

} // namespace pgw::session
