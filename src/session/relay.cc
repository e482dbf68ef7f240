// Relay loop: read while there is room, frame what was read, write what is framed;
// poll only when every side would block. Memory is two fixed buffers, whatever the result size.
#include "session/relay.hh"

#include "common/held_signals.hh"
#include "common/log.hh"
#include "common/net.hh"
#include "protocol/framer.hh"
#include "protocol/messages.hh"

#include <poll.h>
#include <signal.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <memory>

namespace pgw::session {
namespace {

protocol::Bytes default_stop_message()
{
    return protocol::fatal("57P01", "terminating connection due to pgwicket shutdown",
                           "pgwicket is shutting down; connect again once it is back.");
}

using upstream::Io;
using upstream::IoResult;
using upstream::Transport;

// A fixed buffer with three cursors: [read, scanned) may be forwarded,
// [scanned, write) waits for the framer (an incomplete header or inspected message).
// Cuts mark scanned messages that do not go on: forwarding stops at the first one,
// its replacement (if any) goes out, and its bytes are dropped.
class Pipe {
public:
    explicit Pipe(size_t cap) : data_(new std::byte[cap]), cap_(cap) {}

    size_t space()
    {
        // Compact when the tail is short so a whole inspected message always fits.
        if (rpos_ > 0 && cap_ - wpos_ < cap_ / 4)
            compact();
        return cap_ - wpos_;
    }
    std::byte* tail() { return data_.get() + wpos_; }
    void produced(size_t n) { wpos_ += n; }

    protocol::ByteSpan unscanned() const { return {data_.get() + spos_, wpos_ - spos_}; }
    void scanned(size_t n) { spos_ += n; }

    // Forwarding stops at a cut.
    protocol::ByteSpan forwardable() const
    {
        size_t end = cuts_.empty() ? spos_ : cuts_.front().at;
        return {data_.get() + rpos_, end - rpos_};
    }
    void consumed(size_t n)
    {
        rpos_ += n;
        if (rpos_ == wpos_)
            compact();  // nothing to move: only the cursors start over
    }

    // Marks the `len` bytes that start `offset` bytes into unscanned() as a message that
    // does not go on, with `replacement` written in its place (empty: only dropped). A cut
    // that starts where the previous one ends joins it: a run of dropped rows is one cut,
    // dropped at once, however many messages it holds.
    void cut(size_t offset, std::uint64_t len, protocol::Bytes replacement)
    {
        const size_t at = spos_ + offset;
        if (!cuts_.empty() && cuts_.back().at + cuts_.back().len == at) {
            Cut& last = cuts_.back();
            last.len += len;
            last.replacement.insert(last.replacement.end(), replacement.begin(), replacement.end());
            return;
        }
        cuts_.push_back({at, len, std::move(replacement), 0});
    }
    bool has_cut() const { return !cuts_.empty(); }
    bool at_cut() const { return !cuts_.empty() && rpos_ == cuts_.front().at; }
    // What is still to be written of the first cut's replacement.
    protocol::ByteSpan replacement_left() const
    {
        const Cut& c = cuts_.front();
        return {c.replacement.data() + c.written, c.replacement.size() - c.written};
    }
    void replacement_written(size_t n) { cuts_.front().written += n; }
    // The destination has part of a replacement: it is inside one of our messages.
    bool mid_replacement() const
    {
        return !cuts_.empty() && cuts_.front().written > 0 &&
               cuts_.front().written < cuts_.front().replacement.size();
    }
    // Whether there are bytes to write: framed ones, or a replacement at a cut.
    bool has_output() const { return !forwardable().empty() || (at_cut() && !replacement_left().empty()); }
    // Drops the first cut's bytes as far as they are scanned; the rest of a message longer
    // than what has arrived goes as it is scanned. Returns the bytes dropped.
    size_t drop_cut()
    {
        Cut& c = cuts_.front();
        const size_t n = size_t(std::min<std::uint64_t>(c.len, spos_ - c.at));
        c.at += n;
        c.len -= n;
        if (c.len == 0)
            cuts_.pop_front();
        consumed(n);
        return n;
    }

private:
    struct Cut {
        size_t at;           // where it starts in the buffer
        std::uint64_t len;   // bytes still to drop, some perhaps not read yet
        protocol::Bytes replacement;
        size_t written;      // of the replacement
    };

