// The shared-memory session table: one slot per session, created by the supervisor
// before the first fork. Workers write only their own slot; cancel keys point into it.
#pragma once

#include "common/result.hh"

#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace pgw::ipc {

inline constexpr std::uint32_t kTableMagic = 0x50475754;  // "PGWT"
inline constexpr std::uint32_t kTableVersion = 13;

enum class SlotState : std::uint32_t {
    Free = 0,
    Startup = 1,                  // handed to a worker; no session yet
    Idle = 2,                     // ReadyForQuery 'I'
    Active = 3,                   // a query or extended-protocol exchange in progress
    IdleInTransaction = 4,        // ReadyForQuery 'T'
    IdleInFailedTransaction = 5,  // ReadyForQuery 'E'
};

const char* slot_state_name(SlotState s);

// CLOCK_REALTIME in milliseconds: the table's times, comparable across processes.
std::int64_t wall_clock_ms();

// Fixed-size text, NUL-terminated, truncated on write.
struct SlotText {
    char text[64];
    void set(std::string_view v);
    std::string get() const;
};

// What a session's worker counts, in its own slot (it is the only writer, so an
// add is a relaxed load and store, no locked instruction). When the worker is
// reaped the supervisor folds the slot's counts into the table's totals, so
// totals + live slots is every count since start. Read by metrics and SHOW STATS.
enum Counter : std::uint32_t {
    kBytesFromClient,
    kBytesFromServer,
    // Statements by the class of their command tag (CommandComplete), and failures.
    kStatementsRead,
    kStatementsWrite,
    kStatementsDdl,
    kStatementsUtility,
    kStatementsError,
    kStatementsDenied,  // refused by the session's policy; never sent upstream
    // Query cycles (first client message to ReadyForQuery): count, total, histogram.
    kQueries,
    kQueryMicros,
    kQueryBucketFirst,
    kQueryBucketLast = kQueryBucketFirst + 9,  // the last bucket is +Inf
    kCancelRouted,
    kCancelForwarded,
    kCancelForwardFailed,
    kCancelNotActive,
    kCancelRejected,  // unknown, stale or wrong keys
    kUpstreamConnectFailures,
    kAuthFailuresUpstream,  // the upstream refused the login
    kAuthFailuresAdmin,     // the admin console refused the user
    kAuthFailuresScram,     // wrong password (scram-sha-256)
    kAuthFailuresMd5,
    kAuthFailuresJwt,       // a token that did not verify, or an identity not mapped
    kAuthFailuresRejected,  // a reject rule, no rule, or TLS required
    kRoutedPrimary,  // read_routing: units run on the primary
    kRoutedStandby,  // and on a standby
    kCounterCount
};

// Upper bounds, in microseconds, of the query duration buckets before +Inf.
inline constexpr std::uint64_t kQueryBucketMicros[] = {1000,    5000,    10000,   50000,
                                                        100000,  500000,  1000000, 5000000,
                                                        30000000};
static_assert(std::size(kQueryBucketMicros) == kQueryBucketLast - kQueryBucketFirst);

