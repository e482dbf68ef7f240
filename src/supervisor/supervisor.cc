// Supervisor event loop, spare workers, handoff, reaping, reload, drain and sd_notify.
// It never reads a client byte and never creates threads, so fork() is always safe.
#include "supervisor/supervisor.hh"

#include "common/log.hh"
#include "common/net.hh"
#include "config/options.hh"
#include "health/checker.hh"
#include "health/hosts.hh"
#include "ipc/fdpass.hh"
#include "ipc/session_table.hh"
#include "jwks/fetcher.hh"
#include "pool/context.hh"
#include "pool/registry.hh"
#include "session/exit_codes.hh"
#include "session/session.hh"
#include "session/worker.hh"
#include "supervisor/aux_process.hh"
#include "supervisor/listeners.hh"
#include "tls/server_tls.hh"

#include <fcntl.h>
#include <openssl/rand.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <set>
#include <unordered_map>
#include <string>

namespace pgw::supervisor {
namespace {

using namespace std::chrono_literals;
using Clock = net::Clock;

// Refusals (max_client_conn) are answered by short-lived workers; this many at
// once at most, beyond which a refused connection is simply closed.
constexpr size_t kMaxRefusers = 16;
// Crash-loop guard: this many abnormal worker exits within the window delays spawning.
constexpr int kCrashLimit = 10;
constexpr auto kCrashWindow = 10s;
// After sessions are told to stop (57P01), how long they have before SIGKILL.
constexpr auto kShutdownGrace = 10s;
// Spares beyond spare_workers (workers whose waiting pooled client moved to a warm
// worker) leave once the oldest has had no work for this long.
constexpr auto kSpareLinger = 5s;
// STATUS= is refreshed at most this often.
constexpr auto kStatusInterval = 1s;

// The helper processes every supervisor keeps (each decides from the configuration
// whether it runs at all).
std::vector<AuxProcess> helper_processes()
{
    std::vector<AuxProcess> helpers;
    helpers.emplace_back("health checker", &health::checker_main, &health::checker_wanted);
    helpers.emplace_back("key fetcher", &jwks::fetcher_main, &jwks::fetcher_wanted);
    return helpers;
}

// The supervisor holds a channel per worker (sessions, spares, refusals, warm pooled
// workers) besides its listeners, and the soft limit on open files is often 1024: it
// is raised to the hard limit at start, as a log line says, and a hard limit too low
// for max_client_conn is a warning (accept would fail with EMFILE, or a fork's
// socketpair, long before max_client_conn).
void raise_fd_limit(const config::Config& cfg)
{
    rlimit rl{};
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (rl.rlim_cur < rl.rlim_max) {
        const rlim_t was = rl.rlim_cur;
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) == 0)
            log_info("raised the limit on open files (RLIMIT_NOFILE) from %llu to the hard limit, %llu",
                     (unsigned long long)was, (unsigned long long)rl.rlim_max);
        else {
            log_warning("could not raise the limit on open files from %llu to %llu: %s", (unsigned long long)was,
                        (unsigned long long)rl.rlim_max, std::strerror(errno));
            rl.rlim_cur = was;
        }
    }
    const auto needed = rlim_t(cfg.max_client_conn + cfg.spare_workers) + kMaxRefusers + 64;
    if (rl.rlim_cur < needed)
        log_warning("the limit on open files is %llu, and max_client_conn %ld needs about %llu in the supervisor "
                    "(a channel per worker); raise the hard limit (LimitNOFILE= in the service, ulimit -Hn)",
                    (unsigned long long)rl.rlim_cur, cfg.max_client_conn, (unsigned long long)needed);
}

constexpr std::uint64_t kSignalTag = ~std::uint64_t(0);
// epoll tags of worker channels: this bit and the worker's pid.
constexpr std::uint64_t kChannelTag = std::uint64_t(1) << 62;

struct Worker {
    pid_t pid = 0;
    UniqueFd channel;  // for the worker's life (pooling talks on it); closed to retire a spare
    // Retired: the handoff to it failed; it is killed and waits to be reaped.
    // Warm: holds a reset pooled connection, no session. Leaving: told to retire.
    // Relaying: its TLS client's session went to a warm worker, with which it relays
    // until the session ends (the session is counted there, not here).
    // Reconfiguring: a warm worker asked to take a reloaded configuration (Reconfigure),
    // until it says Warm again or Leaving.
    enum class State { Spare, Busy, Refusing, Retired, Warm, Leaving, Relaying, Reconfiguring } state = State::Spare;
    std::uint64_t session_id = 0;
    std::uint32_t slot = ipc::kNoSlot;
    Clock::time_point since = Clock::now();
    std::uint64_t generation = 0;  // of the configuration it was forked with
    std::string peer_host;         // of its session's client: whose guess its messages update
    ipc::Handoff handed{};         // the last connection handed to it: its client's address and listener
    std::string prefilling;        // the route it opens a connection of for min_pool_size, until Warm
    // A pooled client waiting for a decision (NeedRoute): what goes to a warm worker.
    ipc::Handoff asked{};
    UniqueFd asked_client;
    std::string asked_context;
    bool asked_relays = false;  // asked_client is its end of a relay for a TLS client
};

// Running: accepting. Draining (SIGTERM): sessions may finish until
// shutdown_timeout; new startups get 57P03, cancel requests still work. Ending
// (SIGINT, a second SIGTERM, or shutdown_timeout): sessions get 57P01, and
// SIGKILL after kShutdownGrace.
enum class Phase { Running, Draining, Ending };

class Supervisor {
public:
    explicit Supervisor(const config::Config& cfg) : cfg_(cfg), aux_(helper_processes()) {}
    int run();

private:
    Status setup();
    void accept_all(size_t listener_index);
    void dispatch(UniqueFd client, const sockaddr_storage& peer, socklen_t peer_len, ListenerKind kind);
    bool spawn_spare();
    void replenish();
    void retire_spares();
    void trim_spares(Clock::time_point now);
    void on_signal();
    void reap();
    void reload();
    void reopen_logs();
    void begin_drain();
    void begin_end(const char* why);
    void stop_listening();
    void notify_status(bool force);
    int loop_timeout_ms() const;
    void on_channel(pid_t pid, std::uint32_t events);
    void on_need_route(Worker& w, ipc::Received&& msg);
    void on_warm(Worker& w, const std::string& route);
    void reconfigure(Worker& w, const std::string& route);
    // A worker whose pooled connection is to go: its place is freed, and it is told to
    // close the connection and exit.
    void retire_holder(Worker& w);
    void perform(const std::vector<pool::Action>& actions);
    bool tell(Worker& w, ipc::HandoffType type);
    bool hand_to(Worker& w, ipc::Handoff& h, int client_fd, bool refuse, const std::string& host,
                 std::string_view payload = {});
    // To a spare (forked now if there is none); closes the client when no worker takes it.
    void to_spare(UniqueFd client, ipc::Handoff& h, bool refuse, const std::string& host,
                  std::string_view payload = {});
    void pass_on(Worker& w, ipc::Received&& msg);
    pool::Limits limits_for(const std::string& entry) const;
    void publish_pools(Clock::time_point now);
    std::vector<int> fds_to_close_in_child(int own_parent_end) const;
    // How many workers are in each state: kept by set_state and the two places that add
    // and remove workers, since dispatch asks on every accept (a walk over thousands
    // of workers each time, before).
    size_t count(Worker::State s) const { return by_state_[size_t(s)]; }
    void set_state(Worker& w, Worker::State s);
    bool at_capacity() const
    {
        return count(Worker::State::Busy) >= size_t(cfg_.max_client_conn) || free_slots_.empty();
    }
    void forget(std::map<pid_t, Worker>::iterator it);
    void keep_helpers(Clock::time_point now);
    bool helpers_running() const;

