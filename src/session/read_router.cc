// How read routing keeps one session true over two backends:
//
// - A unit goes to a standby only when the relay has scanned all of it before its first
//   byte goes out (it normally has: clients write a unit at once) and every statement
//   in it is routable; a unit still arriving goes to the primary, which can run
//   anything.
// - The host changes only when every answer of the other host has been read and the
//   session is outside a transaction block; until then the unit waits (write() says
//   WantRead: the relay reads the answers meanwhile).
// - Prepared statements follow the units that use them. What a standby unit prepares
//   or closes is repeated on the primary before the primary's next unit (so the primary
//   holds every named statement, and a unit that was still arriving when it started can
//   use any of them); a standby unit that uses a statement the standby lacks gets it
//   prepared first. Both go out as a prelude of ours ending in Sync, and every answer
//   up to its ReadyForQuery is dropped.
// - Anything that leaves state in the session pins it to the primary for good, and the
//   standby connection is closed.
#include "session/read_router.hh"

#include "common/log.hh"
#include "policy/route.hh"
#include "protocol/messages.hh"

#include <poll.h>

#include <algorithm>
#include <cstring>

namespace pgw::session {
namespace {

using upstream::Io;
using upstream::IoResult;

constexpr unsigned bit(ReadRouter::Side s) { return 1u << unsigned(s); }

// Messages that end a unit (each is answered by one ReadyForQuery).
bool ends_unit(char type) { return type == 'Q' || type == 'S' || type == 'F'; }
// COPY data from the client belongs to the unit that started the COPY.
bool copy_data(char type) { return type == 'd' || type == 'c' || type == 'f'; }

// A cstring at `at` in a possibly partial body; nullopt when it does not end in it.
std::optional<std::string> name_at(protocol::ByteSpan head, size_t at)
{
    auto s = protocol::cstring_at(head, at);
    if (!s)
        return std::nullopt;
    return std::string(*s);
}

protocol::Bytes close_statement(const std::string& name)
{
    protocol::Writer w;
    w.begin('C');
    w.u8('S');
    w.cstring(name);
    w.finish();
    return w.take();
}

void append(protocol::Bytes& to, const protocol::Bytes& b) { to.insert(to.end(), b.begin(), b.end()); }

// How long the routing decision trusts a standby's fitness before asking the row again.
constexpr auto kFitRecheck = std::chrono::milliseconds(100);
// After a standby could not be had, units go to the primary this long before the next try.
constexpr auto kStandbyRetry = std::chrono::seconds(1);

} // namespace

ReadRouter::ReadRouter(RouteHost primary, const policy::FunctionAllowlist& allow, policy::ClassifyCache& cache,
                       long read_after_write_ms, Hooks hooks)
    : primary_(std::move(primary)), allow_(allow), cache_(cache), read_after_write_ms_(read_after_write_ms),
      hooks_(std::move(hooks))
{
}

ReadRouter::~ReadRouter() = default;

// ---- scanning the client's stream ---------------------------------------------------------

ReadRouter::Unit& ReadRouter::scan_unit(char type)
{
    if (units_.empty() || (scan_closed_ && !copy_data(type)))
        units_.emplace_back();
    Unit& u = units_.back();
    if (copy_data(type)) {
        u.routable = false;
    } else {
        scan_closed_ = ends_unit(type);
        if (scan_closed_)
            u.closed = true;
    }
    return u;
}

void ReadRouter::add_op(Op op)
{
    Unit& u = units_.back();
    if (u.started) {
        // The unit is under way (it was still arriving): its host is chosen, nothing can be
        // put before it. A statement that may write makes its reads follow it.
        if (op.kind == Op::Parse && !op.routable)
            w_unit_write_ = true;
        apply(op, u.side, nullptr);
    } else
        u.ops.push_back(std::move(op));
}

void ReadRouter::on_client_message(char type, protocol::ByteSpan head)
{
    Unit& u = scan_unit(type);
    switch (type) {
    case 'Q':
    case 'P':
    case 'E':
    case 'H':
    case 'S':
        return;  // Query and Parse are judged by their text (on_client_text)
    case 'B': {
        // Bind: portal name, then statement name.
        auto portal = protocol::cstring_at(head, 0);
        auto stmt = portal ? name_at(head, portal->size() + 1) : std::nullopt;
        if (!stmt) {
            u.routable = false;  // its head has not arrived whole: the primary has every statement
            return;
        }
        add_op({Op::Ref, std::move(*stmt), {}, false});
        return;
    }
    case 'D':
    case 'C': {
        if (head.empty()) {
            u.routable = false;
            return;
        }
        auto name = name_at(head, 1);
        if (!name) {
            u.routable = false;
            return;
        }
        if (char(head[0]) == 'S')
            add_op({type == 'D' ? Op::Ref : Op::Close, std::move(*name), {}, false});
        return;
    }
    default:
        u.routable = false;  // FunctionCall, COPY data, Terminate, anything unknown
        return;
    }
}

void ReadRouter::on_client_text(char type, protocol::ByteSpan body, bool replaced)
{
    if (units_.empty())
        return;
    Unit& u = units_.back();
    auto first = protocol::cstring_at(body, 0);
    auto text = first && type == 'P' ? protocol::cstring_at(body, first->size() + 1) : first;
    policy::RouteVerdict v;
    if (text && !replaced) {
        v = policy::route_verdict(*cache_.get(*text), allow_);
    } else {
        v.why = replaced ? "refused by the policy" : "malformed";
    }
    if (v.pins) {
        if (u.started)
            pin(v.why);
        else
            u.pins = true;
    }
    if (type == 'Q') {
        u.routable = u.routable && v.standby;
        return;
    }
    if (!first) {
        u.routable = false;
        return;
    }
    // The Parse as it goes upstream, to prepare it again elsewhere when needed.
    Op op{Op::Parse, std::string(*first), {}, v.standby};
    protocol::Writer w;
    w.begin('P');
    w.raw(body);
    w.finish();
    op.parse = w.take();
    add_op(std::move(op));
}

bool ReadRouter::unit_routable(const Unit& u) const
{
    if (!u.routable || u.pins)
        return false;
    for (size_t i = 0; i < u.ops.size(); ++i) {
        const Op& op = u.ops[i];
        if (op.kind == Op::Parse && !op.routable)
            return false;
        if (op.kind != Op::Ref)
            continue;
        // The statement it uses: prepared earlier in the unit, or before it.
        bool found = false, routable = false;
        for (size_t j = i; j-- > 0;)
            if (u.ops[j].name == op.name && u.ops[j].kind != Op::Ref) {
                found = true;
                routable = u.ops[j].kind == Op::Parse && u.ops[j].routable;
                break;
            }
        if (!found) {
            auto it = prepared_.find(op.name);
            routable = it != prepared_.end() && it->second.routable && it->second.current != 0;
        }
        if (!routable)
            return false;
    }
    return true;
}

// ---- choosing the host ---------------------------------------------------------------------

void ReadRouter::drop_standby(const char* why)
{
    standby_unfit_ = false;
    if (!standby_)
        return;
    log_debug("read routing: closing the standby connection (%s): %s", standby_->route.where.c_str(), why);
    standby_.reset();
    if (audit_side_ == kStandby) {
        // Records name the primary until a unit runs on a standby again.
        audit_side_ = kPrimary;
        if (hooks_.on_switch)
            hooks_.on_switch(primary_, kPrimary);
    }
    for (auto it = prepared_.begin(); it != prepared_.end();) {
        it->second.current &= ~bit(kStandby);
        it->second.have &= ~bit(kStandby);
        it = it->second.have == 0 && it->second.current == 0 ? prepared_.erase(it) : std::next(it);
    }
}

void ReadRouter::pin(const std::string& why)
{
    if (pinned_)
        return;
    pinned_ = true;
    log_debug("read routing: session pinned to the primary (%s)", why.c_str());
    if (active_ != kStandby)
        drop_standby("the session is pinned to the primary");
}

bool ReadRouter::standby_ready()
{
    const auto now = net::Clock::now();
    if (standby_ && active_ != kStandby) {
        // Idle since its last unit: anything it says now is trouble (a FATAL, a close).
        pollfd p{standby_->route.transport->fd(), POLLIN, 0};
        if (::poll(&p, 1, 0) != 0 || standby_->route.transport->has_buffered())
            drop_standby("it closed or spoke while idle");
    }
    if (standby_ && (standby_unfit_ || now - fit_checked_at_ >= kFitRecheck)) {
        if (!standby_unfit_) {
            fit_checked_at_ = now;
            standby_unfit_ = !standby_->fits();
        }
        if (standby_unfit_) {
            if (active_ == kStandby)
                return false;  // the session moves to the primary first; closed after
            drop_standby("its host no longer serves reads");
        }
    }
    if (standby_)
        return true;
    if (now < retry_standby_at_ || !hooks_.open_standby)
        return false;
    standby_ = hooks_.open_standby();
    if (!standby_) {
        retry_standby_at_ = now + kStandbyRetry;
        return false;
    }
    fit_checked_at_ = now;
    log_debug("read routing: standby connection to %s, backend pid %u", standby_->route.where.c_str(),
              standby_->route.backend_pid);
    return true;
}

bool ReadRouter::begin_unit()
{
    // The unit before is under way or done: its host was chosen.
    while (!units_.empty() && units_.front().started)
        units_.pop_front();
    if (units_.empty()) {
        // Cannot happen when the scan saw every message; send it where anything runs.
        log_warning("read routing: a message went out that was never scanned; using the primary");
        units_.emplace_back();
        units_.back().routable = false;
        units_.back().closed = true;
    }
    Unit& u = units_.front();
    const bool routable = unit_routable(u);  // before its ops are applied and cleared below
    Side want = kPrimary;
    if (!pinned_ && u.closed && net::Clock::now() >= primary_until_ && routable)
        want = kStandby;
    if (want == kStandby && !standby_ready())
        want = kPrimary;
    if (want != active_ && !pending_.empty())
        return false;  // the other host's answers first
    if (want == kStandby && status_ != 'I')
        want = kPrimary;
    active_ = want;
    if (want != audit_side_) {
        audit_side_ = want;
        if (hooks_.on_switch)
            hooks_.on_switch(host(active_), active_);
    }
    u.started = true;
    u.side = active_;
    protocol::Bytes prelude;
    if (active_ == kPrimary) {
        // What standby units did to named statements since the primary's last unit, from
        // their state now (so a session that only reads holds one entry per name, however
        // often it prepares again). Closing a statement that does not exist is no error.
        for (const std::string& name : primary_dirty_) {
            append(prelude, close_statement(name));
            auto it = prepared_.find(name);
            if (it != prepared_.end() && (it->second.current & bit(kPrimary)))
                append(prelude, it->second.parse);
        }
        primary_dirty_.clear();
    }
    for (const Op& op : u.ops)
        apply(op, active_, &prelude);
    u.ops.clear();
    if (!prelude.empty()) {
        protocol::Writer sync;
        sync.begin('S');
        sync.finish();
        append(prelude, sync.take());
        append(prelude_, prelude);
        pending_.push_back({active_, true, false});
    }
    w_unit_write_ = active_ == kPrimary && !routable;
    ++units_routed_[active_];
    if (hooks_.on_unit)
        hooks_.on_unit(active_);
    if (u.pins)
        pin("a statement keeps state in the session");
    return true;
}

void ReadRouter::apply(const Op& op, Side side, protocol::Bytes* prelude)
{
    const unsigned here = bit(side);
    switch (op.kind) {
    case Op::Parse: {
        Prepared& p = prepared_[op.name];
        // An old version the client closed elsewhere is still here: close it first, or
        // this Parse would fail where it works for the client.
        if (prelude && !op.name.empty() && (p.have & here) && !(p.current & here)) {
            append(*prelude, close_statement(op.name));
            p.have &= ~here;
        }
        p.parse = op.parse;
        p.routable = op.routable;
        p.current = here;
        p.have |= here;
        if (side == kStandby && !op.name.empty()) {
            // The primary gets every named statement too (before its next unit).
            primary_dirty_.insert(op.name);
            p.have |= bit(kPrimary);
            p.current |= bit(kPrimary);
        }
        return;
    }
    case Op::Ref: {
        auto it = prepared_.find(op.name);
        if (it == prepared_.end() || (it->second.current & here) || it->second.current == 0 || !prelude)
            return;  // unknown (the server says so), already here, or too late to add
        Prepared& p = it->second;
        if (!op.name.empty() && (p.have & here))
            append(*prelude, close_statement(op.name));
        append(*prelude, p.parse);
        p.have |= here;
        p.current |= here;
        return;
    }
    case Op::Close: {
        auto it = prepared_.find(op.name);
        if (it == prepared_.end())
            return;
        Prepared& p = it->second;
        p.have &= ~here;
        p.current = 0;
        if (side == kStandby && (p.have & bit(kPrimary))) {
            primary_dirty_.insert(op.name);
            p.have &= ~bit(kPrimary);
        }
        if (p.have == 0)
            prepared_.erase(it);
        return;
    }
    }
}

// ---- the relay's upstream ------------------------------------------------------------------

template <class AtStart>
size_t ReadRouter::MessageWalk::walk(const std::byte* buf, size_t from, size_t to, AtStart&& at_start)
{
    size_t i = from;
    while (i < to) {
        if (left > 0) {
            const size_t take = size_t(std::min<std::uint64_t>(left, to - i));
            i += take;
            left -= take;
            continue;
        }
        if (have == 0 && !at_start(char(buf[i])))
            break;
        hdr[have++] = buf[i++];
        if (have == 5) {
            const std::uint32_t n = protocol::load_be32(hdr + 1);
            left = n >= 4 ? n - 4 : 0;
            have = 0;
        }
    }
    return i;
}

IoResult ReadRouter::write(const std::byte* buf, size_t len)
{
    size_t done = 0;
    auto stalled = [&done](IoResult r) { return done > 0 ? IoResult{Io::Ok, done} : r; };
    for (;;) {
        upstream::Transport& t = *host(active_).transport;
        if (!prelude_.empty()) {
            IoResult r = t.write(prelude_.data(), prelude_.size());
            if (r.status != Io::Ok) {
                if (r.status == Io::Error || r.status == Io::Eof)
                    error_ = t.error();
                return stalled(r);
            }
            prelude_.erase(prelude_.begin(), prelude_.begin() + std::ptrdiff_t(r.n));
            continue;
        }
        if (done == len)
            return {Io::Ok, done};
        if (w_walk_.between() && !w_begun_ && w_closed_ && !copy_data(char(buf[done]))) {
            if (!begin_unit())
                return stalled({Io::WantRead});
            w_begun_ = true;
            continue;  // our prelude first, perhaps on the other host
        }
        // As much as goes to this host: up to the next unit's first byte. Starting at a
        // message whose unit begin_unit has just begun, that message is not a new unit.
        MessageWalk plan = w_walk_;
        bool closed = w_closed_, first = plan.between();
        const size_t end = plan.walk(buf, done, len, [&closed, &first](char type) {
            if (!first && closed && !copy_data(type))
                return false;
            first = false;
            if (!copy_data(type))
                closed = ends_unit(type);
            return true;
        });
        IoResult r = t.write(buf + done, end - done);
        if (r.status != Io::Ok) {
            if (r.status == Io::Error || r.status == Io::Eof)
                error_ = t.error();
            return stalled(r);
        }
        // Follow what was taken.
        w_walk_.walk(buf, done, done + r.n, [this](char type) {
            w_begun_ = false;
            if (!copy_data(type)) {
                w_closed_ = ends_unit(type);
                if (w_closed_)
                    pending_.push_back({active_, false, w_unit_write_});
            }
            return true;
        });
        done += r.n;
        if (done < end)
            return {Io::Ok, done};
    }
}

IoResult ReadRouter::read(std::byte* buf, size_t len)
{
    for (;;) {
        upstream::Transport& t = *host(active_).transport;
        IoResult r = t.read(buf, len);
        if (r.status != Io::Ok) {
            if (r.status == Io::Error || r.status == Io::Eof)
                error_ = t.error();
            return r;
        }
        const size_t kept = filter(buf, r.n);
        if (kept > 0)
            return {Io::Ok, kept};
        // All of it was our prelude's answers: read on (or wait, when that is all).
    }
}

void ReadRouter::ready(char status)
{
    status_ = status;
    if (pending_.empty())
        return;
    const Pending p = pending_.front();
    pending_.pop_front();
    if (p.write && read_after_write_ms_ > 0)
        primary_until_ = net::Clock::now() + std::chrono::milliseconds(read_after_write_ms_);
    // Every unit sent to the standby is answered and nothing more is on its way: the
    // relay listens to the primary again, so what an idle standby says (a FATAL when it
    // shuts down) is looked at before its next unit instead of ending the session.
    if (pending_.empty() && active_ == kStandby && prelude_.empty() && w_closed_ && w_walk_.between())
        active_ = kPrimary;
}

size_t ReadRouter::filter(std::byte* buf, size_t n)
{
    size_t out = 0;
    size_t i = 0;
    auto keep = [&](size_t from, size_t count) {
        if (!r_drop_ && count > 0) {
            if (out != from)
                std::memmove(buf + out, buf + from, count);
            out += count;
        }
    };
    while (i < n) {
        if (r_left_ > 0) {
            const size_t take = size_t(std::min<std::uint64_t>(r_left_, n - i));
            if (r_in_z_ && take > 0 && r_left_ == 1) {
                keep(i, 1);
                const char status = char(buf[i]);
                i += 1;
                r_left_ = 0;
                r_in_z_ = false;
                ready(status);
                continue;
            }
            keep(i, take);
            i += take;
            r_left_ -= take;
            continue;
        }
        if (r_have_ == 0)
            r_drop_ = !pending_.empty() && pending_.front().ours;
        r_hdr_[r_have_++] = buf[i];
        keep(i, 1);
        ++i;
        if (r_have_ == 5) {
            const std::uint32_t len = protocol::load_be32(r_hdr_ + 1);
            r_left_ = len >= 4 ? len - 4 : 0;
            r_have_ = 0;
            r_in_z_ = char(r_hdr_[0]) == 'Z' && r_left_ == 1;
        }
    }
    return out;
}

Status ReadRouter::cancel_running() const
{
    PGcancel* c = host(active_).cancel;
    if (!c)
        return Error{"no cancel key for " + host(active_).where};
    char err[256] = "";
    if (!PQcancel(c, err, sizeof err))
        return Error{err};
    return ok_status();
}

} // namespace pgw::session