struct Counters {
    std::atomic<std::uint64_t> v[kCounterCount];
    // Only for a slot's owner, the single writer.
    void add(Counter c, std::uint64_t n)
    {
        v[c].store(v[c].load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
    }
};

// One session. Alignment keeps two slots off one cache line (two writers).
struct alignas(64) Slot {
    // High 32 bits: the slot's generation, bumped by the supervisor when it frees
    // the slot. Low 32 bits: a cancel sequence, bumped by whoever routes a cancel.
    // One word, so a cancel can never land on the slot's next owner (CAS on both).
    std::atomic<std::uint64_t> gen_cancel;
    std::atomic<std::int32_t> owner_pid;  // 0 when free
    std::atomic<std::uint32_t> state;     // SlotState
    // The client's cancel key: the upstream backend's own pid (what pg_backend_pid()
    // says) and pgwicket's random secret, 4 bytes (protocol 3.0) or 32 (3.2), in
    // secret_words. Both are written first; secret_len last, with release: a reader
    // that sees a nonzero length sees the pid and the bytes that go with it.
    std::atomic<std::uint32_t> backend_pid;
    std::atomic<std::uint32_t> secret_len;  // 0: no key published
    std::atomic<std::uint64_t> secret_words[4];
    std::atomic<std::int64_t> state_since_ms;  // CLOCK_REALTIME
    std::atomic<std::uint64_t> session_id;
    // Written by the owner once, before the state leaves Startup (release); read
    // by others only after they see a later state (acquire).
    SlotText client_addr, user, database, application_name;
    SlotText identity;  // who authenticated: the SSO identity, else the user name
    // Set by the admin console's KILL before it sends SIGTERM, so the owner can
    // tell the client who ended the session.
    std::atomic<std::uint32_t> kill_requested;
    // The host rows (index + 1; 0: none) of the session's upstream connection and, with
    // read routing, of its standby connection: SHOW HOSTS' sessions, least-connections.
    std::atomic<std::uint32_t> host_rows[2];
    Counters counters;
};

// Written by the supervisor only.
struct SupervisorCounters {
    std::atomic<std::uint64_t> accepted;
    std::atomic<std::uint64_t> refused_max_client_conn;
    std::atomic<std::uint64_t> refused_shutdown;
    std::atomic<std::uint64_t> exits_by_code[128];
    std::atomic<std::uint64_t> exits_by_signal;
    std::atomic<std::uint64_t> reloads;
    std::atomic<std::uint64_t> reload_failures;
};

// One pooled route, as the supervisor's registry sees it (SHOW POOLS, metrics). Written
// by the supervisor alone; a reader may see a row mid-update, which monitoring tolerates.
inline constexpr std::uint32_t kPoolRows = 64;
struct PoolRow {
    SlotText route;  // "entry/user/dbname"
    std::atomic<std::uint32_t> warm;     // reset connections waiting for a client
    std::atomic<std::uint32_t> open;     // every upstream connection of the route (warm, in use, being made)
    std::atomic<std::uint32_t> waiting;  // clients waiting for one
    std::atomic<std::uint32_t> pool_size;
    std::atomic<std::int64_t> longest_wait_ms;
    // Waits for a connection: per bucket of pool::kWaitBuckets (+Inf last), count, sum.
    std::atomic<std::uint64_t> wait_buckets[8];
    std::atomic<std::uint64_t> wait_count;
    std::atomic<std::uint64_t> wait_sum_us;
};

// One pooled upstream connection, as the worker holding it last said (SHOW SERVERS).
// The worker claims a free row (CAS of owner_pid from 0 to its pid), is its only
// writer, fills it and then publishes `state` (release); it clears the row when it
// closes the connection, the supervisor when it reaps the worker. A connection that
// finds no free row works all the same and is not listed.
inline constexpr std::uint32_t kServerRows = 512;

enum class ServerState : std::uint32_t {
    Unset = 0,      // free, or claimed and not filled in yet: readers skip it
    Active = 1,     // in a client's session
    Warm = 2,       // reset, waiting for a client
    Checking = 3,   // running server_check_query
    Resetting = 4,  // running server_reset_query
};

const char* server_state_name(ServerState s);

struct alignas(64) ServerRow {
    std::atomic<std::int32_t> owner_pid;  // the worker holding the connection; 0: free
    std::atomic<std::uint32_t> state;     // ServerState
    std::atomic<std::uint32_t> backend_pid;
    std::atomic<std::uint32_t> tls;       // 1: the upstream connection uses TLS
    std::atomic<std::uint64_t> sessions;  // served so far, the current one included
    // CLOCK_REALTIME, milliseconds: connected, last session ended (0 while active),
    // last known good (connect, server_check_query, or the reset after a session).
    std::atomic<std::int64_t> connected_ms, idle_since_ms, checked_ms;
    SlotText pool;  // "entry/user/dbname"
};

// One upstream host of a multi-host entry, as the health checker last saw it (host
// choice, failover, SHOW HOSTS, metrics). The checker is the only writer of every field
// but `banned_until_ms`: it claims the next row for a host it has not listed (host and
// port are written before `host_rows` is raised, and never change), and updates the
// rest under `seq`, odd while it writes; a reader copies the row and tries again when
// `seq` was odd or changed. Workers write only `banned_until_ms` (a failed connect).
inline constexpr std::uint32_t kHostRows = 64;

enum class HostState : std::uint32_t { Unknown = 0, Up = 1, Down = 2 };
enum class HostRole : std::uint32_t { Unknown = 0, Primary = 1, Standby = 2 };

struct alignas(64) HostRow {
    std::atomic<std::uint32_t> seq;
    std::atomic<std::uint32_t> state;     // HostState
    std::atomic<std::uint32_t> role;      // HostRole
    std::atomic<std::uint32_t> role_gen;  // bumped when a known role changes (failover)
    std::atomic<std::uint64_t> lag_bytes; // a standby's replay position behind its entry's primary
    std::atomic<std::int64_t> lag_ms;     // a standby's replay delay (0 when it has replayed all it received)
    std::atomic<std::int64_t> checked_ms; // CLOCK_REALTIME of the last check's answer (or failure)
    std::atomic<std::int64_t> banned_until_ms;  // CLOCK_MONOTONIC: a worker failed to connect
    std::atomic<std::uint64_t> checks, failures;
    SlotText host;
    std::atomic<std::uint32_t> port;
    SlotText error;  // the last failure, for SHOW HOSTS
    // 1 while the configuration in force checks the host: a reload that drops it clears
    // this (the row stays, its place and numbers kept for a host that comes back), and
    // SHOW HOSTS and the metrics leave it out.
    std::atomic<std::uint32_t> listed;
};

// The signing-key fetcher's report (src/jwks/fetcher.cc is its only writer; workers
// read it to decide whether to wait for a refresh and to say why keys are missing,
// metrics to show it). Times are CLOCK_REALTIME milliseconds, 0 for never.
struct JwksStatus {
    std::atomic<std::int64_t> last_attempt_ms;  // when the last fetch ended, either way
    std::atomic<std::int64_t> last_success_ms;
    std::atomic<std::int64_t> expires_ms;        // the cached set's lifetime ends (next fetch due)
    std::atomic<std::uint64_t> attempts;         // fetches ended; a worker waits for this to move
    std::atomic<std::uint64_t> fetched_ok;
    std::atomic<std::uint64_t> fetch_failed;
    std::atomic<std::uint64_t> refresh_requests;  // early refreshes asked for by workers (unknown kid)
    std::atomic<std::uint64_t> key_changes;       // fetched sets whose key ids differ from the set before
    std::atomic<std::uint32_t> keys;              // usable keys in the cached set
    // Why the last fetch failed ("" after a success), under a sequence lock (odd while
    // written); words, not chars, so a reader racing the writer reads no torn object.
    std::atomic<std::uint32_t> error_seq;
    std::atomic<std::uint64_t> error_words[32];
    void set_error(std::string_view text);
    std::string error() const;
};

struct TableHeader {
    std::uint32_t magic;
    std::uint32_t version;
    std::uint32_t capacity;
    std::uint32_t peer_id;
    std::uint64_t slot_size;
    // Rate limit for logging bad cancel requests, shared by all workers.
    std::atomic<std::int64_t> bad_cancel_second;
    std::atomic<std::uint32_t> bad_cancel_count;
    std::atomic<std::int32_t> supervisor_pid;  // for RELOAD and SHUTDOWN from the console
    std::atomic<std::int64_t> started_ms;      // CLOCK_REALTIME
    // 1 from the first SIGTERM on: GET /healthz answers 503, so a load balancer sends
    // new sessions elsewhere while this instance's sessions finish.
    std::atomic<std::uint32_t> draining;
    // Sequence lock around folding a reaped slot into `retired`: odd while folding.
    std::atomic<std::uint64_t> fold_seq;
    Counters retired;  // counts of sessions whose workers have been reaped
    SupervisorCounters supervisor;
    std::atomic<std::uint32_t> pool_rows;  // rows of `pools` in use
    PoolRow pools[kPoolRows];
    std::atomic<std::uint32_t> servers_full_warned;  // 1 once a worker has logged that no row was free
    ServerRow servers[kServerRows];
    // The health checker's hosts (issue 12), and its pid (for SHOW HOSTS).
    std::atomic<std::uint32_t> host_rows;
    std::atomic<std::int32_t> checker_pid;
    // load_balance = round-robin: one counter for every entry, taken by workers.
    std::atomic<std::uint64_t> balance_counter;
    HostRow hosts[kHostRows];
    // ---- signing keys fetched from the identity provider (jwt); keep this block last ----
    JwksStatus jwks;
};

// The segment's layout is a checked contract between processes of one binary.
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);
static_assert(std::atomic<std::int64_t>::is_always_lock_free);
static_assert(std::is_standard_layout_v<Slot> && std::is_standard_layout_v<TableHeader>);
static_assert(std::is_standard_layout_v<ServerRow>);
static_assert(std::is_standard_layout_v<HostRow>);
static_assert(std::atomic<std::int32_t>::is_always_lock_free);
static_assert(std::is_trivially_copyable_v<SlotText>);
static_assert(sizeof(Slot::secret_words) == 32, "a protocol 3.2 secret (kSecretBytes) must fit");

