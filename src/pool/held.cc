// Talking to a held upstream between sessions: reset, application_name, checks.
#include "pool/held.hh"

#include "protocol/bytes.hh"
#include "protocol/messages.hh"

#include <poll.h>
#include <sys/socket.h>

#include <cstring>
#include <vector>

namespace pgw::pool {

std::unique_ptr<upstream::Transport> HeldUpstream::transport() const
{
    if (PQsslInUse(conn.get()))
        return std::make_unique<upstream::TlsTransport>(static_cast<SSL*>(PQsslStruct(conn.get(), "OpenSSL")),
                                                        fd());
    return std::make_unique<upstream::PlainTransport>(fd());
}

HeldUpstream hold(upstream::PgConnPtr conn, std::string route, std::string where)
{
    HeldUpstream h;
    for (const char* name : upstream::reported_parameters())
        if (const char* value = PQparameterStatus(conn.get(), name))
            h.parameters[name] = value;
    h.backend_pid = std::uint32_t(PQbackendPID(conn.get()));
    h.conn = std::move(conn);
    h.route = std::move(route);
    h.where = std::move(where);
    h.created = h.idle_since = h.checked = net::Clock::now();
    return h;
}

namespace {

// Waits until the transport may make progress, or the deadline.
bool wait_for(upstream::Transport& t, upstream::Io want, net::Clock::time_point deadline)
{
    if (want == upstream::Io::WantRead && t.has_buffered())
        return true;
    pollfd p{t.fd(), short(want == upstream::Io::WantWrite ? POLLOUT : POLLIN), 0};
    for (;;) {
        int ms = net::ms_until(deadline);
        if (ms <= 0)
            return false;
        int n = ::poll(&p, 1, ms);
        if (n > 0)
            return true;
        if (n < 0 && errno != EINTR)
            return false;
    }
}

std::string cstr(const std::byte* p, size_t n)
{
    const char* s = reinterpret_cast<const char*>(p);
    return std::string(s, strnlen(s, n));
}

} // namespace

Status simple_query(HeldUpstream& held, const std::string& sql, net::Clock::time_point deadline)
{
    auto t = held.transport();
    protocol::Writer w;
    w.begin('Q');
    w.cstring(sql);
    w.finish();
    const protocol::Bytes& out = w.bytes();
    size_t sent = 0;
    while (sent < out.size()) {
        auto r = t->write(out.data() + sent, out.size() - sent);
        if (r.status == upstream::Io::Ok)
            sent += r.n;
        else if (r.status == upstream::Io::WantRead || r.status == upstream::Io::WantWrite) {
            if (!wait_for(*t, r.status, deadline))
                return Error{"timed out sending \"" + sql + "\""};
        } else
            return Error{"upstream closed while sending \"" + sql + "\""};
    }
    std::vector<std::byte> in;
    std::string error;
    for (;;) {
        // Whole messages first.
        while (in.size() >= 5) {
            const char type = char(in[0]);
            const std::uint32_t len = protocol::load_be32(in.data() + 1);
            if (len < 4 || len > 1024 * 1024)
                return Error{"unframeable answer to \"" + sql + "\""};
            if (in.size() < 1 + size_t(len))
                break;
            const std::byte* body = in.data() + 5;
            const size_t body_len = len - 4;
            switch (type) {
            case 'S': {
                std::string name = cstr(body, body_len);
                if (name.size() + 1 < body_len)
                    held.parameters[name] = cstr(body + name.size() + 1, body_len - name.size() - 1);
                break;
            }
            case 'E':
                if (auto e = protocol::decode_error_fields({body, body_len}))
                    error = e->sqlstate + ": " + e->message;
                else
                    error = "an unreadable error";
                break;
            case 'Z':
                if (!error.empty())
                    return Error{"\"" + sql + "\" failed: " + error};
                if (body_len != 1 || char(body[0]) != 'I')
                    return Error{"\"" + sql + "\" left the connection inside a transaction"};
                if (in.size() != 1 + size_t(len))
                    return Error{"the server sent more after \"" + sql + "\""};
                return ok_status();
            case 'C':
            case 'I':  // EmptyQueryResponse
            case 'N':
            case 'A':
            case 'T':
            case 'D':
                break;
            default:
                return Error{std::string("unexpected message '") + type + "' in the answer to \"" + sql + "\""};
            }
            in.erase(in.begin(), in.begin() + 1 + len);
        }
        std::byte buf[8192];
        auto r = t->read(buf, sizeof buf);
        if (r.status == upstream::Io::Ok)
            in.insert(in.end(), buf, buf + r.n);
        else if (r.status == upstream::Io::WantRead || r.status == upstream::Io::WantWrite) {
            if (!wait_for(*t, r.status, deadline))
                return Error{"timed out waiting for the answer to \"" + sql + "\""};
        } else
            return Error{"upstream closed while answering \"" + sql + "\""};
    }
}

bool stirred(const HeldUpstream& held)
{
    pollfd p{held.fd(), POLLIN, 0};
    return ::poll(&p, 1, 0) != 0;
}

void close_gracefully(HeldUpstream& held)
{
    // PQfinish sends Terminate on a non-blocking socket and frees the connection.
    held.conn.reset();
}

} // namespace pgw::pool