    // A copy: a reload swaps it whole. Workers keep the one they were forked with.
    config::Config cfg_;
    tls::ServerContext tls_;  // client TLS, built from cfg_; null when off
    ipc::SessionTable table_;
    std::vector<std::uint32_t> free_slots_;  // a stack; the table's slots not in use
    std::vector<Listener> listeners_;
    UniqueFd epoll_, sigfd_;
    std::map<pid_t, Worker> workers_;
    std::array<size_t, size_t(Worker::State::Reconfiguring) + 1> by_state_{};
    std::deque<pid_t> spares_;
    std::uint64_t next_session_id_ = 1;
    Phase phase_ = Phase::Running;
    Clock::time_point drain_deadline_{}, kill_deadline_{};
    bool reload_requested_ = false;
    bool activated_ = false;  // listeners came from systemd
    bool notify_ = false;     // systemd reads our sd_notify messages (NOTIFY_SOCKET)
    std::uint64_t watchdog_usec_ = 0;
    Clock::time_point next_watchdog_{}, next_status_{};
    std::string last_status_;
    std::deque<Clock::time_point> crashes_;
    Clock::time_point spawn_blocked_until_{};
    pool::Registry pool_;
    // Helper processes beside the workers (aux_process.hh), restarted when they end.
    std::vector<AuxProcess> aux_;
    std::uint64_t generation_ = 0;  // bumped by every reload
    std::string config_digest_;     // config::source_digest of the last reload's files
    Clock::time_point next_seed_{};  // seed_minimums again (prefill)
    // New connections go straight to a warm worker of the route the same client host
    // used last (one process hop instead of three, and TLS clients reuse connections
    // too). A host's guess follows what its clients ask for; a bounded map.
    std::unordered_map<std::string, std::string> guesses_;
    // min_pool_size: a route's last asker's session context, from which a worker without
    // a client opens a connection of the route; after a failed attempt the route waits.
    std::map<std::string, std::string> templates_;
    std::map<std::string, Clock::time_point> prefill_paused_;
    std::set<std::string> prefilling_;  // routes a worker opens a connection of (one at a time)
    void seed_minimums();
    void prefill(Clock::time_point now);
    void guess(const std::string& host, const std::string& route);
};

void Supervisor::set_state(Worker& w, Worker::State s)
{
    --by_state_[size_t(w.state)];
    ++by_state_[size_t(s)];
    w.state = s;
}

void Supervisor::forget(std::map<pid_t, Worker>::iterator it)
{
    --by_state_[size_t(it->second.state)];
    workers_.erase(it);
}

Status Supervisor::setup()
{
    raise_fd_limit(cfg_);
    sigset_t mask;
    sigemptyset(&mask);
    // SIGUSR1/SIGUSR2 are for workers (routed cancels, drain notice); the supervisor
    // reads and ignores them.
    for (int s : {SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2})
        sigaddset(&mask, s);
    if (sigprocmask(SIG_BLOCK, &mask, nullptr) != 0)
        return Error{std::string("sigprocmask: ") + std::strerror(errno)};
    // An ignored signal is discarded before signalfd can see it, and ignoring is
    // inherited across exec (nohup ignores SIGHUP): take the defaults back. The
    // signals are blocked, so the default actions never run.
    for (int s : {SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2})
        signal(s, SIG_DFL);
    signal(SIGPIPE, SIG_IGN);
    sigfd_.reset(signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC));
    if (!sigfd_.valid())
        return Error{std::string("signalfd: ") + std::strerror(errno)};

    auto tls = tls::make_server_context(cfg_);
    if (!tls)
        return Error{tls.error()};
    tls_ = std::move(*tls);
    // OpenSSL's default provider and random generators, set up once here before any fork
    // (a client TLS context does it too, but TLS may be off): otherwise every worker sets
    // them up itself on its first RAND_bytes, its session's cancel secret, about 230 KiB
    // of heap of its own per session. A child's generators reseed on their first use
    // after fork (OpenSSL 3 keeps the pid they were seeded in).
    if (unsigned char probe[16]; RAND_bytes(probe, sizeof probe) != 1)
        log_warning("OpenSSL's random generator failed at start; workers will try again for each session");

    // Before the first fork, so every worker maps the same table.
    auto table = ipc::SessionTable::create(std::uint32_t(cfg_.max_client_conn), std::uint32_t(cfg_.peer_id));
    if (!table)
        return Error{table.error()};
    table_ = std::move(*table);
    for (std::uint32_t i = table_.capacity(); i-- > 0;)
        free_slots_.push_back(i);

    auto activated = take_activated_listeners();
    if (!activated)
        return Error{activated.error()};
    if (!activated->empty()) {
        activated_ = true;
        listeners_ = std::move(*activated);
        log_info("using %zu socket(s) passed by systemd; listen_addr, listen_port and "
                 "unix_socket_dir are ignored", listeners_.size());
        bool has_metrics = false;
        for (const auto& l : listeners_)
            has_metrics |= l.kind == ListenerKind::Metrics;
        if (!has_metrics && !cfg_.metrics_listen.empty()) {
            auto m = open_metrics_listener(cfg_.metrics_listen, listen_backlog(cfg_));
            if (!m)
                return Error{m.error()};
            listeners_.push_back(std::move(*m));
        }
    } else {
        auto ls = open_listeners(cfg_);
        if (!ls)
            return Error{ls.error()};
        listeners_ = std::move(*ls);
    }
    notify_ = std::getenv("NOTIFY_SOCKET") != nullptr;
    if (sd_watchdog_enabled(1, &watchdog_usec_) <= 0)
        watchdog_usec_ = 0;

    epoll_.reset(epoll_create1(EPOLL_CLOEXEC));
    if (!epoll_.valid())
        return Error{std::string("epoll_create1: ") + std::strerror(errno)};
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = kSignalTag;
    epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, sigfd_.get(), &ev);
    for (size_t i = 0; i < listeners_.size(); ++i) {
        ev.data.u64 = i;
        if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, listeners_[i].fd.get(), &ev) != 0)
            return Error{std::string("epoll_ctl: ") + std::strerror(errno)};
        log_info("listening on %s%s", listeners_[i].name.c_str(),
                 listeners_[i].kind == ListenerKind::Metrics ? " (metrics)" : "");
    }
    return ok_status();
}

