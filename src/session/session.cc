// The session state machine: first packet (SSL/GSS refusals, cancel, startup),
// database lookup, upstream connect, greeting, relay, and the log line at the end.
#include "session/session.hh"

#include "common/log.hh"
#include "common/net.hh"
#include "protocol/messages.hh"
#include "protocol/startup.hh"
#include "session/relay.hh"
#include "upstream/connect.hh"
#include "upstream/transport.hh"

#include <openssl/rand.h>

#include <chrono>
#include <cstring>
#include <variant>

namespace pgw::session {

volatile std::sig_atomic_t g_stop_requested = 0;

namespace {

using namespace std::chrono_literals;
using protocol::Bytes;

class Session {
public:
    Session(const config::Config& cfg, ipc::Received&& work)
        : cfg_(cfg), handoff_(work.handoff), client_(std::move(work.client))
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
        return net::write_all(client_.get(), b.data(), b.size(), net::Clock::now() + 10s);
    }
    // Ends the session with an error the client can read before the close.
    ExitCode fail(const protocol::ErrorFields& e, ExitCode code)
    {
        send(protocol::error_response(e));
        net::linger_close(client_.get(), net::Clock::now() + 1s);
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
    // Reads packets until a StartupMessage; answers SSL/GSS requests with 'N'.
    std::variant<protocol::StartupMessage, ExitCode> read_startup();
    ExitCode start_session(const protocol::StartupMessage& startup);

    const config::Config& cfg_;
    ipc::Handoff handoff_;
    UniqueFd client_;
    std::string peer_, peer_host_;
};

std::variant<protocol::StartupMessage, ExitCode> Session::read_startup()
{
    const auto deadline = net::Clock::now() + std::chrono::seconds(cfg_.client_login_timeout);
    bool ssl_refused = false, gss_refused = false;
    for (;;) {
        unsigned char len_bytes[4];
        auto rs = net::read_exact(client_.get(), len_bytes, sizeof len_bytes, deadline);
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
            return fail(err->sqlstate, err->message, kExitClientError);
        }
        std::vector<std::byte> body(len - 4);
        rs = net::read_exact(client_.get(), body.data(), body.size(), deadline);
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
            return fail(err->sqlstate, err->message, kExitClientError);
        }
        auto& fp = std::get<protocol::FirstPacket>(decoded);
        switch (fp.kind) {
        case protocol::FirstPacketKind::SslRequest:
        case protocol::FirstPacketKind::GssEncRequest: {
            bool& seen = fp.kind == protocol::FirstPacketKind::SslRequest ? ssl_refused : gss_refused;
            if (seen)
                return fail("08P01", "duplicate encryption request packet", kExitClientError);
            seen = true;
            // TLS for clients arrives with the TLS issue; until then both are declined
            // and libpq (sslmode=prefer) continues in plaintext on the same socket.
            const char no = 'N';
            if (!net::write_all(client_.get(), &no, 1, deadline))
                return kExitClientError;
            continue;
        }
        case protocol::FirstPacketKind::Cancel:
            // Not built yet: routing cancel keys through the shared-memory table is
            // the cancel issue's work. The request is acknowledged by closing, as
            // PostgreSQL does, and has no effect.
            log_info("cancel request ignored: cancel routing is not implemented yet");
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

    if (startup.minor > 0 || !startup.unknown_protocol_options.empty()) {
        // Like PostgreSQL: offer 3.0 and list the _pq_ options we do not know.
        if (!send(protocol::negotiate_protocol_version(0, startup.unknown_protocol_options)))
            return kExitClientError;
    }
    if (const std::string* repl = startup.get("replication");
        repl && *repl != "false" && *repl != "off" && *repl != "no" && *repl != "0") {
        log_info("refused replication connection");
        return fail("0A000", "replication connections are not supported by pgwicket",
                    kExitRefused, "Connect replication clients to the server directly.");
    }

    const config::DatabaseEntry* entry = cfg_.find_database(database);
    if (!entry) {
        log_info("refused: no [databases] entry for \"%s\"", database.c_str());
        return fail("3D000", "database \"" + database + "\" does not exist", kExitRefused,
                    "pgwicket has no [databases] entry for it and no \"*\" fallback.");
    }

    upstream::ClientInfo info{user, database, peer_host_, &startup};
    auto params = upstream::build_params(*entry, info, cfg_.application_name_prefix);
    if (!params)
        return fail("08006", params.error(), kExitUpstreamFailure);
    const std::string where = upstream::describe(*params);

    auto deadline = net::Clock::now() + std::chrono::seconds(cfg_.server_connect_timeout);
    upstream::ConnectFailure why;
    auto conn = upstream::connect(*params, deadline, &why);
    if (!conn) {
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
    std::uint32_t key[2] = {0, 0};
    if (RAND_bytes(reinterpret_cast<unsigned char*>(key), sizeof key) != 1)
        return fail("XX000", "could not generate a cancel key", kExitInternal);
    greeting.raw(protocol::backend_key_data(key[0] & 0x7fffffff, key[1]));
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
    upstream::PlainTransport client(client_.get());

    const auto started = net::Clock::now();
    RelayOutcome out = relay(client, *server, status, &g_stop_requested);
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(net::Clock::now() - started);

    if (!out.upstream_at_boundary) {
        // libpq would append its Terminate inside a half-sent message; make the
        // upstream see a plain end of stream instead.
        ::shutdown(upstream_fd, SHUT_RDWR);
    }
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

ExitCode Session::run()
{
    if (auto st = net::set_nonblocking(client_.get()); !st) {
        log_error("client socket: %s", st.error().c_str());
        return kExitChannelError;
    }
    net::tune_client_socket(client_.get());
    auto startup = read_startup();
    if (auto* code = std::get_if<ExitCode>(&startup))
        return *code;
    if (handoff_.type == ipc::HandoffType::Refuse) {
        log_info("refused: max_client_conn (%ld) reached", cfg_.max_client_conn);
        return fail("53300", "sorry, too many clients already", kExitRefused);
    }
    return start_session(std::get<protocol::StartupMessage>(startup));
}

} // namespace

ExitCode run_session(const config::Config& cfg, ipc::Received&& work)
{
    Session s(cfg, std::move(work));
    return s.run();
}

} // namespace pgw::session
