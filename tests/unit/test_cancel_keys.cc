// Unit tests for cancel keys and the shared session table: the slot life cycle (claim,
// release, generations), publishing a key, and route_cancel's verdicts on a real table in
// this process, with a forked child standing in for the owning worker.
#include "admin/stats.hh"
#include "ipc/session_table.hh"

#include <boost/test/unit_test.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <ctime>
#include <string>
#include <vector>

using namespace pgw;
using ipc::CancelKey;
using ipc::CancelVerdict;
using ipc::SessionTable;
using ipc::SlotState;

namespace {

SessionTable make_table(std::uint32_t capacity, std::uint32_t peer_id = 0)
{
    auto t = SessionTable::create(capacity, peer_id);
    BOOST_TEST_REQUIRE(t.ok(), "SessionTable::create failed: " << (t.ok() ? "" : t.error()));
    return std::move(*t);
}

std::uint32_t generation(const SessionTable& t, std::uint32_t slot)
{
    return ipc::generation_of(t.slot(slot).gen_cancel.load());
}

std::uint32_t cancel_seq(const SessionTable& t, std::uint32_t slot)
{
    return ipc::cancel_seq_of(t.slot(slot).gen_cancel.load());
}

// The slot's state by name, so a failing check prints it.
std::string state(const SessionTable& t, std::uint32_t slot)
{
    return ipc::slot_state_name(SlotState(t.slot(slot).state.load()));
}

std::string name(SlotState s) { return ipc::slot_state_name(s); }

// A secret of 4 bytes (protocol 3.0) from a number, or of any length from a pattern.
std::vector<std::byte> secret_of(std::uint32_t v)
{
    return {std::byte(v >> 24), std::byte(v >> 16), std::byte(v >> 8), std::byte(v)};
}
std::vector<std::byte> long_secret(std::size_t len, unsigned seed)
{
    std::vector<std::byte> out(len);
    for (std::size_t i = 0; i < len; ++i)
        out[i] = std::byte(seed * 31 + i * 7);
    return out;
}

// A cancel key that owns its secret's bytes.
struct Key {
    std::uint32_t pid;
    std::vector<std::byte> secret;
    operator CancelKey() const { return {pid, secret}; }
};

// What a worker does once its session is up: publish its key (the upstream backend's pid
// and its own secret), then a state.
void publish(const SessionTable& t, std::uint32_t slot, std::uint32_t backend_pid,
             const std::vector<std::byte>& secret, SlotState st)
{
    ipc::publish_cancel_key(&t.slot(slot), backend_pid, secret);
    t.slot(slot).state.store(std::uint32_t(st));
}

std::string verdict(const ipc::CancelRoute& r) { return ipc::cancel_verdict_name(r.verdict); }
std::string verdict(CancelVerdict v) { return ipc::cancel_verdict_name(v); }

// A child process that stands in for the owning worker: it writes one byte ('U') to a pipe
// for every SIGUSR1 it receives, and 'R' once its handler is installed.
int g_report_fd = -1;

extern "C" void on_usr1(int)
{
    const char u = 'U';
    (void)!::write(g_report_fd, &u, 1);
}

class FakeWorker {
public:
    FakeWorker()
    {
        int fds[2];
        BOOST_TEST_REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
        pid_ = ::fork();
        BOOST_TEST_REQUIRE(pid_ >= 0);
        if (pid_ == 0) {
            ::close(fds[0]);
            g_report_fd = fds[1];
            struct sigaction sa {};
            sa.sa_handler = on_usr1;
            sigemptyset(&sa.sa_mask);
            sa.sa_flags = SA_RESTART;
            sigaction(SIGUSR1, &sa, nullptr);
            sigset_t none;
            sigemptyset(&none);
            sigprocmask(SIG_SETMASK, &none, nullptr);
            const char r = 'R';
            (void)!::write(fds[1], &r, 1);
            for (;;)
                ::pause();  // until the parent kills it
        }
        ::close(fds[1]);
        fd_ = fds[0];
        BOOST_TEST_REQUIRE(read_reports(5000) == "R", "the child did not start");
    }
    ~FakeWorker() { stop(); }
    FakeWorker(const FakeWorker&) = delete;
    FakeWorker& operator=(const FakeWorker&) = delete;

    pid_t pid() const { return pid_; }