    void compact()
    {
        std::memmove(data_.get(), data_.get() + rpos_, wpos_ - rpos_);
        spos_ -= rpos_;
        wpos_ -= rpos_;
        for (Cut& c : cuts_)
            c.at -= rpos_;
        rpos_ = 0;
    }

    std::unique_ptr<std::byte[]> data_;
    size_t cap_;
    size_t rpos_ = 0, spos_ = 0, wpos_ = 0;
    // In stream order. More than one only when forwarded messages stand between dropped
    // ones; a replacement pauses the scan until every cut is out.
    std::deque<Cut> cuts_;
};

struct Direction {
    Direction(Transport& s, Transport& d) : src(s), dst(d), pipe(kRelayBufferSize), framer(kRelayBufferSize) {}
    Transport& src;
    Transport& dst;
    Pipe pipe;
    protocol::Framer framer;
    Io read_wait = Io::WantRead;
    Io write_wait = Io::WantWrite;
    // Whether a read may find data: set by poll() or by a read that filled all the
    // room it had; cleared by a short read. Saves a read() per message that would
    // only return EAGAIN.
    bool may_read = true;
    bool src_done = false;     // EOF or error reading
    bool dst_failed = false;   // writing failed
    bool stopped = false;      // the framer was asked to stop (Terminate)
    bool paused = false;       // scanning waits until a replacement has been written
    bool violation = false;
    bool too_large = false;  // a message the session had to see did not fit (strict framer)
    std::uint64_t bytes = 0;

    // The destination has seen only whole messages.
    bool dst_at_boundary() const
    {
        return framer.at_boundary() && pipe.forwardable().empty() && !pipe.mid_replacement();
    }
};

short poll_bit(Io wait) { return wait == Io::WantWrite ? POLLOUT : POLLIN; }

class Relay {
public:
    Relay(Transport& client, Transport& server, char status, const volatile std::sig_atomic_t* stop,
          RelayObserver* observer)
        : c2s_(client, server), s2c_(server, client), stop_(stop), observer_(observer)
    {
        out_.transaction_status = status;
        c2s_.framer.set_strict(true);
        // Each side has just been given its turn (the client our ReadyForQuery, the
        // server its own): the first look is a poll, not a read that finds nothing.
        // Poll sees what is in the sockets; bytes a TLS layer holds decrypted are read.
        c2s_.may_read = client.has_buffered();
        s2c_.may_read = server.has_buffered();
    }
    Relay(const Relay&) = delete;
    Relay& operator=(const Relay&) = delete;

    RelayOutcome run();

private:
    bool pump(Direction& d, bool from_client);
    // One write toward d's destination: the bytes it took; on would-block it notes
    // what to wait for, on failure it marks the destination failed.
    size_t push(Direction& d, protocol::ByteSpan bytes);
    bool finished(RelayOutcome& out);
    void wait();
    // Best-effort: deliver what is framed, then our own message, if the stream allows.
    void finish_to_client(const protocol::Bytes* message);

