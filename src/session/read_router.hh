// Read routing (read_routing = auto): one session, two upstream connections. The
// router stands in for the upstream transport in the relay: it sends each unit of the
// client's stream (a Query, or extended-protocol messages up to their Sync) to the
// primary or to a standby, and hands back one stream of answers, in order. It switches
// hosts only at a boundary: every answer read, outside a transaction block.
#pragma once

#include "common/net.hh"
#include "common/result.hh"
#include "policy/classify.hh"
#include "protocol/bytes.hh"
#include "upstream/transport.hh"

#include <libpq-fe.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

namespace pgw::session {

// One upstream connection the router may send units to (not owned).
struct RouteHost {
    upstream::Transport* transport = nullptr;
    PGcancel* cancel = nullptr;
    std::string where;  // upstream::describe(), for logs
    std::string host, port;
    std::uint32_t backend_pid = 0;
};

// A standby connection opened by the session for the router; the session's own type
// owns the libpq connection behind `route`.
class StandbyLink {
public:
    virtual ~StandbyLink() = default;
    // Whether the host still serves reads: still a standby, up, not banned, within
    // max_replica_lag (from the health checker's row).
    virtual bool fits() = 0;
    RouteHost route;
};

class ReadRouter final : public upstream::Transport {
public:
    enum Side : int { kPrimary = 0, kStandby = 1 };

    struct Hooks {
        // Opens a standby connection; null when none can be had now (the log says why).
        std::function<std::unique_ptr<StandbyLink>()> open_standby;
        // The host that runs the client's statements from now on (audit, slot).
        std::function<void(const RouteHost&, Side)> on_switch;
        // Every unit, with the host chosen for it (counters).
        std::function<void(Side)> on_unit;
    };

    // `cache`: the session's classifications (shared with its policy gate, if any).
    ReadRouter(RouteHost primary, const policy::FunctionAllowlist& allow, policy::ClassifyCache& cache,
               long read_after_write_ms, Hooks hooks);
    ~ReadRouter() override;
    ReadRouter(const ReadRouter&) = delete;
    ReadRouter& operator=(const ReadRouter&) = delete;

    // ---- the client's stream as the relay scans it (ahead of what it writes) ----
    // Query and Parse are seen whole (their text decides), through on_client_text.
    static bool inspects(char type) { return type == 'Q' || type == 'P'; }
    // Every message header, with as much of its body as has arrived (names in Bind,
    // Describe and Close are read from it).
    void on_client_message(char type, protocol::ByteSpan head);
    // A Query or Parse, as it goes upstream (`replaced`: a policy's stand-in).
    void on_client_text(char type, protocol::ByteSpan body, bool replaced);

    // ---- the upstream side of the relay ----
    upstream::IoResult read(std::byte* buf, size_t len) override;
    upstream::IoResult write(const std::byte* buf, size_t len) override;
    int fd() const override { return host(active_).transport->fd(); }
    bool is_tls() const override { return host(active_).transport->is_tls(); }
    bool has_buffered() const override { return host(active_).transport->has_buffered(); }