    // Everything the child reported within `ms` (stops at the first quiet gap after a byte).
    std::string read_reports(int ms)
    {
        std::string out;
        for (;;) {
            pollfd p{fd_, POLLIN, 0};
            int rc = ::poll(&p, 1, out.empty() ? ms : 100);
            if (rc < 0 && errno == EINTR)
                continue;
            if (rc <= 0)
                return out;
            char buf[64];
            ssize_t n = ::read(fd_, buf, sizeof buf);
            if (n <= 0)
                return out;
            out.append(buf, size_t(n));
        }
    }

    void stop()
    {
        if (pid_ > 0) {
            ::kill(pid_, SIGKILL);
            ::waitpid(pid_, nullptr, 0);
            pid_ = -1;
        }
        if (fd_ >= 0) {
            ::close(fd_);
            fd_ = -1;
        }
    }

private:
    pid_t pid_ = -1;
    int fd_ = -1;
};

} // namespace

BOOST_AUTO_TEST_SUITE(cancel_keys)

BOOST_AUTO_TEST_CASE(table_create)
{
    BOOST_TEST(!SessionTable::create(0, 0).ok());
    BOOST_TEST(!SessionTable::create(ipc::kMaxSlots + 1, 0).ok());
    SessionTable t = make_table(5, 7);
    BOOST_TEST(t.valid());
    BOOST_TEST(t.capacity() == 5u);
    BOOST_TEST(t.peer_id() == 7u);
    BOOST_TEST(t.header()->magic == ipc::kTableMagic);
    BOOST_TEST(t.header()->slot_size == sizeof(ipc::Slot));
    BOOST_TEST(sizeof(ipc::Slot) % 64 == 0u, "two slots would share a cache line");
    for (std::uint32_t i = 0; i < 5; ++i) {
        BOOST_TEST_CONTEXT("slot " << i)
        {
            BOOST_TEST(generation(t, i) == 1u, "a fresh slot's generation must be nonzero");
            BOOST_TEST(cancel_seq(t, i) == 0u);
            BOOST_TEST(state(t, i) == name(SlotState::Free));
            BOOST_TEST(t.slot(i).owner_pid.load() == 0);
            BOOST_TEST(t.slot(i).secret_len.load() == 0u);
        }
    }
    // The biggest table is allowed (and its last slot addressable).
    SessionTable big = make_table(ipc::kMaxSlots, 63);
    big.slot(ipc::kMaxSlots - 1).secret_len.store(4);
    BOOST_TEST(big.slot(ipc::kMaxSlots - 1).secret_len.load() == 4u);
    // A move leaves one owner of the mapping.
    SessionTable moved = std::move(t);
    BOOST_TEST(moved.valid());
    BOOST_TEST(!t.valid());
}

BOOST_AUTO_TEST_CASE(claim_and_release)
{
    SessionTable t = make_table(3);
    t.claim(1, 4242, 99);
    BOOST_TEST(state(t, 1) == name(SlotState::Startup));
    BOOST_TEST(t.slot(1).owner_pid.load() == 4242);
    BOOST_TEST(t.slot(1).session_id.load() == 99u);
    BOOST_TEST(t.slot(1).secret_len.load() == 0u, "no secret before the owner publishes one");
    BOOST_TEST(generation(t, 1) == 1u, "claim must not change the generation");
    // Slots are independent.
    BOOST_TEST(state(t, 0) == name(SlotState::Free));
    BOOST_TEST(state(t, 2) == name(SlotState::Free));

    publish(t, 1, 4321, secret_of(0x1234), SlotState::Active);
    t.slot(1).gen_cancel.store((std::uint64_t(1) << 32) | 7);  // seven cancels routed
    t.release(1);
    BOOST_TEST(state(t, 1) == name(SlotState::Free));
    BOOST_TEST(t.slot(1).owner_pid.load() == 0);
    BOOST_TEST(t.slot(1).secret_len.load() == 0u);
    BOOST_TEST(t.slot(1).backend_pid.load() == 0u);
    BOOST_TEST(generation(t, 1) == 2u);
    BOOST_TEST(cancel_seq(t, 1) == 0u, "the cancel sequence must start again at 0");
    BOOST_TEST(generation(t, 0) == 1u);

    // A claim after a release keeps the new generation and clears the old secret.
    t.claim(1, 4343, 100);
    BOOST_TEST(generation(t, 1) == 2u);
    BOOST_TEST(t.slot(1).secret_len.load() == 0u);
}

