// Pass-through login. Message formats: PostgreSQL 15 documentation, chapter 55.7.
// Authentication messages are relayed one for one; we only look inside AuthenticationSASL
// (to drop SCRAM-SHA-256-PLUS) and BackendKeyData (to swap the key).
#include "upstream/passthrough.hh"

#include "upstream/login_relay.hh"

#include "common/log.hh"
#include "protocol/bytes.hh"
#include "protocol/messages.hh"

#include <libpq-fe.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

namespace pgw::upstream {
namespace {

Result<UniqueFd> tcp_connect(const std::string& host, const std::string& port, net::Clock::time_point deadline)
{
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    if (int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &res); rc != 0)
        return Error{"could not resolve \"" + host + "\": " + gai_strerror(rc)};
    std::string last = "no address";
    for (addrinfo* ai = res; ai; ai = ai->ai_next) {
        UniqueFd fd(::socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
        if (!fd.valid())
            continue;
        if (::connect(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
            if (errno != EINPROGRESS) {
                last = std::strerror(errno);
                continue;
            }
            pollfd p{fd.get(), POLLOUT, 0};
            int err = 0;
            socklen_t len = sizeof err;
            if (::poll(&p, 1, net::ms_until(deadline)) <= 0) {
                last = "timed out (server_connect_timeout)";
                continue;
            }
            if (getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
                last = std::strerror(err);
                continue;
            }
        }
        freeaddrinfo(res);
        net::tune_client_socket(fd.get());
        return fd;
    }
    freeaddrinfo(res);
    return Error{"could not connect to " + host + ":" + port + ": " + last};
}

// Why a message could not be read: the peer closed, the deadline passed, or its header
// was refused (`refused` says why).
enum class Read { Ok, Closed, Timeout, Refused };

struct Message {
    char type = 0;
    std::string body;
    std::optional<LoginStep> refused;
};

Read read_message(tls::Conn& c, Message& m, bool from_server, net::Clock::time_point deadline)
{
    unsigned char head[5];
    auto rs = c.read_exact(head, sizeof head, deadline);
    if (rs != net::ReadStatus::Ok)
        return rs == net::ReadStatus::Timeout ? Read::Timeout : Read::Closed;
    std::uint32_t len = protocol::load_be32(reinterpret_cast<const std::byte*>(head + 1));
    m.type = char(head[0]);
    m.refused = from_server ? LoginRelay::check_server_header(len) : LoginRelay::check_client_header(m.type, len);
    if (m.refused)
        return Read::Refused;
    m.body.assign(len - 4, '\0');
    rs = c.read_exact(m.body.data(), m.body.size(), deadline);
    if (rs != net::ReadStatus::Ok)
        return rs == net::ReadStatus::Timeout ? Read::Timeout : Read::Closed;
    return Read::Ok;
}

bool write_message(tls::Conn& c, char type, std::string_view body, net::Clock::time_point deadline)
{
    protocol::Writer w;
    w.begin(type);
    w.raw(protocol::as_bytes(body));
    w.finish();
    return c.write_all(w.bytes().data(), w.bytes().size(), deadline);
}

PassThroughFailure failure(const char* sqlstate, std::string message, std::string log = {})
{
    PassThroughFailure f;
    f.sqlstate = sqlstate;
    f.log = log.empty() ? message : log;
    f.message = std::move(message);
    return f;
}

PassThroughFailure refused(const LoginStep& step)
{
    PassThroughFailure f = failure(step.sqlstate.c_str(), step.message, step.log);
    f.hint = step.hint;
    return f;
}

constexpr const char* kLoginTimeout = "the login did not finish within server_connect_timeout";

} // namespace

std::string PassThroughTarget::describe() const
{
    return "host=" + host + " port=" + port + (dbname.empty() ? "" : " dbname=" + dbname) + " sslmode=" + sslmode;
}

Result<PassThroughTarget> pass_through_target(const config::DatabaseEntry& entry)
{
    char* err = nullptr;
    PQconninfoOption* opts = PQconninfoParse(entry.conninfo.c_str(), &err);
    PQfreemem(err);
    if (!opts)
        return Error{"invalid connection string for database \"" + entry.name + "\""};
    PassThroughTarget t;
    std::string hostaddr;
    for (PQconninfoOption* o = opts; o->keyword; ++o) {
        if (!o->val || !*o->val)
            continue;
        std::string k = o->keyword, v = o->val;
        if (k == "host")
            t.host = v.substr(0, v.find(','));
        else if (k == "hostaddr")
            hostaddr = v.substr(0, v.find(','));
        else if (k == "port")
            t.port = v.substr(0, v.find(','));
        else if (k == "dbname")
            t.dbname = v;
        else if (k == "sslmode")
            t.sslmode = v;
        else if (k == "sslrootcert")
            t.sslrootcert = v;
    }
    PQconninfoFree(opts);
    if (!hostaddr.empty() && t.host.empty())
        t.host = hostaddr;
    if (t.host.empty() || t.host[0] == '/')
        return Error{"database \"" + entry.name + "\": pass-through needs a TCP host= (Unix sockets are not supported)"};
    if (t.sslmode == "allow")
        t.sslmode = "prefer";
    if (t.sslmode != "disable" && t.sslmode != "prefer" && t.sslmode != "require" && t.sslmode != "verify-ca" &&
        t.sslmode != "verify-full")
        return Error{"database \"" + entry.name + "\": unknown sslmode \"" + t.sslmode + "\""};
    return t;
}

std::variant<PassThroughSession, PassThroughFailure>
pass_through_login(const PassThroughTarget& target, const std::vector<std::pair<std::string, std::string>>& params,
                   tls::Conn& client, protocol::ByteSpan our_secret,
                   net::Clock::time_point deadline)
{
    PassThroughSession s;
    auto fd = tcp_connect(target.host, target.port, deadline);
    if (!fd)
        return failure("08006", fd.error());
    s.fd = std::move(*fd);
    s.conn = std::make_unique<tls::Conn>(s.fd.get());
    tls::Conn& up = *s.conn;

    if (target.sslmode != "disable") {
        protocol::Writer w;
        w.u32(8);
        w.u32(80877103);  // SSLRequest
        char answer = 0;
        if (!up.write_all(w.bytes().data(), w.bytes().size(), deadline) ||
            up.read_exact(&answer, 1, deadline) != net::ReadStatus::Ok)
            return failure("08006", "the upstream server closed the connection during the TLS request");
        if (answer == 'S') {
            // Bytes behind the 'S' came before TLS, so anyone on the path could have put
            // them there (CVE-2021-23222): refuse, as libpq does.
            if (net::readable_now(s.fd.get()))
                return failure("08006", "the upstream server sent unencrypted data after its answer to the TLS "
                                        "request (a server bug, or a man in the middle)");
            if (auto st = up.connect_tls(target.sslmode, target.sslrootcert, target.host, deadline); !st)
                return failure("08006", "TLS to the upstream server failed: " + st.error());
        } else if (answer != 'N' || target.sslmode != "prefer") {
            return failure("08006", answer == 'N' ? "the upstream server does not support TLS (sslmode=" + target.sslmode + ")"
                                                  : "unexpected answer to the TLS request from the upstream server");
        }
    }

    protocol::Writer startup;
    startup.u32(0);
    startup.u32(196608);  // protocol 3.0
    for (const auto& [k, v] : params) {
        startup.cstring(k);
        startup.cstring(v);
    }
    startup.u8(0);
    std::uint32_t len = std::uint32_t(startup.bytes().size());
    for (int i = 0; i < 4; ++i)
        startup.bytes()[size_t(i)] = std::byte(len >> (24 - 8 * i));
    if (!up.write_all(startup.bytes().data(), startup.bytes().size(), deadline))
        return failure("08006", "could not send the startup packet to the upstream server");

    // Relays until ReadyForQuery: the server speaks; when it asks, the client answers.
    // LoginRelay says what may come when; we only read and write.
    LoginRelay relay;
    for (;;) {
        Message m;
        switch (read_message(up, m, true, deadline)) {
        case Read::Ok:
            break;
        case Read::Closed:
            return failure("08006", "the upstream server closed the connection during login");
        case Read::Timeout:
            return failure("08006", kLoginTimeout, std::string(kLoginTimeout) + " (waiting for the upstream server)");
        case Read::Refused:
            return refused(*m.refused);
        }
        LoginStep step = relay.on_server(m.type, m.body);
        switch (step.kind) {
        case LoginStep::Kind::Refuse:
            return refused(step);
        case LoginStep::Kind::ServerError: {
            write_message(client, 'E', step.body, deadline);
            PassThroughFailure f;
            f.forwarded = true;
            f.sqlstate = step.sqlstate;
            f.log = step.log;
            return f;
        }
        case LoginStep::Kind::Ready:
            // The first ReadyForQuery is the caller's to send (after its own checks). A
            // server that sent no key gets no cancel (the client gets no key either).
            s.backend_pid = relay.backend_pid();
            s.backend_secret = relay.backend_secret();
            s.status = relay.status();
            return s;
        case LoginStep::Kind::Wait:
            if (m.type == 'K') {  // the server's pid with our secret
                auto ours = protocol::backend_key_data(relay.backend_pid(), our_secret);
                if (!client.write_all(ours.data(), ours.size(), deadline))
                    return failure("08006", "could not write to the client", "client gone");
            }
            continue;
        case LoginStep::Kind::Forward:
        case LoginStep::Kind::AskClient:
            break;
        }
        if (!write_message(client, step.type, step.body, deadline))
            return failure("08006", "could not write to the client", "client gone");
        if (step.kind != LoginStep::Kind::AskClient)
            continue;
        Message reply;
        switch (read_message(client, reply, false, deadline)) {
        case Read::Ok:
            break;
        case Read::Closed: {
            PassThroughFailure f = failure("08P01", "", "the client closed the connection during authentication");
            f.client_left = true;
            return f;
        }
        case Read::Timeout:
            return failure("08006", kLoginTimeout, std::string(kLoginTimeout) + " (waiting for the client's answer)");
        case Read::Refused:
            return refused(*reply.refused);
        }
        LoginStep answer = relay.on_client(reply.type, reply.body);
        if (answer.kind == LoginStep::Kind::Refuse)
            return refused(answer);
        if (!write_message(up, 'p', answer.body, deadline))
            return failure("08006", "the upstream server closed the connection during authentication");
    }
}

Status send_cancel(const PassThroughTarget& target, std::uint32_t pid, std::uint32_t secret,
                   net::Clock::time_point deadline)
{
    auto fd = tcp_connect(target.host, target.port, deadline);
    if (!fd)
        return Error{fd.error()};
    protocol::Writer w;
    w.u32(16);
    w.u32(80877102);  // CancelRequest
    w.u32(pid);
    w.u32(secret);
    if (!net::write_all(fd->get(), w.bytes().data(), w.bytes().size(), deadline))
        return Error{"could not send the cancel request"};
    char b;
    net::read_exact(fd->get(), &b, 1, deadline);  // the server closes when it has read it
    return ok_status();
}

} // namespace pgw::upstream