std::vector<int> Supervisor::fds_to_close_in_child(int own_parent_end) const
{
    std::vector<int> fds;
    fds.reserve(workers_.size() + listeners_.size() + 3);
    fds.insert(fds.end(), {epoll_.get(), sigfd_.get()});
    if (own_parent_end >= 0)
        fds.push_back(own_parent_end);
    for (const auto& l : listeners_)
        fds.push_back(l.fd.get());
    for (const auto& [pid, w] : workers_)
        if (w.channel.valid())
            fds.push_back(w.channel.get());
    return fds;
}

bool Supervisor::spawn_spare()
{
    if (Clock::now() < spawn_blocked_until_)
        return false;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
        log_error("socketpair: %s", std::strerror(errno));
        return false;
    }
    UniqueFd parent_end(sv[0]), child_end(sv[1]);
    pid_t pid = fork();
    if (pid < 0) {
        log_error("fork: %s", std::strerror(errno));
        return false;
    }
    // The list of what to close names every worker's channel: the child builds it from
    // its copy of our state, so the supervisor's share of a fork does not grow with the
    // sessions (and writes no heap pages it shares with thousands of children).
    if (pid == 0)
        session::worker_main(cfg_, table_, tls_.get(), child_end.release(), fds_to_close_in_child(parent_end.get()));
    Worker w;
    w.pid = pid;
    w.channel = std::move(parent_end);
    w.generation = generation_;
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = kChannelTag | std::uint64_t(pid);
    epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, w.channel.get(), &ev);
    ++by_state_[size_t(w.state)];
    workers_.emplace(pid, std::move(w));
    spares_.push_back(pid);
    return true;
}

void Supervisor::replenish()
{
    while (phase_ == Phase::Running && spares_.size() < size_t(cfg_.spare_workers))
        if (!spawn_spare())
            break;
}

// After a burst on a full pool every client that waited leaves a spare behind (its
// worker logged it in, then handed it over): without this, 2,000 of them stayed for
// good. Spares are used oldest first, so an old one at the front means no demand.
void Supervisor::trim_spares(Clock::time_point now)
{
    while (spares_.size() > size_t(cfg_.spare_workers)) {
        Worker& w = workers_.at(spares_.front());
        if (now - w.since < kSpareLinger)
            return;
        w.channel.reset();
        spares_.pop_front();
    }
}

// Spares exit when their channel closes (they were forked with the old config,
// or we are stopping).
void Supervisor::retire_spares()
{
    for (pid_t pid : spares_)
        workers_.at(pid).channel.reset();
    spares_.clear();
}

void Supervisor::dispatch(UniqueFd client, const sockaddr_storage& peer, socklen_t peer_len,
                          ListenerKind kind)
{
    ipc::Handoff h;
    h.listener_kind = std::uint32_t(kind);
    h.peer = peer;
    h.peer_len = peer_len;
    auto& counters = table_.header()->supervisor;
    bool refuse = false;
    if (kind == ListenerKind::Metrics) {
        // A scrape: a short-lived worker answers it; it holds no session slot.
        if (count(Worker::State::Refusing) >= kMaxRefusers)
            return;
        h.type = ipc::HandoffType::Metrics;
        refuse = true;
    } else {
        ipc::SessionTable::bump(counters.accepted);
        if (phase_ != Phase::Running) {
            h.type = ipc::HandoffType::ShuttingDown;
            refuse = true;
        } else if (at_capacity()) {
            // A session that has ended keeps its place until its worker is reaped, and a
            // burst is accepted in one go before this round reads its SIGCHLD: reap first.
            reap();
            if (at_capacity()) {
                h.type = ipc::HandoffType::Refuse;
                refuse = true;
            }
        }
        if (refuse) {
            ipc::SessionTable::bump(phase_ != Phase::Running ? counters.refused_shutdown
                                                             : counters.refused_max_client_conn);
            if (count(Worker::State::Refusing) >= kMaxRefusers) {
                log_warning("%s and %zu refusals in progress: closing connection from %s without "
                            "a message",
                            phase_ != Phase::Running ? "shutting down" : "max_client_conn reached",
                            kMaxRefusers, net::describe_peer(peer, peer_len).c_str());
                return;
            }
        } else {
            h.session_id = next_session_id_++;
        }
    }
    std::string host = kind == ListenerKind::Metrics ? std::string() : net::peer_host(peer, peer_len);
    if (!refuse && kind != ListenerKind::Metrics) {
        if (auto g = guesses_.find(host); g != guesses_.end()) {
            // (A failed handoff keeps its slot until that worker is reaped.)
            while (!free_slots_.empty()) {
                pid_t warm = pool_.take_warm(g->second);
                if (!warm)
                    break;
                if (hand_to(workers_.at(warm), h, client.get(), refuse, host))
                    return;
                perform(pool_.gone(warm, Clock::now()));
            }
        }
    }
    to_spare(std::move(client), h, refuse, host);
}

void Supervisor::to_spare(UniqueFd client, ipc::Handoff& h, bool refuse, const std::string& host,
                          std::string_view payload)
{
    // A spare that died since it was forked fails the send; try the next one.
    for (int attempt = 0; attempt < 3 && (refuse || !free_slots_.empty()); ++attempt) {
        if (spares_.empty() && !spawn_spare())
            break;
        pid_t pid = spares_.front();
        spares_.pop_front();
        if (hand_to(workers_.at(pid), h, client.get(), refuse, host, payload))
            return;
    }
    log_error("no worker could take the connection from %s; closing it",
              net::describe_peer(h.peer, h.peer_len).c_str());
}

// A warm worker that the guess gave a client it does not serve (the console, an
// unpooled entry) sends it back with the startup packet it read: the session goes on in
// a spare, under the same session id, and the worker says Warm next.
void Supervisor::pass_on(Worker& w, ipc::Received&& msg)
{
    // The client's address and listener as the supervisor handed them over, not the
    // worker's word (a local client may be trusted where a TCP one is not).
    ipc::Handoff h = w.handed;
    // The slot is given again (the worker has published nothing in it yet, and writes
    // nothing more to it).
    if (w.slot != ipc::kNoSlot) {
        table_.release(w.slot);
        free_slots_.push_back(w.slot);
        w.slot = ipc::kNoSlot;
    }
    const bool refuse = phase_ != Phase::Running;
    h.type = refuse ? ipc::HandoffType::ShuttingDown : ipc::HandoffType::Session;
    to_spare(std::move(msg.client), h, refuse, w.peer_host, msg.payload);
}

