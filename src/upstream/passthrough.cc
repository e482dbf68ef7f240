// Pass-through login. Message formats: PostgreSQL 15 documentation, chapter 55.7.
// Authentication messages are relayed one for one; we only look inside AuthenticationSASL
// (to drop SCRAM-SHA-256-PLUS) and BackendKeyData (to swap the key).
#include "upstream/passthrough.hh"

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

// The server's messages during login are small; a huge one is a broken server.
constexpr std::uint32_t kMaxLoginMessage = 1024 * 1024;
constexpr std::uint32_t kMaxClientAuthMessage = 64 * 1024;

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

struct Message {
    char type = 0;
    std::string body;
};

bool read_message(tls::Conn& c, Message& m, std::uint32_t cap, net::Clock::time_point deadline)
{
    unsigned char head[5];
    if (c.read_exact(head, sizeof head, deadline) != net::ReadStatus::Ok)
        return false;
    std::uint32_t len = protocol::load_be32(reinterpret_cast<const std::byte*>(head + 1));
    if (len < 4 || len > cap)
        return false;
    m.type = char(head[0]);
    m.body.assign(len - 4, '\0');
    return c.read_exact(m.body.data(), m.body.size(), deadline) == net::ReadStatus::Ok;
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

// AuthenticationSASL's list without SCRAM-SHA-256-PLUS.
std::string without_channel_binding(const std::string& body)
{
    std::string out = body.substr(0, 4);  // the code
    size_t at = 4;
    while (at < body.size()) {
        size_t nul = body.find('\0', at);
        if (nul == std::string::npos || nul == at)
            break;
        std::string mech = body.substr(at, nul - at);
        if (mech != "SCRAM-SHA-256-PLUS")
            out += mech + std::string(1, '\0');
        at = nul + 1;
    }
    return out + std::string(1, '\0');
}

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
    bool authenticated = false;
    bool offered_plus = false;  // the server offered SCRAM-SHA-256-PLUS (we removed it)
    for (;;) {
        Message m;
        if (!read_message(up, m, kMaxLoginMessage, deadline))
            return failure("08006", "the upstream server closed the connection during login");
        if (m.type == 'E') {
            write_message(client, 'E', m.body, deadline);
            PassThroughFailure f;
            f.forwarded = true;
            auto fields = protocol::decode_error_fields(
                {reinterpret_cast<const std::byte*>(m.body.data()), m.body.size()});
            f.sqlstate = fields ? fields->sqlstate : "";
            f.log = "the upstream server refused the login: " + (fields ? fields->sqlstate + ": " + fields->message : std::string("?"));
            return f;
        }
        if (m.type == 'K' && m.body.size() == 8) {
            s.backend_pid = protocol::load_be32(reinterpret_cast<const std::byte*>(m.body.data()));
            s.backend_secret = protocol::load_be32(reinterpret_cast<const std::byte*>(m.body.data() + 4));
            auto ours = protocol::backend_key_data(s.backend_pid, our_secret);
            if (!client.write_all(ours.data(), ours.size(), deadline))
                return failure("08006", "could not write to the client", "client gone");
            continue;
        }
        if (m.type == 'R') {
            if (m.body.size() < 4)
                return failure("08P01", "malformed authentication request from the upstream server");
            std::uint32_t code = protocol::load_be32(reinterpret_cast<const std::byte*>(m.body.data()));
            std::string body = m.body;
            bool answer = false;
            switch (code) {
            case 0:
                authenticated = true;
                break;
            case 3:   // cleartext password
            case 5:   // MD5
            case 11:  // SASL continue
                answer = true;
                break;
            case 10:  // SASL: the mechanisms
                body = without_channel_binding(m.body);
                offered_plus = body.size() != m.body.size();
                if (body.size() <= 5)
                    return failure("28000", "the upstream server offers only SCRAM with channel binding, which cannot "
                                            "work through pgwicket (the client's TLS ends here)");
                answer = true;
                break;
            case 12:  // SASL final: no answer
                break;
            default:
                return failure("0A000", "the upstream server asked for an authentication method pgwicket cannot relay "
                                        "(code " + std::to_string(code) + "; GSSAPI and SSPI are not supported)");
            }
            if (!write_message(client, 'R', body, deadline))
                return failure("08006", "could not write to the client", "client gone");
            if (answer) {
                Message reply;
                if (!read_message(client, reply, kMaxClientAuthMessage, deadline)) {
                    PassThroughFailure f = failure("08P01", "", "the client closed the connection during authentication");
                    f.client_left = true;
                    return f;
                }
                if (reply.type != 'p')
                    return failure("08P01", std::string("expected a password response, got message type '") + reply.type + "'");
                // A client on TLS that supports channel binding says so ("y") when it is not
                // offered; a server that did offer it takes that for a downgrade attack and
                // refuses. The flag is covered by the client's proof, so say it clearly here.
                if (code == 10 && offered_plus) {
                    size_t nul = reply.body.find('\0');
                    if (nul != std::string::npos && reply.body.size() >= nul + 7 &&
                        reply.body.compare(nul + 5, 2, "y,") == 0)
                    {
                        // libpq's default (channel_binding=prefer) lands here whenever client and
                        // upstream both use TLS; the hint is the way in.
                        PassThroughFailure f = failure(
                            "28000",
                            "SCRAM through pgwicket cannot use channel binding, which the upstream server "
                            "offers on its TLS connection: connect with channel_binding=disable",
                            "client supports channel binding and the upstream server offers it; the exchange "
                            "would fail as a downgrade");
                        f.hint = "Add channel_binding=disable to the connection string (or set "
                                 "PGCHANNELBINDING=disable), and keep sslmode=verify-full so that the client "
                                 "still checks pgwicket's certificate. Channel binding cannot reach a server "
                                 "behind a proxy that ends TLS, so nothing that works through pgwicket is lost. "
                                 "A plaintext upstream for this database would avoid this too.";
                        return f;
                    }
                }
                if (!write_message(up, 'p', reply.body, deadline))
                    return failure("08006", "the upstream server closed the connection during authentication");
            }
            continue;
        }
        if (!authenticated && m.type != 'N' && m.type != 'v')
            return failure("08P01", std::string("unexpected message '") + m.type + "' from the upstream server during login");
        // The first ReadyForQuery is the caller's to send (after its own checks).
        if (m.type == 'Z') {
            s.status = m.body.empty() ? 'I' : m.body[0];
            return s;
        }
        // ParameterStatus, notices, NegotiateProtocolVersion: as they are.
        if (!write_message(client, m.type, m.body, deadline))
            return failure("08006", "could not write to the client", "client gone");
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