    // Cancels the statement running now (on whichever host runs it).
    Status cancel_running() const;
    // Nothing under way on either host: the last unit written went out whole and every
    // answer has been read, no prelude of ours waits (a pooled session's connections may
    // then serve another client). Units scanned and never begun sent nothing (the
    // Terminate that a pooled session keeps).
    bool idle() const { return pending_.empty() && prelude_.empty() && w_closed_ && w_walk_.between(); }
    // The standby connection, for a pooled connection to keep (null when none is open);
    // the router is done after this.
    std::unique_ptr<StandbyLink> release_standby() { return std::move(standby_); }
    bool pinned() const { return pinned_; }
    std::uint64_t units(Side s) const { return units_routed_[s]; }

private:
    struct Op {
        enum Kind : std::uint8_t { Parse, Ref, Close } kind;
        std::string name;
        protocol::Bytes parse;  // Parse: the whole message as it goes upstream
        bool routable = false;  // Parse: its text may run on a standby
    };
    // A unit of the client's stream: a Query (with its COPY data), or extended-protocol
    // messages up to and including Sync (or a FunctionCall).
    struct Unit {
        bool closed = false;    // its last message has been scanned
        bool routable = true;   // every message so far may go to a standby
        bool pins = false;      // something in it pins the session to the primary
        bool started = false;   // its first byte has gone to `side`
        Side side = kPrimary;
        std::vector<Op> ops;    // statement names it prepares, uses and closes, in order
    };
    // A named (or the unnamed) prepared statement, as the hosts hold it.
    struct Prepared {
        protocol::Bytes parse;  // the Parse that made the client's current version
        bool routable = false;
        unsigned current = 0;   // hosts (bits by Side) that have the client's current version
        unsigned have = 0;      // hosts that have a statement of this name (maybe stale)
    };
    // A ReadyForQuery the router waits for, in order.
    struct Pending {
        Side side;
        bool ours;   // answers our own prelude: every message up to it is dropped
        bool write;  // answers a unit that may have written (read_after_write_delay)
    };

    const RouteHost& host(Side s) const { return s == kStandby ? standby_->route : primary_; }
    Unit& scan_unit(char type);
    void add_op(Op op);
    bool unit_routable(const Unit& u) const;
    // At a unit's first byte: picks its host; false when it must wait for answers first.
    bool begin_unit();
    bool standby_ready();
    void apply(const Op& op, Side side, protocol::Bytes* prelude);
    void pin(const std::string& why);
    void drop_standby(const char* why);
    // The answer stream: drops our preludes' answers, follows ReadyForQuery.
    size_t filter(std::byte* buf, size_t n);
    void ready(char status);

    RouteHost primary_;
    std::unique_ptr<StandbyLink> standby_;
    const policy::FunctionAllowlist& allow_;
    policy::ClassifyCache& cache_;
    long read_after_write_ms_;
    Hooks hooks_;

    Side active_ = kPrimary;      // where units go and answers come from now
    Side audit_side_ = kPrimary;  // the host the session's records name
    bool pinned_ = false;
    char status_ = 'I';
    net::Clock::time_point primary_until_{};  // read-your-writes: reads stay on the primary
    net::Clock::time_point retry_standby_at_{};
    net::Clock::time_point fit_checked_at_{};
    bool standby_unfit_ = false;  // the last look at its row said it no longer serves reads
    std::uint64_t units_routed_[2] = {0, 0};

    std::deque<Unit> units_;    // scanned and not yet written (the front may be under way)
    bool scan_closed_ = true;   // the last scanned message ended a unit
    std::map<std::string, Prepared> prepared_;
    std::set<std::string> primary_dirty_;  // named statements a standby unit prepared or closed
    protocol::Bytes prelude_;          // ours, to write before the unit's bytes
    std::deque<Pending> pending_;

    // A place in a stream of messages: how much of the current one has gone by.
    struct MessageWalk {
        std::uint64_t left = 0;  // body bytes left of the current message
        unsigned have = 0;       // header bytes seen of the current message
        std::byte hdr[5]{};
        bool between() const { return left == 0 && have == 0; }
        // Goes over buf[from, to), calling at_start(type) at each message's first byte; a
        // false answer stops the walk before that message. Returns where it stopped.
        template <class AtStart>
        size_t walk(const std::byte* buf, size_t from, size_t to, AtStart&& at_start);
    };

    // The write side's place in the client's stream.
    MessageWalk w_walk_;
    bool w_closed_ = true;      // the last message written ended a unit
    bool w_begun_ = false;      // begin_unit ran for the message at the write position
    bool w_unit_write_ = false; // the unit being written may write (primary, not routable)

    // The read side's place in the answer stream.
    std::uint64_t r_left_ = 0;
    unsigned r_have_ = 0;
    std::byte r_hdr_[5]{};
    bool r_drop_ = false;  // the current message is dropped
    bool r_in_z_ = false;  // the current message is a ReadyForQuery
};

} // namespace pgw::session
