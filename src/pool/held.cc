// Talking to a held upstream between sessions: reset, application_name, checks;
// and its row in the shared table's SHOW SERVERS list.
#include "pool/held.hh"

#include "common/log.hh"
#include "pool/context.hh"
#include "protocol/bytes.hh"
#include "protocol/messages.hh"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
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
    // libpq leaves its sockets non-blocking already; made sure of once here, not for
    // every session the connection serves.
    if (auto st = net::set_nonblocking(h.fd()); !st)
        log_warning("upstream socket: %s", st.error().c_str());
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
        // The answer takes a round trip: wait for it rather than read nothing first.
        if (in.empty() && !wait_for(*t, upstream::Io::WantRead, deadline))
            return Error{"timed out waiting for the answer to \"" + sql + "\""};
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

Status set_application_name(HeldUpstream& held, const std::string& name, net::Clock::time_point deadline)
{
    char* lit = PQescapeLiteral(held.conn.get(), name.c_str(), name.size());
    if (!lit)
        return Error{"could not quote application_name"};
    Status named = simple_query(held, std::string("SET application_name = ") + lit, deadline);
    PQfreemem(lit);
    return named;
}

void close_gracefully(HeldUpstream& held)
{
    if (held.standby) {
        close_gracefully(*held.standby);
        held.standby.reset();
    }
    // PQfinish sends Terminate on a non-blocking socket and frees the connection.
    held.conn.reset();
    held.row.release();
}

void ServerRowLease::release()
{
    if (row_)
        ipc::SessionTable::release_server_row(*std::exchange(row_, nullptr), ::getpid());
}

namespace {

void mark_row(HeldUpstream& held, const std::string& label, const ipc::SessionTable& table, ServerState state)
{
    using namespace std::chrono;
    if (!held.conn)
        return;
    // The held times are steady-clock; the row's are wall-clock, for other processes.
    const auto now = net::Clock::now();
    const std::int64_t wall_now = ipc::wall_clock_ms();
    auto wall = [&](net::Clock::time_point t) { return wall_now - duration_cast<milliseconds>(now - t).count(); };
    if (!held.row) {
        held.row = ServerRowLease(table.claim_server_row(::getpid()));
        if (!held.row) {
            if (table.header()->servers_full_warned.exchange(1, std::memory_order_relaxed) == 0)
                log_warning("SHOW SERVERS lists at most %u pooled connections; more are open, and are not listed",
                            unsigned(ipc::kServerRows));
            return;
        }
        ipc::ServerRow& r = *held.row.get();
        r.pool.set(label);
        r.backend_pid.store(held.backend_pid, std::memory_order_relaxed);
        r.tls.store(PQsslInUse(held.conn.get()) ? 1 : 0, std::memory_order_relaxed);
        r.connected_ms.store(wall(held.created), std::memory_order_relaxed);
    }
    ipc::ServerRow& r = *held.row.get();
    r.idle_since_ms.store(state == ServerState::Active ? 0 : wall(held.idle_since), std::memory_order_relaxed);
    r.checked_ms.store(wall(held.checked), std::memory_order_relaxed);
    r.sessions.store(held.sessions, std::memory_order_relaxed);
    r.state.store(std::uint32_t(state), std::memory_order_release);
}

} // namespace

void mark_server(HeldUpstream& held, const ipc::SessionTable& table, ServerState state)
{
    if (!table.valid())
        return;
    const std::string label = route_label(held.route);
    mark_row(held, label, table, state);
    if (held.standby)
        mark_row(*held.standby, label + " (standby)", table, state);
}

} // namespace pgw::pool
