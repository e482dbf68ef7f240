// Session table mapping, slot life cycle, cancel keys and cancel routing.
// Memory orders: owners publish with release, readers acquire; the CAS on
// gen_cancel is the only place two processes race on one field.
#include "ipc/session_table.hh"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <signal.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>
#include <utility>

namespace pgw::ipc {
namespace {

std::int64_t now_ms() { return wall_clock_ms(); }

size_t header_size() { return (sizeof(TableHeader) + 63) & ~size_t(63); }

} // namespace

const char* slot_state_name(SlotState s)
{
    switch (s) {
    case SlotState::Free:
        return "free";
    case SlotState::Startup:
        return "startup";
    case SlotState::Idle:
        return "idle";
    case SlotState::Active:
        return "active";
    case SlotState::IdleInTransaction:
        return "idle in transaction";
    case SlotState::IdleInFailedTransaction:
        return "idle in transaction (aborted)";
    }
    return "?";
}

std::int64_t wall_clock_ms()
{
    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    return std::int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

const char* server_state_name(ServerState s)
{
    switch (s) {
    case ServerState::Unset:
        return "unset";
    case ServerState::Active:
        return "active";
    case ServerState::Warm:
        return "warm";
    case ServerState::Checking:
        return "checking";
    case ServerState::Resetting:
        return "resetting";
    }
    return "?";
}

void SlotText::set(std::string_view v)
{
    size_t n = std::min(v.size(), sizeof text - 1);
    std::memcpy(text, v.data(), n);
    text[n] = '\0';
}

std::string SlotText::get() const { return std::string(text, strnlen(text, sizeof text)); }

void JwksStatus::set_error(std::string_view text)
{
    char buf[sizeof error_words] = {};
    std::memcpy(buf, text.data(), std::min(text.size(), sizeof buf - 1));
    error_seq.fetch_add(1, std::memory_order_acq_rel);
    for (size_t i = 0; i < std::size(error_words); ++i) {
        std::uint64_t w;
        std::memcpy(&w, buf + i * 8, 8);
        error_words[i].store(w, std::memory_order_relaxed);
    }
    error_seq.fetch_add(1, std::memory_order_release);
}

std::string JwksStatus::error() const
{
    char buf[sizeof error_words];
    for (int tries = 0; tries < 100; ++tries) {
        const std::uint32_t before = error_seq.load(std::memory_order_acquire);
        if (before % 2)
            continue;
        for (size_t i = 0; i < std::size(error_words); ++i) {
            const std::uint64_t w = error_words[i].load(std::memory_order_relaxed);
            std::memcpy(buf + i * 8, &w, 8);
        }
        std::atomic_thread_fence(std::memory_order_acquire);
        if (error_seq.load(std::memory_order_relaxed) == before)
            return std::string(buf, strnlen(buf, sizeof buf));
    }
    return "(being updated)";
}

Result<SessionTable> SessionTable::create(std::uint32_t capacity, std::uint32_t peer_id)
{
    if (capacity == 0 || capacity > kMaxSlots)
        return Error{"session table capacity " + std::to_string(capacity) + " is out of range"};
    SessionTable t;
    t.length_ = header_size() + size_t(capacity) * sizeof(Slot);
    void* p = mmap(nullptr, t.length_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return Error{std::string("could not map the session table: ") + std::strerror(errno)};
    t.base_ = p;
    // Fresh anonymous memory is zero; construct the objects in it explicitly.
    auto* h = new (p) TableHeader{};
    h->magic = kTableMagic;
    h->version = kTableVersion;
    h->capacity = capacity;
    h->peer_id = peer_id;
    h->slot_size = sizeof(Slot);
    h->supervisor_pid.store(getpid(), std::memory_order_relaxed);
    h->started_ms.store(now_ms(), std::memory_order_relaxed);
    for (std::uint32_t i = 0; i < capacity; ++i) {
        auto* slot = new (static_cast<char*>(p) + header_size() + size_t(i) * sizeof(Slot)) Slot{};
        slot->gen_cancel.store(std::uint64_t(1) << 32, std::memory_order_relaxed);
    }
    return t;
}

SessionTable::SessionTable(SessionTable&& o) noexcept
    : base_(std::exchange(o.base_, nullptr)), length_(std::exchange(o.length_, 0))
{
}

SessionTable& SessionTable::operator=(SessionTable&& o) noexcept
{
    if (this != &o) {
        if (base_)
            munmap(base_, length_);
        base_ = std::exchange(o.base_, nullptr);
        length_ = std::exchange(o.length_, 0);
    }
    return *this;
}

SessionTable::~SessionTable()
{
    if (base_)
        munmap(base_, length_);
}

Slot& SessionTable::slot(std::uint32_t index) const
{
    return *reinterpret_cast<Slot*>(static_cast<char*>(base_) + header_size() +
                                    size_t(index) * sizeof(Slot));
}

void SessionTable::claim(std::uint32_t index, pid_t owner, std::uint64_t session_id) const
{
    Slot& s = slot(index);
    s.session_id.store(session_id, std::memory_order_relaxed);
    s.secret_len.store(0, std::memory_order_relaxed);
    s.backend_pid.store(0, std::memory_order_relaxed);
    s.state_since_ms.store(now_ms(), std::memory_order_relaxed);
    s.kill_requested.store(0, std::memory_order_relaxed);
    // A reused slot must not show its last session's client while the new one starts.
    for (SlotText* t : {&s.client_addr, &s.user, &s.database, &s.application_name, &s.identity})
        t->set("");
    s.owner_pid.store(owner, std::memory_order_relaxed);
    s.state.store(std::uint32_t(SlotState::Startup), std::memory_order_release);
}

void SessionTable::reassign(std::uint32_t index, pid_t owner) const
{
    slot(index).owner_pid.store(owner, std::memory_order_release);
}

ServerRow* SessionTable::claim_server_row(pid_t owner) const
{
    for (ServerRow& row : header()->servers) {
        std::int32_t expected = 0;
        if (row.owner_pid.load(std::memory_order_relaxed) == 0 &&
            row.owner_pid.compare_exchange_strong(expected, owner, std::memory_order_acq_rel)) {
            // The last owner left it Unset; readers skip it until the new owner publishes a state.
            row.state.store(std::uint32_t(ServerState::Unset), std::memory_order_relaxed);
            return &row;
        }
    }
    return nullptr;
}

void SessionTable::release_server_row(ServerRow& row, pid_t owner)
{
    // Unset first, so that a reader never shows the row under its next owner with
    // this owner's values.
    row.state.store(std::uint32_t(ServerState::Unset), std::memory_order_release);
    std::int32_t expected = owner;
    row.owner_pid.compare_exchange_strong(expected, 0, std::memory_order_acq_rel);
}

void SessionTable::release_servers_of(pid_t owner) const
{
    // The owner is dead (reaped), so nobody writes its rows any more.
    if (owner <= 0)
        return;
    for (ServerRow& row : header()->servers)
        if (row.owner_pid.load(std::memory_order_acquire) == owner)
            release_server_row(row, owner);
}

void SessionTable::release(std::uint32_t index) const
{
    Slot& s = slot(index);
    // The owner is dead, so its counts are final: move them to the totals. Readers
    // retry while the sequence is odd or has moved, so they never count twice.
    TableHeader* h = header();
    h->fold_seq.fetch_add(1, std::memory_order_acq_rel);
    for (std::uint32_t c = 0; c < kCounterCount; ++c) {
        std::uint64_t n = s.counters.v[c].load(std::memory_order_relaxed);
        if (n) {
            bump(h->retired.v[c], n);
            s.counters.v[c].store(0, std::memory_order_relaxed);
        }
    }
    h->fold_seq.fetch_add(1, std::memory_order_release);
    s.state.store(std::uint32_t(SlotState::Free), std::memory_order_relaxed);
    s.owner_pid.store(0, std::memory_order_relaxed);
    s.secret_len.store(0, std::memory_order_relaxed);
    s.backend_pid.store(0, std::memory_order_relaxed);
    for (auto& row : s.host_rows)
        row.store(0, std::memory_order_relaxed);
    // New generation, cancel sequence back to 0: a cancel that matched the old
    // session's key and races with this store fails its compare-and-swap.
    std::uint64_t old = s.gen_cancel.load(std::memory_order_relaxed);
    s.gen_cancel.store(std::uint64_t(generation_of(old) + 1) << 32, std::memory_order_release);
}

bool SessionTable::may_log_bad_cancel() const
{
    constexpr std::uint32_t kPerSecond = 5;
    TableHeader* h = header();
    std::int64_t sec = now_ms() / 1000;
    std::int64_t seen = h->bad_cancel_second.load(std::memory_order_relaxed);
    if (seen != sec && h->bad_cancel_second.compare_exchange_strong(seen, sec))
        h->bad_cancel_count.store(0, std::memory_order_relaxed);
    return h->bad_cancel_count.fetch_add(1, std::memory_order_relaxed) < kPerSecond;
}

StatsSnapshot read_stats(const SessionTable& table)
{
    const TableHeader* h = table.header();
    StatsSnapshot out;
    for (int attempt = 0;; ++attempt) {
        std::uint64_t before = h->fold_seq.load(std::memory_order_acquire);
        if (before & 1) {
            sched_yield();
            continue;
        }
        out = StatsSnapshot{};
        for (std::uint32_t c = 0; c < kCounterCount; ++c)
            out.counters[c] = h->retired.v[c].load(std::memory_order_relaxed);
        for (std::uint32_t i = 0; i < table.capacity(); ++i) {
            const Slot& s = table.slot(i);
            for (std::uint32_t c = 0; c < kCounterCount; ++c)
                out.counters[c] += s.counters.v[c].load(std::memory_order_relaxed);
            std::uint32_t st = s.state.load(std::memory_order_relaxed);
            if (st != std::uint32_t(SlotState::Free) && st < std::size(out.sessions_by_state))
                ++out.sessions_by_state[st];
        }
        std::atomic_thread_fence(std::memory_order_acquire);
        // A fold during the scan may have moved counts from a slot to the totals
        // after we read the totals: scan again. (Bounded: give up on consistency
        // rather than loop forever under a reaping storm.)
        if (h->fold_seq.load(std::memory_order_relaxed) == before || attempt >= 100)
            return out;
    }
}

const char* cancel_verdict_name(CancelVerdict v)
{
    switch (v) {
    case CancelVerdict::Routed:
        return "routed to the session's worker";
    case CancelVerdict::NoSuchSession:
        return "no session has that backend pid";
    case CancelVerdict::WrongSecret:
        return "wrong secret";
    case CancelVerdict::NotActive:
        return "the session is not running a query";
    case CancelVerdict::Raced:
        return "the session ended while the request was checked";
    case CancelVerdict::OwnerGone:
        return "the session's worker is gone";
    }
    return "?";
}

namespace {

// Random bytes for cancel secrets, drawn from the kernel (getrandom) a kilobyte at a
// time: a pooled worker makes a secret for every session. Not OpenSSL's generator: a
// forked worker's first RAND_bytes reseeds its generators, which measured about a
// millisecond of CPU per session on a connection-per-transaction load, for four bytes.
// A forked child starts empty and never hands out its parent's bytes; bytes are wiped
// as they are taken.
struct SecretStore {
    unsigned char bytes[1024];
    std::size_t left = 0;
};
SecretStore secret_store;
void forget_secrets()
{
    OPENSSL_cleanse(secret_store.bytes, sizeof secret_store.bytes);
    secret_store.left = 0;
}

} // namespace

std::optional<std::vector<std::byte>> new_cancel_secret(std::size_t length)
{
    static const bool registered = pthread_atfork(nullptr, nullptr, forget_secrets) == 0;
    std::vector<std::byte> secret(std::min(length, kSecretBytes));
    auto* out = reinterpret_cast<unsigned char*>(secret.data());
    if (!registered)  // forks would go unnoticed: no store
        return RAND_bytes(out, int(secret.size())) == 1 ? std::optional(std::move(secret)) : std::nullopt;
    if (secret_store.left < secret.size()) {
        // A read of more than 256 bytes may come back short (a signal): OpenSSL then.
        ssize_t n = getrandom(secret_store.bytes, sizeof secret_store.bytes, 0);
        if (n != ssize_t(sizeof secret_store.bytes) &&
            RAND_bytes(secret_store.bytes, int(sizeof secret_store.bytes)) != 1)
            return std::nullopt;
        secret_store.left = sizeof secret_store.bytes;
    }
    unsigned char* from = secret_store.bytes + (secret_store.left - secret.size());
    std::memcpy(out, from, secret.size());
    OPENSSL_cleanse(from, secret.size());
    secret_store.left -= secret.size();
    return secret;
}

void publish_cancel_key(Slot* slot, std::uint32_t backend_pid, std::span<const std::byte> secret)
{
    if (!slot || secret.empty() || secret.size() > kSecretBytes)
        return;
    std::uint64_t words[4] = {};
    std::memcpy(words, secret.data(), secret.size());
    slot->backend_pid.store(backend_pid, std::memory_order_relaxed);
    for (std::size_t i = 0; i < 4; ++i)
        slot->secret_words[i].store(words[i], std::memory_order_relaxed);
    slot->secret_len.store(std::uint32_t(secret.size()), std::memory_order_release);
}

namespace {

// Whether the slot's published secret is `secret`, in time that depends only on the
// length the key claims.
bool secret_matches(const Slot& s, std::uint32_t len, std::span<const std::byte> secret)
{
    std::uint64_t words[4];
    for (std::size_t i = 0; i < 4; ++i)
        words[i] = s.secret_words[i].load(std::memory_order_relaxed);
    return len == secret.size() && CRYPTO_memcmp(words, secret.data(), len) == 0;
}

} // namespace

CancelRoute route_cancel(const SessionTable& table, const CancelKey& key)
{
    CancelRoute out;
    for (std::uint32_t i = 0; i < table.capacity(); ++i) {
        Slot& s = table.slot(i);
        // The word first: if the slot is freed and claimed again after this, the
        // compare-and-swap below fails, so a cancel never lands on a slot's next owner.
        std::uint64_t word = s.gen_cancel.load(std::memory_order_acquire);
        std::uint32_t len = s.secret_len.load(std::memory_order_acquire);
        // No length: a free slot, or an owner that has not published its key.
        if (len == 0 || s.backend_pid.load(std::memory_order_relaxed) != key.pid)
            continue;
        if (!secret_matches(s, len, key.secret)) {
            out.verdict = CancelVerdict::WrongSecret;
            continue;  // another host's backend may have the same pid
        }
        out.session_id = s.session_id.load(std::memory_order_relaxed);
        if (SlotState(s.state.load(std::memory_order_acquire)) != SlotState::Active) {
            out.verdict = CancelVerdict::NotActive;
            return out;
        }
        pid_t owner = s.owner_pid.load(std::memory_order_acquire);
        // Bump the sequence without letting it carry into the generation.
        std::uint64_t bumped = (word & 0xffffffff00000000ull) | std::uint32_t(cancel_seq_of(word) + 1);
        if (!s.gen_cancel.compare_exchange_strong(word, bumped, std::memory_order_acq_rel)) {
            out.verdict = CancelVerdict::Raced;
            return out;
        }
        // The kernel does not reuse a pid before it is reaped, and the supervisor
        // clears owner_pid right after reaping; what remains is the few instructions
        // between its waitpid() and release().
        out.verdict = owner > 0 && kill(owner, SIGUSR1) == 0 ? CancelVerdict::Routed : CancelVerdict::OwnerGone;
        return out;
    }
    return out;
}

} // namespace pgw::ipc