// Sends an accepted connection to `w` (a spare, or a warm worker guessed for it), with a
// slot unless it is refused. False when the worker is gone: it is killed, and its slot
// freed when it is reaped.
bool Supervisor::hand_to(Worker& w, ipc::Handoff& h, int client_fd, bool refuse, const std::string& host,
                         std::string_view payload)
{
    h.slot = ipc::kNoSlot;
    if (!refuse) {
        // The slot is the worker's from now until it is reaped (or goes warm).
        h.slot = free_slots_.back();
        free_slots_.pop_back();
        table_.claim(h.slot, w.pid, h.session_id);
        w.slot = h.slot;
    }
    if (auto st = ipc::send_handoff(w.channel.get(), h, client_fd, payload); !st) {
        log_warning("handoff to worker %d failed: %s", int(w.pid), st.error().c_str());
        set_state(w, Worker::State::Retired);
        ::kill(w.pid, SIGKILL);
        return false;
    }
    log_debug("C-%llu: %s handed to %s worker %d", (unsigned long long)h.session_id,
              net::describe_peer(h.peer, h.peer_len).c_str(), w.state == Worker::State::Warm ? "warm" : "spare",
              int(w.pid));
    set_state(w, refuse ? Worker::State::Refusing : Worker::State::Busy);
    w.handed = h;
    w.session_id = h.session_id;
    w.peer_host = host;
    w.since = Clock::now();
    return true;
}

void Supervisor::accept_all(size_t index)
{
    Listener& l = listeners_[index];
    for (;;) {
        sockaddr_storage peer{};
        socklen_t len = sizeof peer;
        // Non-blocking from the start, as every worker wants it (it saves each one a fcntl).
        int fd = accept4(l.fd.get(), reinterpret_cast<sockaddr*>(&peer), &len, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                log_warning("accept on %s: %s", l.name.c_str(), std::strerror(errno));
            return;
        }
        dispatch(UniqueFd(fd), peer, len, l.kind);
    }
}

void Supervisor::reap()
{
    for (;;) {
        int status = 0;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid <= 0)
            return;
        if (std::any_of(aux_.begin(), aux_.end(), [&](AuxProcess& a) { return a.reaped(pid, status, Clock::now()); }))
            continue;
        auto it = workers_.find(pid);
        if (it == workers_.end())
            continue;
        Worker& w = it->second;
        double secs = std::chrono::duration<double>(Clock::now() - w.since).count();
        const char* role = w.state == Worker::State::Busy       ? "session"
                           : w.state == Worker::State::Refusing ? "refusal"
                           : w.state == Worker::State::Retired  ? "failed handoff"
                           : w.state == Worker::State::Warm     ? "warm"
                           : w.state == Worker::State::Leaving  ? "retired pooled"
                           : w.state == Worker::State::Relaying ? "TLS relay"
                           : w.state == Worker::State::Reconfiguring ? "reconfiguring pooled"
                                                                     : "spare";
        auto& sc = table_.header()->supervisor;
        if (WIFSIGNALED(status))
            ipc::SessionTable::bump(sc.exits_by_signal);
        else
            ipc::SessionTable::bump(sc.exits_by_code[WEXITSTATUS(status) & 127]);
        if (WIFSIGNALED(status)) {
            log_warning("worker %d (%s C-%llu) was killed by signal %d (%s) after %.1f s", int(pid),
                        role, (unsigned long long)w.session_id, WTERMSIG(status),
                        strsignal(WTERMSIG(status)), secs);
            crashes_.push_back(Clock::now());
        } else {
            int code = WEXITSTATUS(status);
            if (code == session::kExitInternal) {
                crashes_.push_back(Clock::now());
            }
            if (code == session::kExitOk || code == session::kExitShutdown)
                log_debug("worker %d (%s C-%llu) exited: %s (%d) after %.1f s", int(pid), role,
                          (unsigned long long)w.session_id, session::exit_code_name(code), code, secs);
            else
                log_info("worker %d (%s C-%llu) exited: %s (%d) after %.1f s", int(pid), role,
                         (unsigned long long)w.session_id, session::exit_code_name(code), code, secs);
        }
        if (w.state == Worker::State::Spare)
            std::erase(spares_, pid);
        if (w.slot != ipc::kNoSlot) {
            table_.release(w.slot);
            free_slots_.push_back(w.slot);
        }
        table_.release_servers_of(pid);
        if (!w.prefilling.empty()) {
            prefilling_.erase(w.prefilling);
            if (WIFEXITED(status) && WEXITSTATUS(status) == session::kExitOk) {
                // Nothing to open: the entry is gone, or the route's settings changed.
                pool_.forget_minimum(w.prefilling);
                templates_.erase(w.prefilling);
            } else {
                // It could not open the connection (the log says why): not again for a while.
                prefill_paused_[w.prefilling] = Clock::now() + 5s;
            }
        }
        forget(it);
        // Its pooled connection, or its place in a pool's queue, is free now.
        perform(pool_.gone(pid, Clock::now()));
    }
}

// A message from a worker: a pooled session's request, a warm connection, a warm
// worker that wants to go. Anything unexpected ends that worker, never the supervisor.
void Supervisor::on_channel(pid_t pid, std::uint32_t events)
{
    auto it = workers_.find(pid);
    if (it == workers_.end())
        return;
    Worker& w = it->second;
    if (!w.channel.valid())
        return;
    if (!(events & EPOLLIN)) {
        // Hung up: the worker is exiting; it is reaped by SIGCHLD.
        epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, w.channel.get(), nullptr);
        return;
    }
    auto msg = ipc::receive_handoff(w.channel.get());
    if (!msg) {
        epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, w.channel.get(), nullptr);
        if (msg.error() != "channel closed") {
            log_warning("worker %d sent a bad message (%s); killing it", int(pid), msg.error().c_str());
            ::kill(pid, SIGKILL);
        }
        return;
    }
    switch (msg->handoff.type) {
    case ipc::HandoffType::NeedRoute:
        if (w.state == Worker::State::Busy && !w.asked_client.valid() && w.asked_context.empty())
            return on_need_route(w, std::move(*msg));
        break;
    case ipc::HandoffType::Warm:
        if (w.state == Worker::State::Busy || w.state == Worker::State::Reconfiguring)
            return on_warm(w, msg->payload);
        break;
    case ipc::HandoffType::Released:
        if (w.state == Worker::State::Busy) {
            // An unpooled session: no guess for that host until it uses a pool again.
            guesses_.erase(w.peer_host);
            perform(pool_.gone(pid, Clock::now()));
            return;
        }
        break;
    case ipc::HandoffType::PassOn:
        if (w.state == Worker::State::Busy && !w.asked_client.valid() && w.asked_context.empty() &&
            pool_.held_route(pid))
            return pass_on(w, std::move(*msg));
        break;
    case ipc::HandoffType::Leaving:
        if (w.state == Worker::State::Reconfiguring) {
            // It could not take the new configuration: nobody else can be on the way.
            return retire_holder(w);
        }
        if (w.state == Worker::State::Warm) {
            std::vector<pool::Action> actions;
            if (pool_.leaving(pid, actions, Clock::now())) {
                tell(w, ipc::HandoffType::Retire);
                set_state(w, Worker::State::Leaving);
            }
            perform(actions);
        }
        // Otherwise a client is already on its way to it: it serves that one first.
        return;
    default:
        break;
    }
    log_warning("worker %d sent message %u out of turn; killing it", int(pid), unsigned(msg->handoff.type));
    ::kill(pid, SIGKILL);
}

