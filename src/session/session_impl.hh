// The session of a worker, as session.cc (first packet, login, upstream, relay) and
// pooled.cc (pooled routes, the warm worker's guess, min_pool_size) implement it. Private to src/session/.
#pragma once

#include "session/session.hh"

#include "audit/audit.hh"
#include "common/log.hh"
#include "common/net.hh"
#include "health/hosts.hh"
#include "policy/classify.hh"
#include "protocol/messages.hh"
#include "protocol/startup.hh"
#include "session/audit_trail.hh"
#include "session/read_router.hh"
#include "tls/server_tls.hh"
#include "upstream/connect.hh"
#include "upstream/transport.hh"

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <variant>
#include <vector>

namespace pgw::session {

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
std::pair<Login, protocol::StartupMessage> login_of(pool::SessionContext&& ctx);

// What the upstream connection of a login depends on besides the entry: the client's
// startup settings, the policy's settings, the [roles] role. Pooled routes are keyed on
// it, so a client's session and a prefill must build it alike.
upstream::ClientInfo client_info(const config::Config& cfg, const Login& login, const protocol::StartupMessage& startup,
                                 const std::string& host, const policy::Policy* policy);

// A port as libpq or the config spells it; 0 (null in the record) when it is not a number.
std::uint32_t port_number(const std::string& port);

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
    bool send(const protocol::Bytes& b)
    {
        return conn_.write_all(b.data(), b.size(), net::Clock::now() + std::chrono::seconds(10));
    }
    // Ends the session with an error the client can read before the close.
    ExitCode fail(const protocol::ErrorFields& e, ExitCode code)
    {
        send(protocol::error_response(e));
        conn_.linger_close(net::Clock::now() + std::chrono::seconds(1));
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

    // The client came through the Unix socket.
    bool local() const { return handoff_.listener_kind == 1; }
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

} // namespace pgw::session