BOOST_AUTO_TEST_CASE(new_secrets_have_their_length_and_differ)
{
    for (std::size_t len : {std::size_t(4), ipc::kSecretBytes}) {
        std::vector<std::byte> last;
        int repeats = 0;
        for (int i = 0; i < 1000; ++i) {
            auto s = ipc::new_cancel_secret(len);
            BOOST_TEST_REQUIRE(s.has_value());
            BOOST_TEST_REQUIRE(s->size() == len);
            repeats += *s == last ? 1 : 0;
            last = *s;
        }
        BOOST_TEST(repeats == 0);
    }
}

BOOST_AUTO_TEST_CASE(bad_cancel_log_rate_limit)
{
    SessionTable t = make_table(1);
    // Five per wall-clock second, shared through the table's header. Retry when the second
    // turns over in the middle of a round.
    for (int attempt = 0; attempt < 5; ++attempt) {
        std::time_t before = std::time(nullptr);
        int allowed = 0;
        for (int i = 0; i < 50; ++i)
            allowed += t.may_log_bad_cancel() ? 1 : 0;
        if (std::time(nullptr) != before)
            continue;
        BOOST_TEST(allowed == 5);
        return;
    }
    BOOST_ERROR("could not finish a round within one second");
}

BOOST_AUTO_TEST_CASE(route_cancel_verdicts)
{
    SessionTable t = make_table(4);
    FakeWorker owner;
    const std::uint32_t slot = 2;
    const std::uint32_t backend = 31337;
    const Key good{backend, secret_of(0x5eed1234)};
    t.claim(slot, owner.pid(), 77);

    // Startup: no key published yet; even a zero secret must not match the zeros in the slot.
    BOOST_TEST(verdict(ipc::route_cancel(t, Key{0, secret_of(0)})) == verdict({CancelVerdict::NoSuchSession}));
    BOOST_TEST(verdict(ipc::route_cancel(t, good)) == verdict({CancelVerdict::NoSuchSession}));
    t.slot(slot).state.store(std::uint32_t(SlotState::Active));
    BOOST_TEST(verdict(ipc::route_cancel(t, Key{0, secret_of(0)})) == verdict({CancelVerdict::NoSuchSession}),
               "a zero key matched an unpublished one");

    publish(t, slot, backend, good.secret, SlotState::Active);

    // Wrong secrets: off by one bit, all bits, zero, and the right bytes at another length.
    for (std::uint32_t bad : {0x5eed1234u ^ 1u, 0x5eed1234u ^ 0x80000000u, ~0x5eed1234u, 0u})
        BOOST_TEST(verdict(ipc::route_cancel(t, Key{backend, secret_of(bad)})) ==
                   verdict({CancelVerdict::WrongSecret}));
    {
        Key longer = good;
        longer.secret.push_back(std::byte(0));
        BOOST_TEST(verdict(ipc::route_cancel(t, longer)) == verdict({CancelVerdict::WrongSecret}));
        Key shorter{backend, {good.secret.begin(), good.secret.begin() + 3}};
        BOOST_TEST(verdict(ipc::route_cancel(t, shorter)) == verdict({CancelVerdict::WrongSecret}));
    }
    // Another pid with the right secret, and pids of nothing.
    for (std::uint32_t pid : {backend + 1, backend - 1, 0u, 0xffffffffu})
        BOOST_TEST(verdict(ipc::route_cancel(t, Key{pid, good.secret})) == verdict({CancelVerdict::NoSuchSession}));
    // Idle states: nothing to cancel.
    for (SlotState st : {SlotState::Idle, SlotState::IdleInTransaction,
                         SlotState::IdleInFailedTransaction, SlotState::Startup}) {
        t.slot(slot).state.store(std::uint32_t(st));
        BOOST_TEST(verdict(ipc::route_cancel(t, good)) == verdict({CancelVerdict::NotActive}),
                   "state " << ipc::slot_state_name(st));
    }
    BOOST_TEST(cancel_seq(t, slot) == 0u, "a refused request bumped the cancel sequence");
    BOOST_TEST(owner.read_reports(300) == "", "the owner was signalled for a refused request");

    // The right key on an active session: exactly one signal, one sequence step, and the
    // session named.
    t.slot(slot).state.store(std::uint32_t(SlotState::Active));
    ipc::CancelRoute routed = ipc::route_cancel(t, good);
    BOOST_TEST(verdict(routed) == verdict({CancelVerdict::Routed}));
    BOOST_TEST(routed.session_id == 77u);
    BOOST_TEST(cancel_seq(t, slot) == 1u);
    BOOST_TEST(owner.read_reports(5000) == "U");
    BOOST_TEST(verdict(ipc::route_cancel(t, good)) == verdict({CancelVerdict::Routed}));
    BOOST_TEST(cancel_seq(t, slot) == 2u);
    BOOST_TEST(owner.read_reports(5000) == "U");
    BOOST_TEST(generation(t, slot) == 1u, "routing changed the generation");

    // The sequence wraps without carrying into the generation.
    t.slot(slot).gen_cancel.store((std::uint64_t(1) << 32) | 0xffffffffu);
    BOOST_TEST(verdict(ipc::route_cancel(t, good)) == verdict({CancelVerdict::Routed}));
    BOOST_TEST(generation(t, slot) == 1u);
    BOOST_TEST(cancel_seq(t, slot) == 0u);
    BOOST_TEST(owner.read_reports(5000) == "U");

    // Two upstream hosts may give the same pid: each slot's secret is compared, and only
    // the session whose secret matches is signalled, wherever it is in the table. This
    // one's client speaks protocol 3.2: a 32-byte secret.
    FakeWorker other;
    const Key other_key{backend, long_secret(ipc::kSecretBytes, 9)};
    t.claim(0, other.pid(), 90);
    publish(t, 0, backend, other_key.secret, SlotState::Active);
    BOOST_TEST(verdict(ipc::route_cancel(t, other_key)) == verdict({CancelVerdict::Routed}));
    BOOST_TEST(other.read_reports(5000) == "U");
    BOOST_TEST(owner.read_reports(300) == "", "the other session with the same pid was signalled");
    for (std::size_t i : {std::size_t(0), std::size_t(17), ipc::kSecretBytes - 1}) {
        Key off = other_key;
        off.secret[i] ^= std::byte(0x40);
        BOOST_TEST(verdict(ipc::route_cancel(t, off)) == verdict({CancelVerdict::WrongSecret}), "byte " << i);
    }
    Key first_four{backend, {other_key.secret.begin(), other_key.secret.begin() + 4}};
    BOOST_TEST(verdict(ipc::route_cancel(t, first_four)) == verdict({CancelVerdict::WrongSecret}));
    BOOST_TEST(other.read_reports(300) == "", "a wrong long secret reached its session");
    ipc::CancelRoute second = ipc::route_cancel(t, good);
    BOOST_TEST(verdict(second) == verdict({CancelVerdict::Routed}));
    BOOST_TEST(second.session_id == 77u);
    BOOST_TEST(owner.read_reports(5000) == "U");
    BOOST_TEST(other.read_reports(300) == "");
    t.release(0);

    // The session ends: its key finds nothing, and the slot's next session, with a new
    // backend and secret, is not reached by the old key.
    t.release(slot);
    BOOST_TEST(verdict(ipc::route_cancel(t, good)) == verdict({CancelVerdict::NoSuchSession}));
    t.claim(slot, owner.pid(), 78);
    BOOST_TEST(t.slot(slot).backend_pid.load() == 0u, "a claimed slot kept the old backend pid");
    const Key fresh{backend + 7, secret_of(0x77777777)};
    publish(t, slot, fresh.pid, fresh.secret, SlotState::Active);
    BOOST_TEST(verdict(ipc::route_cancel(t, good)) == verdict({CancelVerdict::NoSuchSession}));
    BOOST_TEST(owner.read_reports(300) == "", "an old key reached the slot's next owner");
    BOOST_TEST(verdict(ipc::route_cancel(t, fresh)) == verdict({CancelVerdict::Routed}));
    BOOST_TEST(owner.read_reports(5000) == "U");

    // An owner that is gone, or none at all.
    owner.stop();
    BOOST_TEST(verdict(ipc::route_cancel(t, fresh)) == verdict({CancelVerdict::OwnerGone}));
    t.slot(slot).owner_pid.store(0);
    BOOST_TEST(verdict(ipc::route_cancel(t, fresh)) == verdict({CancelVerdict::OwnerGone}));
}