bool Supervisor::tell(Worker& w, ipc::HandoffType type)
{
    if (auto st = ipc::send_message(w.channel.get(), type); !st) {
        log_warning("worker %d: %s", int(w.pid), st.error().c_str());
        return false;
    }
    return true;
}

void Supervisor::on_need_route(Worker& w, ipc::Received&& msg)
{
    auto ctx = pool::decode_context(msg.payload);
    if (!ctx) {
        log_warning("worker %d: %s; killing it", int(w.pid), ctx.error().c_str());
        ::kill(w.pid, SIGKILL);
        return;
    }
    // The session's identity is the supervisor's record, not the worker's word.
    w.asked = msg.handoff;
    w.asked.session_id = w.session_id;
    w.asked.slot = w.slot;
    w.asked.type = ipc::HandoffType::MoveClient;
    const bool can_move = msg.client.valid();
    if (ctx->relayed_by != 0 && (ctx->relayed_by != std::uint32_t(w.pid) || !can_move)) {
        log_warning("worker %d sent a relay of another process; killing it", int(w.pid));
        ::kill(w.pid, SIGKILL);
        return;
    }
    w.asked_relays = ctx->relayed_by != 0;
    if (templates_.size() >= 1024 && !templates_.count(ctx->route)) {
        templates_.clear();  // bounded: routes start over from the entries' own
        seed_minimums();
    }
    templates_[ctx->route] = msg.payload;
    guess(w.peer_host, ctx->route);
    w.asked_client = std::move(msg.client);
    w.asked_context = std::move(msg.payload);
    perform(pool_.request(w.pid, ctx->route, limits_for(ctx->entry), can_move, Clock::now()));
}

// The routes min_pool_size applies to, with the configuration now in force: each pooled
// entry's own route (session::starting_contexts) from the start, and every route a client
// has used, with new limits after a reload.
void Supervisor::seed_minimums()
{
    for (const auto& e : cfg_.databases)
        for (const auto& ctx : session::starting_contexts(cfg_, e, *table_.header()))
            templates_.try_emplace(ctx.route, pool::encode(ctx));
    for (const auto& [route, payload] : templates_)
        if (auto ctx = pool::decode_context(payload))
            pool_.declare(route, limits_for(ctx->entry));
}

// min_pool_size: a worker with no client opens a connection for each route below its
// minimum, one per route at a time, from the session context of the route's last asker
// (or the entry's own, see seed_minimums).
void Supervisor::prefill(Clock::time_point now)
{
    if (phase_ != Phase::Running)
        return;
    // An entry of several hosts has its routes once the health checker has seen its
    // hosts (none before): looked for again every few seconds.
    if (now >= next_seed_) {
        next_seed_ = now + 5s;
        seed_minimums();
    }
    for (const auto& route : pool_.below_minimum(now)) {
        auto tmpl = templates_.find(route);
        if (tmpl == templates_.end())
            continue;
        if (auto paused = prefill_paused_.find(route); paused != prefill_paused_.end()) {
            if (now < paused->second)
                continue;
            prefill_paused_.erase(paused);
        }
        if (prefilling_.count(route))
            continue;
        if (spares_.empty() && !spawn_spare())
            return;
        pid_t pid = spares_.front();
        spares_.pop_front();
        Worker& w = workers_.at(pid);
        if (!ipc::send_message(w.channel.get(), ipc::HandoffType::Prefill, tmpl->second)) {
            set_state(w, Worker::State::Retired);
            ::kill(pid, SIGKILL);
            continue;
        }
        pool_.prefill(pid, route);
        set_state(w, Worker::State::Busy);
        w.prefilling = route;
        prefilling_.insert(route);
        w.since = now;
        log_debug("worker %d opens a connection of %s (min_pool_size)", int(pid), pool::route_label(route).c_str());
    }
}

// The registry's routes into the shared header, for SHOW POOLS and the metrics.
void Supervisor::publish_pools(Clock::time_point now)
{
    auto* h = table_.header();
    std::uint32_t n = 0;
    for (const auto& r : pool_.stats(now)) {
        if (n == ipc::kPoolRows)
            break;
        ipc::PoolRow& row = h->pools[n++];
        row.route.set(pool::route_label(r.route));
        row.warm.store(std::uint32_t(r.warm), std::memory_order_relaxed);
        row.open.store(std::uint32_t(r.open), std::memory_order_relaxed);
        row.waiting.store(std::uint32_t(r.waiting), std::memory_order_relaxed);
        row.pool_size.store(std::uint32_t(r.pool_size), std::memory_order_relaxed);
        row.longest_wait_ms.store(std::int64_t(r.longest_wait_s * 1000), std::memory_order_relaxed);
        static_assert(pool::kWaitBucketCount <= std::size(ipc::PoolRow{}.wait_buckets));
        for (std::size_t b = 0; b < pool::kWaitBucketCount; ++b)
            row.wait_buckets[b].store(r.waits.buckets[b], std::memory_order_relaxed);
        row.wait_count.store(r.waits.count, std::memory_order_relaxed);
        row.wait_sum_us.store(std::uint64_t(r.waits.sum_s * 1e6), std::memory_order_relaxed);
    }
    h->pool_rows.store(n, std::memory_order_release);
}

// A pool's limits from the entry it belongs to, in the configuration now in force.
pool::Limits Supervisor::limits_for(const std::string& entry) const
{
    pool::Limits limits;
    limits.database = entry;
    limits.pool_size = cfg_.default_pool_size;
    limits.reserve_pool_size = cfg_.reserve_pool_size;
    limits.max_db_connections = cfg_.max_db_connections;
    limits.min_pool_size = 0;  // an entry that is gone keeps nothing open
    if (const config::DatabaseEntry* d = cfg_.find_entry(entry)) {
        limits.min_pool_size = d->pool.pooled ? cfg_.min_pool_size_for(*d) : 0;
        limits.pool_size = cfg_.pool_size_for(*d);
        limits.reserve_pool_size = cfg_.reserve_pool_size_for(*d);
        limits.max_db_connections = cfg_.max_db_connections_for(*d);
    }
    limits.reserve_pool_timeout = std::chrono::seconds(cfg_.reserve_pool_timeout);
    limits.query_wait_timeout = std::chrono::seconds(cfg_.query_wait_timeout);
    return limits;
}

void Supervisor::on_warm(Worker& w, const std::string& route)
{
    std::vector<pool::Action> actions;
    // The session's slot is free: the worker no longer has a session.
    if (w.slot != ipc::kNoSlot) {
        table_.release(w.slot);
        free_slots_.push_back(w.slot);
        w.slot = ipc::kNoSlot;
    }
    w.since = Clock::now();
    if (phase_ == Phase::Running && w.generation != generation_) {
        // Forked or last configured before a reload.
        if (const std::string* held = pool_.held_route(w.pid); held && *held == route)
            return reconfigure(w, route);
    }
    if (phase_ != Phase::Running || w.generation != generation_ || !pool_.warm(w.pid, route, actions, Clock::now())) {
        // Draining, forked before a reload, or a connection the pool never counted.
        return retire_holder(w);
    }
    set_state(w, Worker::State::Warm);
    prefilling_.erase(w.prefilling);
    w.prefilling.clear();
    if (!w.peer_host.empty())  // a prefill has no client host
        guess(w.peer_host, route);
    perform(actions);
}

