// The session state machine: first packet (SSL/GSS refusals, cancel, startup),
// database lookup, upstream connect, greeting, relay, and the log line at the end.
#include "session/session.hh"

#include "admin/console.hh"
#include "auth/authenticate.hh"
#include "admin/metrics_http.hh"
#include "common/log.hh"
#include "common/net.hh"
#include "protocol/messages.hh"
#include "protocol/startup.hh"
#include "session/cancel.hh"
#include "session/audit_trail.hh"
#include "session/policy_gate.hh"
#include "session/relay.hh"
#include "session/session_control.hh"
#include "upstream/connect.hh"
#include "tls/server_tls.hh"
#include "upstream/passthrough.hh"
#include "upstream/transport.hh"

#include <signal.h>
#include <unistd.h>

#include <chrono>
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

class Session {
public:
    Session(const config::Config& cfg, const ipc::SessionTable& table, SSL_CTX* tls, ipc::Received&& work)
        : cfg_(cfg), table_(table), tls_ctx_(tls), handoff_(work.handoff), client_(std::move(work.client)),
          conn_(client_.get())
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
    ExitCode run_relay(upstream::Transport& server, int upstream_fd, char status, std::function<Status()> cancel);
    std::optional<ExitCode> audit_session_start();
    ExitCode pass_through(const config::DatabaseEntry& entry, const upstream::ClientInfo& info,
                          const protocol::StartupMessage& startup);

    // Reads packets until a StartupMessage; answers SSL/GSS requests with 'N'.
    std::variant<protocol::StartupMessage, ExitCode> read_startup();
    ExitCode start_session(const protocol::StartupMessage& startup);

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
    audit::Sink audit_sink_{cfg_.audit_file, cfg_.audit_journald != 0};
    std::optional<AuditTrail> trail_;  // when audit or log_statements is on
    net::Clock::time_point login_deadline_{};  // client_login_timeout: startup and authentication
    std::string peer_, peer_host_;
    std::size_t secret_length_ = 4;  // of the client's cancel secret: 4 (protocol 3.0), 32 (3.2)
};

std::variant<protocol::StartupMessage, ExitCode> Session::read_startup()
{
    const auto deadline = login_deadline_;
    bool ssl_refused = false, gss_refused = false;
    for (;;) {
        unsigned char len_bytes[4];
        auto rs = conn_.read_exact(len_bytes, sizeof len_bytes, deadline);
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
        std::uint32_t len = protocol::load_be32(reinterpret_cast<const std::byte*>(len_bytes));
        if (auto err = protocol::check_startup_length(len)) {
            log_info("rejected startup: %s (length %u)", err->message.c_str(), len);
            return refuse_startup(*err);
        }
        std::vector<std::byte> body(len - 4);
        rs = conn_.read_exact(body.data(), body.size(), deadline);
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
            // after the answer. Looked for before it: later bytes are the client's reply.
            const bool injected = !conn_.is_tls() && net::readable_now(client_.get());
            // GSS encryption is always declined, TLS when it is off; libpq then goes on in
            // plaintext on the same socket (or gives up, if it requires encryption).
            const bool tls = ssl && tls_ctx_ && !conn_.is_tls();
            const char answer = tls ? 'S' : 'N';
            if (!conn_.write_all(&answer, 1, deadline))
                return kExitClientError;
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
            return std::move(fp.startup);
        }
    }
}