BOOST_AUTO_TEST_CASE(verdict_names_are_distinct)
{
    std::vector<std::string> names;
    for (CancelVerdict v : {CancelVerdict::Routed, CancelVerdict::NoSuchSession, CancelVerdict::WrongSecret,
                            CancelVerdict::NotActive, CancelVerdict::Raced, CancelVerdict::OwnerGone}) {
        std::string n = ipc::cancel_verdict_name(v);
        BOOST_TEST(n != "?");
        for (const auto& seen : names)
            BOOST_TEST(n != seen);
        names.push_back(n);
    }
}

BOOST_AUTO_TEST_SUITE_END()

// Counters in the table: a worker's counts survive its reaping (folded into the totals),
// a reused slot starts from zero, and the Prometheus rendering adds them up.
BOOST_AUTO_TEST_SUITE(session_stats)

BOOST_AUTO_TEST_CASE(counts_survive_reaping_and_slots_start_clean)
{
    SessionTable t = make_table(4);
    t.claim(1, getpid(), 11);
    t.slot(1).counters.add(ipc::kBytesFromClient, 100);
    t.slot(1).counters.add(ipc::kStatementsRead, 3);
    t.claim(2, getpid(), 12);
    t.slot(2).counters.add(ipc::kBytesFromClient, 5);
    t.slot(2).state.store(std::uint32_t(SlotState::Active));

    auto s = ipc::read_stats(t);
    BOOST_TEST(s.counters[ipc::kBytesFromClient] == 105u);
    BOOST_TEST(s.counters[ipc::kStatementsRead] == 3u);
    BOOST_TEST(s.sessions_by_state[size_t(SlotState::Startup)] == 1u);
    BOOST_TEST(s.sessions_by_state[size_t(SlotState::Active)] == 1u);

    t.release(1);
    s = ipc::read_stats(t);
    BOOST_TEST(s.counters[ipc::kBytesFromClient] == 105u, "a reaped session's bytes must stay counted");
    BOOST_TEST(s.counters[ipc::kStatementsRead] == 3u);
    BOOST_TEST(s.sessions_by_state[size_t(SlotState::Startup)] == 0u);
    BOOST_TEST(t.header()->fold_seq.load() % 2 == 0u);

    t.claim(1, getpid(), 13);
    BOOST_TEST(t.slot(1).counters.v[ipc::kBytesFromClient].load() == 0u);
    BOOST_TEST(t.slot(1).kill_requested.load() == 0u);
    t.slot(1).counters.add(ipc::kBytesFromClient, 1);
    BOOST_TEST(ipc::read_stats(t).counters[ipc::kBytesFromClient] == 106u);
}