// A warm connection after a reload: its worker is asked to take the new configuration.
// It reads the files itself and keeps the connection only when they give the digest
// ours gave (nothing changed in between) and its route's key is the same under the new
// configuration; then it says Warm, else Leaving. The route's context (what a client of
// it sent) is needed to work out the key: without one (too many routes) it is retired.
void Supervisor::reconfigure(Worker& w, const std::string& route)
{
    auto t = templates_.find(route);
    if (t == templates_.end() ||
        !ipc::send_message(w.channel.get(), ipc::HandoffType::Reconfigure, config_digest_ + t->second)) {
        return retire_holder(w);
    }
    w.generation = generation_;
    set_state(w, Worker::State::Reconfiguring);
}

void Supervisor::retire_holder(Worker& w)
{
    perform(pool_.gone(w.pid, Clock::now()));
    tell(w, ipc::HandoffType::Retire);
    set_state(w, Worker::State::Leaving);
}

void Supervisor::guess(const std::string& host, const std::string& route)
{
    if (guesses_.size() >= 4096 && !guesses_.count(host))
        guesses_.clear();  // bounded: clients from many hosts start over
    guesses_[host] = route;
}

// Carries out the pool's decisions. A worker that cannot be told is dead or dying:
// it is reaped later, and what it held is freed then.
void Supervisor::perform(const std::vector<pool::Action>& actions)
{
    for (const auto& a : actions) {
        switch (a.kind) {
        case pool::Action::Connect:
        case pool::Action::Timeout: {
            auto it = workers_.find(a.worker);
            if (it == workers_.end())
                break;
            Worker& w = it->second;
            w.asked_client.reset();
            w.asked_context.clear();
            w.asked_relays = false;
            tell(w, a.kind == pool::Action::Connect ? ipc::HandoffType::Connect : ipc::HandoffType::PoolTimeout);
            break;
        }
        case pool::Action::Retire: {
            auto it = workers_.find(a.warm);
            if (it != workers_.end() && it->second.state == Worker::State::Warm) {
                tell(it->second, ipc::HandoffType::Retire);
                set_state(it->second, Worker::State::Leaving);
            }
            break;
        }
        case pool::Action::Move: {
            auto asker = workers_.find(a.worker);
            auto warm = workers_.find(a.warm);
            if (asker == workers_.end())
                break;  // the client's worker died; the warm one stays taken until it says Warm again
            Worker& s = asker->second;
            if (warm == workers_.end() ||
                !ipc::send_handoff(warm->second.channel.get(), s.asked, s.asked_client.get(), s.asked_context)) {
                // The warm worker is gone: ask again for the client.
                log_warning("a warm worker could not take C-%llu; asking the pool again",
                            (unsigned long long)s.session_id);
                if (auto ctx = pool::decode_context(s.asked_context))
                    perform(pool_.request(s.pid, ctx->route, limits_for(ctx->entry), s.asked_client.valid(),
                                          Clock::now()));
                break;
            }
            Worker& w = warm->second;
            set_state(w, Worker::State::Busy);
            w.peer_host = s.peer_host;
            w.session_id = s.session_id;
            w.slot = s.slot;
            w.since = Clock::now();
            if (w.slot != ipc::kNoSlot)
                table_.reassign(w.slot, w.pid);
            s.slot = ipc::kNoSlot;
            s.asked_client.reset();
            s.asked_context.clear();
            if (std::exchange(s.asked_relays, false)) {
                // It keeps its TLS client and relays to `w`; a connection of its own (it
                // was warm on another route) it closes.
                if (tell(s, ipc::HandoffType::HandedOver))
                    set_state(s, Worker::State::Relaying);
                if (pool_.held_route(s.pid))
                    perform(pool_.gone(s.pid, Clock::now()));
            } else if (pool_.held_route(s.pid)) {
                // A warm worker that got another route's client: warm again when it says so.
                tell(s, ipc::HandoffType::HandedOver);
            } else if (tell(s, ipc::HandoffType::HandedOver)) {
                set_state(s, Worker::State::Spare);
                s.session_id = 0;
                s.since = Clock::now();
                // It may make more spares than spare_workers: they serve the rest of a
                // burst without a fork, and trim_spares ends them when the burst is over.
                if (s.generation == generation_ && phase_ == Phase::Running)
                    spares_.push_back(s.pid);
                else
                    s.channel.reset();  // forked before a reload, or stopping: it leaves
            }
            log_debug("C-%llu moved to warm worker %d", (unsigned long long)w.session_id, int(w.pid));
            break;
        }
        }
    }
}

void Supervisor::stop_listening()
{
    for (auto& l : listeners_) {
        if (epoll_.valid())
            epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, l.fd.get(), nullptr);
        if (!l.unix_path.empty())
            ::unlink(l.unix_path.c_str());
    }
    listeners_.clear();
}