inline std::uint32_t generation_of(std::uint64_t gen_cancel) { return std::uint32_t(gen_cancel >> 32); }
inline std::uint32_t cancel_seq_of(std::uint64_t gen_cancel) { return std::uint32_t(gen_cancel); }

// An anonymous MAP_SHARED mapping, unmapped on destruction; move-only.
class SessionTable {
public:
    static Result<SessionTable> create(std::uint32_t capacity, std::uint32_t peer_id);
    SessionTable() = default;
    SessionTable(SessionTable&& o) noexcept;
    SessionTable& operator=(SessionTable&& o) noexcept;
    SessionTable(const SessionTable&) = delete;
    SessionTable& operator=(const SessionTable&) = delete;
    ~SessionTable();

    bool valid() const { return base_ != nullptr; }
    std::uint32_t capacity() const { return header()->capacity; }
    std::uint32_t peer_id() const { return header()->peer_id; }
    TableHeader* header() const { return static_cast<TableHeader*>(base_); }
    Slot& slot(std::uint32_t index) const;

    // Supervisor side: claim a slot for a new session's worker, and free it again
    // when the worker is reaped (bumping the generation, which voids old keys, and
    // folding the slot's counters into the totals).
    void claim(std::uint32_t index, pid_t owner, std::uint64_t session_id) const;
    void release(std::uint32_t index) const;
    // The session in this slot moved to another worker (a warm one, pooling).
    void reassign(std::uint32_t index, pid_t owner) const;