ExitCode Session::start_session(const protocol::StartupMessage& startup)
{
    const std::string user = *startup.get("user");
    const std::string* db_param = startup.get("database");
    const std::string database = db_param && !db_param->empty() ? *db_param : user;
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
                           login_deadline_};
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
    const std::string identity = who.identity;
    const bool sso = identity != user;
    if (sso)
        log::set_prefix("C-" + std::to_string(handoff_.session_id) + ": " + database + "/" + user + "(" +
                        identity + ")@" + peer_);
    log_info("%s (%s%s%s)%s%s",
             who.method == auth::Method::PassThrough ? "login handed to the upstream server" : "authenticated",
             auth::method_name(who.method), sso ? ", identity " : "",
             sso ? identity.c_str() : "", conn_.is_tls() ? ", " : "",
             conn_.is_tls() ? conn_.describe_tls().c_str() : "");
    if (ipc::Slot* sl = slot())
        sl->identity.set(identity);

    if (database == admin::kConsoleDatabase) {
        const std::string* app = startup.get("application_name");
        publish_client(user, database, startup);
        admin::ConsoleSession cs{cfg_, table_, conn_, slot(), user, app ? *app : "", secret_length_};
        return ExitCode(admin::run_console(cs));
    }

    const config::DatabaseEntry* entry = cfg_.find_database(database);
    if (!entry) {
        log_info("refused: no [databases] entry for \"%s\"", database.c_str());
        return fail("3D000", "database \"" + database + "\" does not exist", kExitRefused,
                    "pgwicket has no [databases] entry for it and no \"*\" fallback.");
    }

    std::string policy_source;
    policy_ = cfg_.policy_for(who.groups, who.rule_policy, database, &policy_source);
    if (policy_)
        log_info("policy \"%s\" (from %s)", policy_->name.c_str(), policy_source.c_str());
    upstream::ClientInfo info{user, database, peer_host_, &startup, sso ? identity : std::string(), "", {}};
    if (policy_)
        info.settings = policy_->upstream_settings();
    if (audit_sink_.enabled() || cfg_.log_statements) {
        audit::SessionInfo ai;
        ai.session_id = handoff_.session_id;
        ai.identity = identity;
        ai.user = user;
        ai.client = peer_;
        const std::string* app = startup.get("application_name");
        ai.application_name = app ? *app : "";
        ai.database = database;
        ai.policy = policy_ ? policy_->name : "";
        trail_.emplace(audit_sink_, std::move(ai), cfg_.audit_statement_text == "full", cfg_.log_statements != 0);
    }
    if (const std::string* role = cfg_.role_for(who.groups)) {
        info.role = *role;
        log_info("upstream role \"%s\" from [roles]", role->c_str());
    }
    if (who.method == auth::Method::PassThrough)
        return pass_through(*entry, info, startup);
    auto params = upstream::build_params(*entry, info, cfg_.application_name_prefix);
    if (!params)
        return fail("08006", params.error(), kExitUpstreamFailure);
    const std::string where = upstream::describe(*params);

    auto deadline = net::Clock::now() + std::chrono::seconds(cfg_.server_connect_timeout);
    upstream::ConnectFailure why;
    auto conn = upstream::connect(*params, deadline, &why);
    if (!conn) {
        if (ipc::Slot* sl = slot()) {
            sl->counters.add(ipc::kUpstreamConnectFailures, 1);
            if (why.server_sqlstate.compare(0, 2, "28") == 0)
                sl->counters.add(ipc::kAuthFailuresUpstream, 1);
        }
        log_warning("upstream connection failed (%s): %s%s%s", where.c_str(),
                    why.server_sqlstate.c_str(), why.server_sqlstate.empty() ? "" : ": ",
                    why.message.c_str());
        if (!why.server_sqlstate.empty()) {
            // The server refused this login: pass its own error on, as a direct
            // connection would show it, and say which upstream said it.
            protocol::ErrorFields e;
            e.sqlstate = why.server_sqlstate;
            e.message = why.message;
            e.detail = "Reported by the upstream server for database \"" + database + "\" (" +
                       where + ").";
            return fail(e, kExitUpstreamFailure);
        }
        return fail("08006",
                    "could not connect to upstream server for database \"" + database + "\" (" +
                        where + "): " + why.message,
                    kExitUpstreamFailure);
    }
    PGconn* pg = conn->get();
    log_info("connected to upstream (%s), backend pid %d%s", where.c_str(), PQbackendPID(pg),
             PQsslInUse(pg) ? ", TLS" : "");

    // The greeting: the upstream's real parameters and status, our own cancel key.
    protocol::Writer greeting;
    greeting.raw(protocol::authentication_ok());
    for (const char* name : upstream::reported_parameters())
        if (const char* value = PQparameterStatus(pg, name))
            greeting.raw(protocol::parameter_status(name, value));
    // The cancel key: the backend's own pid, so that drivers, pg_stat_activity and the
    // server's log agree, and our secret (the upstream's stays here). Published in the
    // slot before the client can know it.
    publish_client(user, database, startup);
    auto secret = ipc::new_cancel_secret(secret_length_);
    if (!secret)
        return fail("XX000", "could not generate a cancel key", kExitInternal);
    const auto backend_pid = std::uint32_t(PQbackendPID(pg));
    ipc::publish_cancel_key(slot(), backend_pid, *secret);
    greeting.raw(protocol::backend_key_data(backend_pid, *secret));
    char status = 'I';
    switch (PQtransactionStatus(pg)) {
    case PQTRANS_INTRANS:
        status = 'T';
        break;
    case PQTRANS_INERROR:
        status = 'E';
        break;
    default:
        break;
    }
    if (trail_)
        trail_->info().upstream = where;
    if (auto refused = audit_session_start())
        return *refused;
    greeting.raw(protocol::ready_for_query(status));
    if (!send(greeting.bytes()))
        return kExitOk;

    int upstream_fd = PQsocket(pg);
    if (auto st = net::set_nonblocking(upstream_fd); !st)
        return fail("08006", "upstream socket: " + st.error(), kExitUpstreamFailure);
    std::unique_ptr<upstream::Transport> server;
    if (PQsslInUse(pg))
        server = std::make_unique<upstream::TlsTransport>(
            static_cast<SSL*>(PQsslStruct(pg, "OpenSSL")), upstream_fd);
    else
        server = std::make_unique<upstream::PlainTransport>(upstream_fd);
    std::unique_ptr<PGcancel, PgCancelDeleter> pg_cancel(PQgetCancel(pg));
    auto cancel = [c = pg_cancel.get()]() -> Status {
        char err[256] = "";
        if (!PQcancel(c, err, sizeof err))
            return Error{err};
        return ok_status();
    };
    return run_relay(*server, upstream_fd, status, pg_cancel ? std::function<Status()>(cancel) : nullptr);
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
ExitCode Session::run_relay(upstream::Transport& server, int upstream_fd, char status, std::function<Status()> cancel)
{
    std::unique_ptr<upstream::Transport> client;
    if (conn_.is_tls())
        client = std::make_unique<upstream::TlsTransport>(conn_.ssl(), client_.get());
    else
        client = std::make_unique<upstream::PlainTransport>(client_.get());
    std::optional<PolicyGate> gate;
    SessionControl* control_ptr = nullptr;  // set below; the gate's override callback needs it
    if (policy_ || trail_)
        gate.emplace(policy_, [this](char type, protocol::ByteSpan body, const std::string& kind,
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
    if (policy_)
        control.set_caps(policy_->max_rows, policy_->max_bytes, policy_->allow_override);
    control.on_ready_for_query(status);
    const auto started = net::Clock::now();
    RelayOutcome out = relay(*client, server, status, &g_stop_requested, &control);
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(net::Clock::now() - started);

    if (!out.upstream_at_boundary) {
        // libpq would append its Terminate inside a half-sent message; make the
        // upstream see a plain end of stream instead.
        ::shutdown(upstream_fd, SHUT_RDWR);
    }
    if (trail_)
        trail_->write(audit::Event::SessionEnd, relay_end_name(out.end));
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
    if (trail_)
        trail_->info().upstream = target->describe();
    if (auto refused = audit_session_start())
        return *refused;
    if (!send(protocol::ready_for_query(up.status)))
        return kExitOk;
    return run_relay(*server, up.fd.get(), up.status, cancel);
}

ExitCode Session::run()
{
    if (auto st = net::set_nonblocking(client_.get()); !st) {
        log_error("client socket: %s", st.error().c_str());
        return kExitChannelError;
    }
    if (handoff_.type == ipc::HandoffType::Metrics)
        return ExitCode(admin::serve_metrics(client_.get(), table_));
    net::tune_client_socket(client_.get());
    login_deadline_ = net::Clock::now() + std::chrono::seconds(cfg_.client_login_timeout);
    auto startup = read_startup();
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

ExitCode run_session(const config::Config& cfg, const ipc::SessionTable& table, SSL_CTX* tls,
                     ipc::Received&& work)
{
    Session s(cfg, table, tls, std::move(work));
    return s.run();
}

} // namespace pgw::session
