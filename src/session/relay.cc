// Relay loop: read while there is room, frame what was read, write what is framed;
// poll only when every side would block. Memory is two fixed buffers, whatever the result size.
#include "session/relay.hh"

#include "common/log.hh"
#include "common/net.hh"
#include "protocol/framer.hh"
#include "protocol/messages.hh"

#include <poll.h>
#include <signal.h>

#include <cerrno>
#include <cstring>
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
class Pipe {
public:
    explicit Pipe(size_t cap) : data_(new std::byte[cap]), cap_(cap) {}

    size_t space()
    {
        // Compact when the tail is short so a whole inspected message always fits.
        if (rpos_ > 0 && cap_ - wpos_ < cap_ / 4) {
            std::memmove(data_.get(), data_.get() + rpos_, wpos_ - rpos_);
            spos_ -= rpos_;
            wpos_ -= rpos_;
            if (cut_len_)
                cut_at_ -= rpos_;
            rpos_ = 0;
        }
        return cap_ - wpos_;
    }
    std::byte* tail() { return data_.get() + wpos_; }
    void produced(size_t n) { wpos_ += n; }

    protocol::ByteSpan unscanned() const { return {data_.get() + spos_, wpos_ - spos_}; }
    void scanned(size_t n) { spos_ += n; }

    // Forwarding stops at a cut: a scanned message that is replaced by other bytes.
    protocol::ByteSpan forwardable() const
    {
        size_t end = cut_len_ ? cut_at_ : spos_;
        return {data_.get() + rpos_, end - rpos_};
    }
    void consumed(size_t n)
    {
        rpos_ += n;
        if (rpos_ == wpos_)
            rpos_ = spos_ = wpos_ = 0;
    }

    // Marks the `len` bytes ending at the scan position as a message to drop.
    void cut_last(size_t len)
    {
        cut_at_ = spos_ - len;
        cut_len_ = len;
    }
    bool has_cut() const { return cut_len_ != 0; }
    bool at_cut() const { return cut_len_ != 0 && rpos_ == cut_at_; }
    void drop_cut()
    {
        size_t n = cut_len_;
        cut_len_ = 0;
        consumed(n);
    }

private:
    std::unique_ptr<std::byte[]> data_;
    size_t cap_;
    size_t rpos_ = 0, spos_ = 0, wpos_ = 0;
    size_t cut_at_ = 0, cut_len_ = 0;
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
    protocol::Bytes replacement;  // written in place of the cut message
    size_t replacement_written = 0;
    bool violation = false;
    bool too_large = false;  // a message the session had to see did not fit (strict framer)
    std::uint64_t bytes = 0;

    // The destination has seen only whole messages.
    bool dst_at_boundary() const
    {
        return framer.at_boundary() && pipe.forwardable().empty() && replacement_written == 0;
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
        sigset_t session_signals;
        sigemptyset(&session_signals);
        for (int sig : {SIGTERM, SIGINT, SIGUSR1, SIGCHLD, SIGHUP})
            sigaddset(&session_signals, sig);
        sigprocmask(SIG_BLOCK, &session_signals, &wait_mask_);
    }
    ~Relay() { sigprocmask(SIG_SETMASK, &wait_mask_, nullptr); }
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
    sigset_t wait_mask_;  // the mask before the relay: what ppoll() waits with
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
        size_t cut = 0;
        auto res = d.framer.scan(
            d.pipe.unscanned(),
            [this, from_client, &d](char type) {
                if (from_client) {
                    if (!observer_)
                        return type == 'X';
                    observer_->on_client_message(type);
                    return type == 'X' || observer_->inspect_client(type);
                }
                if (!observer_)
                    return type == 'Z' || type == 'E' || type == 'C';
                observer_->on_server_message(type, d.framer.header_size());
                return type == 'Z' || type == 'E' || type == 'C' || observer_->inspect_server(type);
            },
            [this, from_client, &d, &cut](char type, protocol::ByteSpan body) {
                if (from_client) {
                    if (type == 'X')
                        return false;  // stop after Terminate: nothing follows it
                    if (auto replacement = observer_->on_client_body(type, body)) {
                        d.replacement = std::move(*replacement);
                        d.replacement_written = 0;
                        cut = body.size() + 5;
                        return false;  // pause here until the replacement is out
                    }
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
                    // Messages the session asked to see (DataRow past a cap): maybe replaced.
                    if (auto replacement = observer_->on_server_body(type, body)) {
                        d.replacement = std::move(*replacement);
                        d.replacement_written = 0;
                        cut = body.size() + 5;
                        return false;
                    }
                } else if (type == 'E') {
                    auto e = protocol::decode_error_fields(body);
                    last_server_error_fatal_ = e && (e->severity == "FATAL" || e->severity == "PANIC");
                    if (e && observer_) {
                        if (auto replacement = observer_->on_server_error(*e)) {
                            d.replacement = std::move(*replacement);
                            d.replacement_written = 0;
                            cut = body.size() + 5;
                            return false;  // pause here until the replacement is out
                        }
                    }
                }
                return true;
            });
        if (res.scanned > 0)
            progress = true;
        d.pipe.scanned(res.scanned);
        if (res.status == protocol::ScanStatus::Stopped) {
            if (cut) {
                d.pipe.cut_last(cut);
                d.paused = true;
            } else {
                d.stopped = true;
            }
        } else if (res.status == protocol::ScanStatus::Violation) {
            d.violation = true;
        } else if (res.status == protocol::ScanStatus::TooLarge) {
            d.violation = true;
            d.too_large = true;
        }
    }
    if (!d.dst_failed && d.pipe.at_cut()) {
        // Our message goes out where the replaced one stood, then the original is dropped
        // (an empty replacement only drops it).
        size_t n = d.replacement.empty() ? 0
                                         : push(d, {d.replacement.data() + d.replacement_written,
                                                    d.replacement.size() - d.replacement_written});
        d.replacement_written += n;
        progress = progress || n > 0 || d.dst_failed;
        if (d.replacement_written == d.replacement.size()) {
            d.pipe.drop_cut();
            d.replacement.clear();
            d.replacement_written = 0;
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
    if ((!c2s_.pipe.forwardable().empty() || c2s_.pipe.at_cut()) && !held)
        fds[1].events |= poll_bit(c2s_.write_wait);
    if (!s2c_.src_done && !s2c_.may_read && s2c_.pipe.space() > 0)
        fds[1].events |= poll_bit(s2c_.read_wait);
    if (!s2c_.pipe.forwardable().empty() || s2c_.pipe.at_cut())
        fds[0].events |= poll_bit(s2c_.write_wait);
    // The session's signals (stop, routed cancel) are blocked while the relay runs and
    // unblocked only inside ppoll(): one that arrives between our last look at the
    // flags and this wait is delivered here and ends the wait at once, never lost.
    // A hold ends with a signal (SIGCHLD); the short timeout is only a safety net.
    int timeout_ms = observer_ ? observer_->poll_timeout_ms() : -1;
    if (held && (timeout_ms < 0 || timeout_ms > 100))
        timeout_ms = 100;
    timespec ts{timeout_ms / 1000, long(timeout_ms % 1000) * 1000000};
    int rc = ::ppoll(fds, 2, timeout_ms < 0 ? nullptr : &ts, &wait_mask_);
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