// MONOTONIC_USEC lets systemd (Type=notify-reload) match READY=1 to this reload.
void Supervisor::reload()
{
    reload_requested_ = false;
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    sd_notifyf(0, "RELOADING=1\nSTATUS=reloading %s\nMONOTONIC_USEC=%llu", cfg_.path.c_str(),
               (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000);
    log_info("reloading configuration from %s", cfg_.path.c_str());
    auto& sc = table_.header()->supervisor;
    auto next = config::load_file(cfg_.path);
    if (!next) {
        ipc::SessionTable::bump(sc.reload_failures);
        log_error("reload failed; the running configuration stays in effect:\n%s", next.error().c_str());
        // logrotate sends SIGHUP too: reopen the log even though the file is broken.
        reopen_logs();
        sd_notify(0, "READY=1");
        notify_status(true);
        return;
    }
    config::Config merged = std::move(*next);
    int changed = 0;
    // Restart-only options keep their running values, so the config in force stays one
    // consistent value.
    config::keep_restart_only(cfg_, merged, [&](const config::OptionSpec& spec, const std::string& was,
                                                const std::string& now) {
        if (spec.reload == config::ReloadClass::Restart) {
            log_warning("%s changed from \"%s\" to \"%s\", but it takes effect only after a "
                        "restart; still using \"%s\"",
                        std::string(spec.name).c_str(), was.c_str(), now.c_str(), was.c_str());
            return;
        }
        ++changed;
        log_info("%s changed from \"%s\" to \"%s\"", std::string(spec.name).c_str(), was.c_str(),
                 now.c_str());
    });
    if (merged.peer_id != cfg_.peer_id || merged.max_client_conn != cfg_.max_client_conn)
        log_warning("internal error: restart-only options escaped the reload check");
    auto entries_differ = [](const auto& a, const auto& b, auto key) {
        if (a.size() != b.size())
            return true;
        for (size_t i = 0; i < a.size(); ++i)
            if (key(a[i]) != key(b[i]))
                return true;
        return false;
    };
    if (entries_differ(cfg_.databases, merged.databases,
                       [](const config::DatabaseEntry& d) {
                           return d.name + "=" + d.conninfo + (d.pool.pooled ? " pool_mode=session" : "") + " " +
                                  std::to_string(d.pool.pool_size) + " " + std::to_string(d.pool.min_pool_size) + " " +
                                  std::to_string(d.pool.reserve_pool_size) + " " +
                                  std::to_string(d.pool.max_db_connections);
                       })) {
        ++changed;
        log_info("[databases] changed: %zu entries; new sessions use them", merged.databases.size());
    }
    if (entries_differ(cfg_.peers, merged.peers, [](const config::PeerEntry& p) {
            return std::to_string(p.id) + "=" + p.host + ":" + p.port;
        })) {
        ++changed;
        log_info("[peers] changed: %zu entries", merged.peers.size());
    }
    // Restoring restart-only values can make the whole inconsistent (peers without
    // the new peer_id); then nothing changes.
    if (auto errors = config::cross_check(merged); !errors.empty()) {
        ipc::SessionTable::bump(sc.reload_failures);
        std::string all;
        for (const auto& e : errors)
            all += "\n" + e;
        log_error("reload failed; the running configuration stays in effect: with the restart-only "
                  "options kept at their running values, the new file does not hold together:%s",
                  all.c_str());
        reopen_logs();
        sd_notify(0, "READY=1");
        notify_status(true);
        return;
    }
    // Certificates are read again: a renewed one is used by new sessions at once.
    auto tls = tls::make_server_context(merged);
    if (!tls) {
        ipc::SessionTable::bump(sc.reload_failures);
        log_error("reload failed; the running configuration stays in effect: %s", tls.error().c_str());
        reopen_logs();
        sd_notify(0, "READY=1");
        notify_status(true);
        return;
    }
    tls_ = std::move(*tls);
    cfg_ = std::move(merged);
    ipc::SessionTable::bump(sc.reloads);
    reopen_logs();
    // Spares were forked with the old configuration: replaced. Warm workers are asked to
    // take the new one (their connections stay when their routes are unchanged); busy
    // ones are asked when they say Warm. Sessions keep theirs.
    ++generation_;
    // (Read again after the load: a file changed in the moment between makes a worker
    // that reads it later adopt the newer one, which a next reload gives everyone.)
    config_digest_ = config::source_digest(cfg_);
    for (const auto& [pid, route] : pool_.take_all_warm()) {
        if (auto it = workers_.find(pid); it != workers_.end())
            reconfigure(it->second, route);
        else
            perform(pool_.gone(pid, Clock::now()));  // (not expected: reaped workers leave the pool)
    }
    retire_spares();
    replenish();
    seed_minimums();
    // Hosts no entry has now leave SHOW HOSTS and the metrics (their rows stay for a host
    // that comes back; the restarted checker lists the hosts it checks as it claims them).
    health::list_hosts(*table_.header(), health::checked_hosts(cfg_));
    // Helpers start again with the new configuration (their shared state stays).
    for (auto& a : aux_) {
        a.configure(cfg_);
        a.signal(SIGTERM);
    }
    log_info("configuration reloaded from %s (%d change%s)", cfg_.path.c_str(), changed,
             changed == 1 ? "" : "s");
    sd_notify(0, "READY=1");
    notify_status(true);
}

// Reopens our log (logrotate moved it away first) and asks every session worker
// to do the same: SIGHUP in a worker does only that.
void Supervisor::reopen_logs()
{
    log::setup(config::log_settings(cfg_));
    for (auto& [pid, w] : workers_)
        if (w.state == Worker::State::Busy)
            ::kill(pid, SIGHUP);
}

void Supervisor::begin_drain()
{
    phase_ = Phase::Draining;
    table_.header()->draining.store(1, std::memory_order_relaxed);
    drain_deadline_ = Clock::now() + std::chrono::seconds(cfg_.shutdown_timeout);
    retire_spares();
    // Warm connections close with Terminate; busy ones when their session ends.
    perform(pool_.retire_all_warm(Clock::now()));
    sd_notify(0, "STOPPING=1");
    // Admin console sessions leave at once (one typed SHUTDOWN would otherwise
    // hold the drain open); client sessions ignore the notice.
    for (auto& [pid, w] : workers_)
        if (w.state == Worker::State::Busy)
            ::kill(pid, SIGUSR2);
    size_t busy = count(Worker::State::Busy);
    log_info("received SIGTERM: draining %zu session%s for up to %ld s (shutdown_timeout); new "
             "connections are refused; send SIGTERM again or SIGINT to end sessions now",
             busy, busy == 1 ? "" : "s", cfg_.shutdown_timeout);
    notify_status(true);
}

void Supervisor::begin_end(const char* why)
{
    if (phase_ == Phase::Ending)
        return;
    if (phase_ == Phase::Running)
        sd_notify(0, "STOPPING=1");
    phase_ = Phase::Ending;
    table_.header()->draining.store(1, std::memory_order_relaxed);
    kill_deadline_ = Clock::now() + kShutdownGrace;
    stop_listening();
    retire_spares();
    for (const auto& a : aux_)
        a.signal(SIGTERM);
    size_t n = 0;
    for (auto& [pid, w] : workers_)
        if (w.state != Worker::State::Spare && w.state != Worker::State::Retired) {
            ::kill(pid, SIGTERM);
            ++n;
        }
    if (n == 0)
        log_info("%s: stopping", why);
    else
        log_info("%s: ending %zu session%s (57P01)", why, n, n == 1 ? "" : "s");
    notify_status(true);
}

void Supervisor::notify_status(bool force)
{
    // Without systemd nobody reads it, and it counts every slot of the table.
    if (!notify_)
        return;
    const auto now = Clock::now();
    if (!force && now < next_status_)
        return;
    next_status_ = now + kStatusInterval;
    size_t by_state[6] = {};
    for (std::uint32_t i = 0; i < table_.capacity(); ++i) {
        std::uint32_t st = table_.slot(i).state.load(std::memory_order_relaxed);
        if (st < 6)
            ++by_state[st];
    }
    const size_t sessions = count(Worker::State::Busy);
    std::string status;
    if (phase_ == Phase::Draining)
        status = "draining: ";
    else if (phase_ == Phase::Ending)
        status = "stopping: ";
    status += std::to_string(sessions) + (sessions == 1 ? " session" : " sessions") + " (" +
              std::to_string(by_state[size_t(ipc::SlotState::Startup)]) + " starting, " +
              std::to_string(by_state[size_t(ipc::SlotState::Active)]) + " active, " +
              std::to_string(by_state[size_t(ipc::SlotState::Idle)]) + " idle, " +
              std::to_string(by_state[size_t(ipc::SlotState::IdleInTransaction)] +
                             by_state[size_t(ipc::SlotState::IdleInFailedTransaction)]) +
              " idle in transaction), " + std::to_string(spares_.size()) +
              (spares_.size() == 1 ? " spare worker" : " spare workers") + ", " +
              std::to_string(pool_.warm_count()) + " warm pooled";
    if (force || status != last_status_) {
        last_status_ = status;
        sd_notifyf(0, "STATUS=%s", status.c_str());
    }
}

int Supervisor::loop_timeout_ms() const
{
    auto until = Clock::now() + 1s;
    if (watchdog_usec_)
        until = std::min(until, next_watchdog_);
    if (phase_ == Phase::Draining)
        until = std::min(until, drain_deadline_);
    if (phase_ == Phase::Ending)
        until = std::min(until, kill_deadline_);
    until = std::min(until, pool_.next_deadline(Clock::now()));
    for (const auto& a : aux_)
        until = std::min(until, a.next_start());
    return net::ms_until(until);
}

void Supervisor::on_signal()
{
    signalfd_siginfo si;
    while (::read(sigfd_.get(), &si, sizeof si) == sizeof si) {
        switch (si.ssi_signo) {
        case SIGCHLD:
            reap();
            break;
        case SIGTERM:
            if (phase_ == Phase::Running)
                begin_drain();
            else
                begin_end("received SIGTERM again");
            break;
        case SIGINT:
        case SIGQUIT:
            begin_end(si.ssi_signo == SIGINT ? "received SIGINT (fast shutdown)"
                                             : "received SIGQUIT (fast shutdown)");
            break;
        case SIGHUP:
            // Handled after the events of this round, once, however many arrived.
            if (phase_ == Phase::Running)
                reload_requested_ = true;
            else
                log_info("received SIGHUP while shutting down; ignored");
            break;
        default:
            break;
        }
    }
}

// Helpers run while sessions may start or run; at the end they are told to stop.
void Supervisor::keep_helpers(Clock::time_point now)
{
    if (phase_ == Phase::Ending)
        return;
    for (auto& a : aux_)
        if (a.due(now))
            a.start(cfg_, table_, [this] { return fds_to_close_in_child(-1); }, now);
}

bool Supervisor::helpers_running() const
{
    return std::any_of(aux_.begin(), aux_.end(), [](const AuxProcess& a) { return a.running(); });
}

int Supervisor::run()
{
    if (auto st = setup(); !st) {
        log_error("%s", st.error().c_str());
        stop_listening();
        return 1;
    }
    if (!cfg_.pidfile.empty()) {
        UniqueFd pf(::open(cfg_.pidfile.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
        std::string pid = std::to_string(getpid()) + "\n";
        if (!pf.valid() || ::write(pf.get(), pid.data(), pid.size()) != (ssize_t)pid.size()) {
            log_error("could not write pidfile \"%s\": %s", cfg_.pidfile.c_str(), std::strerror(errno));
            stop_listening();
            return 1;
        }
    }
    replenish();
    seed_minimums();
    for (auto& a : aux_)
        a.configure(cfg_);
    keep_helpers(Clock::now());
    log_info("pgwicket %s ready: %zu spare workers, max_client_conn %ld%s", PGWICKET_VERSION,
             spares_.size(), cfg_.max_client_conn,
             watchdog_usec_ ? ", systemd watchdog on" : "");
    sd_notifyf(0, "READY=1\nMAINPID=%d", int(getpid()));
    notify_status(true);
    next_watchdog_ = Clock::now();

    for (;;) {
        epoll_event events[16];
        int n = epoll_wait(epoll_.get(), events, 16, loop_timeout_ms());
        if (n < 0 && errno != EINTR) {
            log_error("epoll_wait: %s", std::strerror(errno));
            begin_end("internal error");
            break;
        }
        // Workers' messages first: a connection accepted in the same round then finds the
        // worker that has just gone warm.
        for (int i = 0; i < n; ++i)
            if (events[i].data.u64 != kSignalTag && (events[i].data.u64 & kChannelTag))
                on_channel(pid_t(events[i].data.u64 & ~kChannelTag), events[i].events);
        for (int i = 0; i < n; ++i) {
            if (events[i].data.u64 == kSignalTag)
                on_signal();
            else if (events[i].data.u64 & kChannelTag)
                continue;
            else if (phase_ != Phase::Ending && events[i].data.u64 < listeners_.size())
                accept_all(size_t(events[i].data.u64));
        }
        if (reload_requested_ && phase_ == Phase::Running)
            reload();
        const auto now = Clock::now();
        if (watchdog_usec_ && now >= next_watchdog_) {
            sd_notify(0, "WATCHDOG=1");
            next_watchdog_ = now + std::chrono::microseconds(watchdog_usec_ / 2);
        }
        if (phase_ == Phase::Draining) {
            if (count(Worker::State::Busy) == 0)
                begin_end("every session has ended");
            else if (now >= drain_deadline_)
                begin_end("shutdown_timeout passed");
        }
        if (phase_ == Phase::Ending) {
            if (workers_.empty() && !helpers_running())
                break;
            if (now >= kill_deadline_) {
                for (auto& [pid, w] : workers_) {
                    log_warning("worker %d did not stop within %lld s; killing it", int(pid),
                                (long long)std::chrono::duration_cast<std::chrono::seconds>(kShutdownGrace).count());
                    ::kill(pid, SIGKILL);
                }
                for (const auto& a : aux_)
                    a.signal(SIGKILL);
                while (!workers_.empty() || helpers_running()) {
                    int status;
                    pid_t pid = waitpid(-1, &status, 0);
                    if (pid < 0)
                        break;
                    if (auto it = workers_.find(pid); it != workers_.end())
                        forget(it);
                    for (auto& a : aux_)
                        a.reaped(pid, status, now);
                }
                break;
            }
        }
        // Crash-loop guard: a burst of abnormal exits pauses spawning for a second.
        while (!crashes_.empty() && now - crashes_.front() > kCrashWindow)
            crashes_.pop_front();
        if (crashes_.size() >= size_t(kCrashLimit) && now >= spawn_blocked_until_) {
            log_warning("%zu workers failed within %lld s; pausing worker creation for 1 s",
                        crashes_.size(), (long long)std::chrono::duration_cast<std::chrono::seconds>(kCrashWindow).count());
            spawn_blocked_until_ = now + 1s;
            crashes_.clear();
        }
        perform(pool_.expire(now));
        prefill(now);
        publish_pools(now);
        replenish();
        trim_spares(now);
        keep_helpers(now);
        notify_status(false);
    }
    stop_listening();
    if (!cfg_.pidfile.empty())
        ::unlink(cfg_.pidfile.c_str());
    log_info("pgwicket stopped");
    return 0;
}

} // namespace

int run(const config::Config& cfg)
{
    Supervisor s(cfg);
    return s.run();
}

} // namespace pgw::supervisor