BOOST_AUTO_TEST_CASE(prometheus_text_is_well_formed)
{
    SessionTable t = make_table(2);
    t.claim(0, getpid(), 1);
    t.slot(0).state.store(std::uint32_t(SlotState::Idle));
    auto& c = t.slot(0).counters;
    c.add(ipc::kQueries, 3);
    c.add(ipc::kQueryMicros, 2500000);
    c.add(ipc::Counter(ipc::kQueryBucketFirst), 1);      // <= 1 ms
    c.add(ipc::Counter(ipc::kQueryBucketFirst + 6), 1);  // <= 1 s
    c.add(ipc::kQueryBucketLast, 1);                     // > 30 s
    SessionTable::bump(t.header()->supervisor.exits_by_code[4], 2);
    const std::string text = pgw::admin::render_prometheus(pgw::admin::collect(t));
    auto has = [&](const std::string& line) { return text.find("\n" + line + "\n") != std::string::npos; };
    BOOST_TEST(has("# TYPE pgwicket_query_duration_seconds histogram"), text);
    BOOST_TEST(has("pgwicket_query_duration_seconds_bucket{le=\"0.001\"} 1"), text);
    BOOST_TEST(has("pgwicket_query_duration_seconds_bucket{le=\"0.5\"} 1"), text);
    BOOST_TEST(has("pgwicket_query_duration_seconds_bucket{le=\"1\"} 2"), text);
    BOOST_TEST(has("pgwicket_query_duration_seconds_bucket{le=\"30\"} 2"), text);
    BOOST_TEST(has("pgwicket_query_duration_seconds_bucket{le=\"+Inf\"} 3"), text);
    BOOST_TEST(has("pgwicket_query_duration_seconds_sum 2.5"), text);
    BOOST_TEST(has("pgwicket_query_duration_seconds_count 3"), text);
    BOOST_TEST(has("pgwicket_sessions{state=\"idle\"} 1"), text);
    BOOST_TEST(has("pgwicket_worker_exits_total{code=\"4\",reason=\"upstream failure\"} 2"), text);
    // Every sample line is "name{labels} value" or "name value".
    size_t start = 0;
    while (start < text.size()) {
        size_t end = text.find('\n', start);
        std::string line = text.substr(start, end - start);
        start = end + 1;
        if (line.rfind("# ", 0) == 0)
            continue;
        BOOST_TEST(line.rfind("pgwicket_", 0) == 0u, line);
        BOOST_TEST(line.find(' ') != std::string::npos, line);
    }
}

BOOST_AUTO_TEST_SUITE_END()