    Direction c2s_, s2c_;
    const volatile std::sig_atomic_t* stop_;
    RelayObserver* observer_;
    // Let in only inside ppoll(); the mask from before the relay is back when it ends.
    HeldSignals signals_{SIGTERM, SIGINT, SIGUSR1, SIGCHLD, SIGHUP};
    RelayOutcome out_;
    bool last_server_error_fatal_ = false;
};

// One round for one direction: read, frame, write. Returns whether anything moved.
bool Relay::pump(Direction& d, bool from_client)
{
    bool progress = false;
    if (!d.src_done && !d.stopped && d.may_read) {
        size_t room = d.pipe.space();
        if (room > 0) {
            IoResult r = d.src.read(d.pipe.tail(), room);
            if (r.status == Io::Ok) {
                d.pipe.produced(r.n);
                d.bytes += r.n;
                if (observer_)
                    observer_->on_bytes(from_client, r.n);
                progress = true;
                if (r.n < room && !d.src.has_buffered()) {
                    // A short read drained the socket; wait for poll to say more came.
                    d.may_read = false;
                    d.read_wait = Io::WantRead;
                }
            } else if (r.status == Io::WantRead || r.status == Io::WantWrite) {
                d.read_wait = r.status;
                d.may_read = false;
            } else {
                d.src_done = true;
                progress = true;
            }
        }
    }
    if (!d.stopped && !d.paused && !d.violation && !d.pipe.unscanned().empty()) {
        const protocol::ByteSpan unscanned = d.pipe.unscanned();
        bool replaced = false;
        // Our bytes go to the destination in place of the message whose body this is;
        // scanning pauses after it until they are out.
        auto replace = [&d, &replaced, unscanned](protocol::ByteSpan body, protocol::Bytes bytes) {
            d.pipe.cut(size_t(body.data() - unscanned.data()) - 5, body.size() + 5, std::move(bytes));
            replaced = true;
            return false;
        };
        auto res = d.framer.scan(
            unscanned,
            [this, from_client, &d, unscanned](char type) {
                if (from_client) {
                    if (!observer_)
                        return type == 'X';
                    const size_t at = d.framer.header_offset() + 5;
                    const size_t body = size_t(d.framer.header_size() - 5);
                    observer_->on_client_message(type, unscanned.subspan(at, std::min(body, unscanned.size() - at)));
                    return type == 'X' || observer_->inspect_client(type);
                }
                if (!observer_)
                    return type == 'Z' || type == 'E' || type == 'C';
                observer_->on_server_message(type, d.framer.header_size());
                if (type == 'Z' || type == 'E' || type == 'C')
                    return true;
                if (observer_->drop_server(type)) {
                    d.pipe.cut(d.framer.header_offset(), d.framer.header_size(), {});
                    return false;  // its body is skipped as it arrives, never held whole
                }
                return observer_->inspect_server(type);
            },
            [this, from_client, &replace, &d, unscanned](char type, protocol::ByteSpan body) {
                if (from_client) {
                    if (type == 'X') {
                        if (observer_ && observer_->keep_upstream())
                            d.pipe.cut(size_t(body.data() - unscanned.data()) - 5, body.size() + 5, {});
                        return false;  // stop after Terminate: nothing follows it
                    }
                    if (auto replacement = observer_->on_client_body(type, body))
                        return replace(body, std::move(*replacement));
                    return true;
                }
                if (type == 'Z' && body.size() == 1) {
                    out_.transaction_status = char(body[0]);
                    last_server_error_fatal_ = false;
                    if (observer_)
                        observer_->on_ready_for_query(char(body[0]));
                } else if (type != 'E' && observer_) {
                    if (type == 'C') {
                        // The tag is a C string; stop at its NUL, or at the end of a bad one.
                        std::string_view tag(reinterpret_cast<const char*>(body.data()), body.size());
                        observer_->on_command_complete(tag.substr(0, tag.find('\0')));
                    }
                    // Messages the session asked to see (the CommandComplete of a cut result).
                    if (auto replacement = observer_->on_server_body(type, body))
                        return replace(body, std::move(*replacement));
                } else if (type == 'E') {
                    auto e = protocol::decode_error_fields(body);
                    last_server_error_fatal_ = e && (e->severity == "FATAL" || e->severity == "PANIC");
                    if (e && observer_)
                        if (auto replacement = observer_->on_server_error(*e))
                            return replace(body, std::move(*replacement));
                }
                return true;
            });
        if (res.scanned > 0)
            progress = true;
        d.pipe.scanned(res.scanned);
        if (res.status == protocol::ScanStatus::Stopped) {
            if (replaced)
                d.paused = true;
            else
                d.stopped = true;
        } else if (res.status == protocol::ScanStatus::Violation) {
            d.violation = true;
        } else if (res.status == protocol::ScanStatus::TooLarge) {
            d.violation = true;
            d.too_large = true;
        }
    }
    if (!d.dst_failed && d.pipe.at_cut()) {
        // Our message goes out where the cut starts, then the cut's bytes are dropped, as
        // far as they have arrived.
        protocol::ByteSpan left = d.pipe.replacement_left();
        size_t n = left.empty() ? 0 : push(d, left);
        d.pipe.replacement_written(n);
        progress = progress || n > 0 || d.dst_failed;
        if (d.pipe.replacement_left().empty()) {
            progress = d.pipe.drop_cut() > 0 || progress;
            if (!d.pipe.has_cut())
                d.paused = false;
        }
    }
    const bool held = from_client && observer_ && observer_->hold_client_input();
    if (!d.dst_failed && !held && !d.pipe.forwardable().empty()) {
        size_t n = push(d, d.pipe.forwardable());
        d.pipe.consumed(n);
        progress = progress || n > 0 || d.dst_failed;
    }
    return progress;
}

size_t Relay::push(Direction& d, protocol::ByteSpan bytes)
{
    IoResult w = d.dst.write(bytes.data(), bytes.size());
    if (w.status == Io::Ok)
        return w.n;
    if (w.status == Io::WantRead || w.status == Io::WantWrite)
        d.write_wait = w.status;
    else
        d.dst_failed = true;
    return 0;
}

bool Relay::finished(RelayOutcome& out)
{
    // The client's Terminate ends the session as the client's own doing, whatever the
    // upstream does next: a backend that exits on it closes its socket at once, and
    // seeing that close first must not send the client a FATAL it never expects.
    if (c2s_.stopped &&
        (c2s_.pipe.forwardable().empty() || c2s_.dst_failed || s2c_.src_done || s2c_.dst_failed)) {
        out.end = RelayEnd::ClientTerminate;
        return true;
    }
    if (c2s_.dst_failed || s2c_.src_done) {
        out.end = RelayEnd::UpstreamClosed;
        out.detail = c2s_.dst_failed ? c2s_.dst.error() : s2c_.src.error();
        return true;
    }
    if (s2c_.dst_failed || (c2s_.src_done && !c2s_.stopped)) {
        out.end = RelayEnd::ClientClosed;
        out.detail = s2c_.dst_failed ? s2c_.dst.error() : c2s_.src.error();
        return true;
    }
    if (c2s_.violation) {
        out.end = RelayEnd::ClientViolation;
        return true;
    }
    if (s2c_.violation && s2c_.pipe.forwardable().empty()) {
        out.end = RelayEnd::UpstreamViolation;
        return true;
    }
    if (stop_ && *stop_) {
        out.end = RelayEnd::Shutdown;
        return true;
    }
    return false;
}

void Relay::wait()
{
    pollfd fds[2] = {{c2s_.src.fd(), 0, 0}, {s2c_.src.fd(), 0, 0}};
    // fds[0] is the client, fds[1] the upstream.
    // A full buffer asks for no read readiness: that is the back-pressure.
    if (!c2s_.src_done && !c2s_.stopped && !c2s_.may_read && c2s_.pipe.space() > 0)
        fds[0].events |= poll_bit(c2s_.read_wait);
    const bool held = observer_ && observer_->hold_client_input();
    if (c2s_.pipe.has_output() && !held)
        fds[1].events |= poll_bit(c2s_.write_wait);
    if (!s2c_.src_done && !s2c_.may_read && s2c_.pipe.space() > 0)
        fds[1].events |= poll_bit(s2c_.read_wait);
    if (s2c_.pipe.has_output())
        fds[0].events |= poll_bit(s2c_.write_wait);
    // The session's signals (stop, routed cancel) are blocked while the relay runs and
    // unblocked only inside ppoll(): one that arrives between our last look at the
    // flags and this wait is delivered here and ends the wait at once, never lost.
    // A hold ends with a signal (SIGCHLD); the short timeout is only a safety net.
    int timeout_ms = observer_ ? observer_->poll_timeout_ms() : -1;
    if (held && (timeout_ms < 0 || timeout_ms > 100))
        timeout_ms = 100;
    timespec ts{timeout_ms / 1000, long(timeout_ms % 1000) * 1000000};
    int rc = ::ppoll(fds, 2, timeout_ms < 0 ? nullptr : &ts, signals_.wait_mask());
    if (rc < 0 && errno != EINTR)
        log_warning("relay: poll failed: %s", std::strerror(errno));
    // A read is retried when its fd reported what it waited for, or trouble
    // (a hang-up or error is then seen by the read itself). Writes are simply retried.
    auto woke = [](const pollfd& p, Io wait) {
        return (p.revents & (poll_bit(wait) | POLLHUP | POLLERR | POLLNVAL)) != 0;
    };
    if (rc > 0) {
        c2s_.may_read = c2s_.may_read || woke(fds[0], c2s_.read_wait);
        s2c_.may_read = s2c_.may_read || woke(fds[1], s2c_.read_wait);
    }
    if (observer_)
        observer_->on_wake();
}

void Relay::finish_to_client(const protocol::Bytes* message)
{
    auto deadline = net::Clock::now() + std::chrono::seconds(5);
    // Deliver what the upstream sent before it went away: it may hold its own FATAL.
    while (!s2c_.dst_failed && !s2c_.pipe.forwardable().empty() && net::Clock::now() < deadline) {
        auto span = s2c_.pipe.forwardable();
        IoResult w = s2c_.dst.write(span.data(), span.size());
        if (w.status == Io::Ok) {
            s2c_.pipe.consumed(w.n);
        } else if (w.status == Io::WantRead || w.status == Io::WantWrite) {
            pollfd p{s2c_.dst.fd(), poll_bit(w.status), 0};
            ::poll(&p, 1, net::ms_until(deadline));
        } else {
            s2c_.dst_failed = true;
        }
    }
    if (!message || s2c_.dst_failed || !s2c_.dst_at_boundary())
        return;
    size_t done = 0;
    while (done < message->size() && net::Clock::now() < deadline) {
        IoResult w = s2c_.dst.write(message->data() + done, message->size() - done);
        if (w.status == Io::Ok) {
            done += w.n;
        } else if (w.status == Io::WantRead || w.status == Io::WantWrite) {
            pollfd p{s2c_.dst.fd(), poll_bit(w.status), 0};
            ::poll(&p, 1, net::ms_until(deadline));
        } else {
            return;
        }
    }
}

RelayOutcome Relay::run()
{
    RelayOutcome out;
    for (;;) {
        bool progress = true;
        while (progress) {
            progress = pump(c2s_, true);
            progress = pump(s2c_, false) || progress;
            if (finished(out))
                goto done;
        }
        wait();
        if (finished(out))
            break;
    }
done:
    switch (out.end) {
    case RelayEnd::UpstreamClosed: {
        // Scan whatever the upstream sent last so its own FATAL is recognised.
        pump(s2c_, false);
        auto msg = protocol::fatal("08006", "server closed the connection unexpectedly",
                                   "The upstream PostgreSQL server ended the session; pgwicket "
                                   "closed the client connection too.");
        finish_to_client(last_server_error_fatal_ ? nullptr : &msg);
        break;
    }
    case RelayEnd::ClientViolation: {
        auto msg = c2s_.too_large
                       ? protocol::fatal("54000", "statement too long for pgwicket to check against its policy",
                                         "Statements checked by a policy may be at most 128 KiB.")
                       : protocol::fatal("08P01", "invalid message length from client");
        finish_to_client(&msg);
        break;
    }
    case RelayEnd::UpstreamViolation: {
        auto msg = protocol::fatal("08P01", "invalid message length from upstream server");
        finish_to_client(&msg);
        break;
    }
    case RelayEnd::Shutdown: {
        auto msg = observer_ ? observer_->stop_message() : default_stop_message();
        finish_to_client(&msg);
        break;
    }
    case RelayEnd::ClientTerminate:
    case RelayEnd::ClientClosed:
        break;
    }
    out.upstream_at_boundary = c2s_.dst_at_boundary();
    out.bytes_from_client = c2s_.bytes;
    out.bytes_from_server = s2c_.bytes;
    out.messages_from_client = c2s_.framer.messages();
    out.messages_from_server = s2c_.framer.messages();
    out.transaction_status = out_.transaction_status;
    return out;
}

} // namespace

protocol::Bytes RelayObserver::stop_message() { return default_stop_message(); }

const char* relay_end_name(RelayEnd e)
{
    switch (e) {
    case RelayEnd::ClientTerminate:
        return "client terminated";
    case RelayEnd::ClientClosed:
        return "client closed the connection";
    case RelayEnd::ClientViolation:
        return "protocol violation by client";
    case RelayEnd::UpstreamClosed:
        return "upstream closed the connection";
    case RelayEnd::UpstreamViolation:
        return "protocol violation by upstream";
    case RelayEnd::Shutdown:
        return "shutdown";
    }
    return "?";
}

RelayOutcome relay(upstream::Transport& client, upstream::Transport& server, char initial_status,
                   const volatile std::sig_atomic_t* stop, RelayObserver* observer)
{
    Relay r(client, server, initial_status, stop, observer);
    return r.run();
}

} // namespace pgw::session