    // Worker side: claims a free server row for a pooled connection `owner` holds;
    // null when every row is taken. The owner clears it with release_server_row.
    ServerRow* claim_server_row(pid_t owner) const;
    static void release_server_row(ServerRow& row, pid_t owner);
    // Supervisor side: clears the rows of a worker it has reaped.
    void release_servers_of(pid_t owner) const;

    // Shared rate limit: true when a bad-cancel log line may be written now.
    bool may_log_bad_cancel() const;

    // Supervisor side: adds to a counter that only the supervisor writes.
    static void bump(std::atomic<std::uint64_t>& c, std::uint64_t n = 1)
    {
        c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
    }

private:
    void* base_ = nullptr;
    size_t length_ = 0;
};

// A consistent sum of every worker's counters (reaped ones and live ones) and a
// count of live sessions by state.
struct StatsSnapshot {
    std::uint64_t counters[kCounterCount] = {};
    std::uint64_t sessions_by_state[6] = {};  // indexed by SlotState
};
StatsSnapshot read_stats(const SessionTable& table);

// --- Cancel keys ---------------------------------------------------------------
// BackendKeyData carries the upstream backend's real process id, so what a driver
// reports (PQbackendPID, the pid of the session's own notifications) is what
// pg_backend_pid() and pg_stat_activity say, and pg_terminate_backend on it ends
// this session's backend; the secret is pgwicket's own, 32 bits from OpenSSL's RNG
// (the upstream's secret never leaves the worker). A CancelRequest finds its session
// by scanning the live slots for that pid and comparing the secret in constant time:
// several upstream hosts can give the same pid, and a reused slot is safe because a
// new session brings a new pid and a new secret.
inline constexpr std::uint32_t kMaxSlots = 1u << 17;

// The longest secret pgwicket hands out (protocol 3.2, as PostgreSQL 18).
inline constexpr std::size_t kSecretBytes = 32;

struct CancelKey {
    std::uint32_t pid = 0;
    std::span<const std::byte> secret;
};

enum class CancelVerdict {
    Routed,         // the owner was asked to cancel
    NoSuchSession,  // no live session has that pid (never here, or ended)
    WrongSecret,    // a session has that pid, but another secret
    NotActive,      // the session is idle: nothing to cancel
    Raced,          // the slot changed owner while we looked
    OwnerGone,      // the owner could not be signalled
};

const char* cancel_verdict_name(CancelVerdict v);

struct CancelRoute {
    CancelVerdict verdict = CancelVerdict::NoSuchSession;
    std::uint64_t session_id = 0;  // of the session whose key matched, if one did
};

// A new secret for a session's cancel key, `length` bytes (4, or kSecretBytes for a
// protocol 3.2 client) from OpenSSL's RNG; nullopt if the RNG fails.
std::optional<std::vector<std::byte>> new_cancel_secret(std::size_t length);
// The owner publishes its session's key in its slot (null: no table): the pid and the
// secret, then the length, so that a cancel can find the session by it.
void publish_cancel_key(Slot* slot, std::uint32_t backend_pid, std::span<const std::byte> secret);

// Finds the session of `key` and, if the key is good and the session is running a
// query, bumps the slot's cancel sequence and signals the owner (SIGUSR1).
CancelRoute route_cancel(const SessionTable& table, const CancelKey& key);

} // namespace pgw::ipc
