// Supervisor event loop, spare workers, handoff, reaping and shutdown.
// It never reads a client byte and never creates threads, so fork() is always safe.
#include "supervisor/supervisor.hh"

#include "common/log.hh"
#include "common/net.hh"
#include "ipc/fdpass.hh"
#include "ipc/session_table.hh"
#include "session/exit_codes.hh"
#include "session/worker.hh"
#include "supervisor/listeners.hh"

#include <fcntl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <map>

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
constexpr auto kShutdownGrace = 10s;

constexpr std::uint64_t kSignalTag = ~std::uint64_t(0);

struct Worker {
    pid_t pid = 0;
    UniqueFd channel;  // valid while the worker is a spare waiting for work
    // Retired: the handoff to it failed; it is killed and waits to be reaped.
    enum class State { Spare, Busy, Refusing, Retired } state = State::Spare;
    std::uint64_t session_id = 0;
    std::uint32_t slot = ipc::kNoSlot;
    Clock::time_point since = Clock::now();
};

class Supervisor {
public:
    explicit Supervisor(const config::Config& cfg) : cfg_(cfg) {}
    int run();

private:
    Status setup();
    void accept_all(size_t listener_index);
    void dispatch(UniqueFd client, const sockaddr_storage& peer, socklen_t peer_len, ListenerKind kind);
    bool spawn_spare();
    void replenish();
    void on_signal();
    void reap();
    void stop_listening();
    void shutdown();
    std::vector<int> fds_to_close_in_child(int own_parent_end) const;
    size_t count(Worker::State s) const;

    const config::Config& cfg_;
    ipc::SessionTable table_;
    std::vector<std::uint32_t> free_slots_;  // a stack; the table's slots not in use
    std::vector<Listener> listeners_;
    UniqueFd epoll_, sigfd_;
    std::map<pid_t, Worker> workers_;
    std::deque<pid_t> spares_;
    std::uint64_t next_session_id_ = 1;
    bool stopping_ = false;
    std::deque<Clock::time_point> crashes_;
    Clock::time_point spawn_blocked_until_{};
};

size_t Supervisor::count(Worker::State s) const
{
    size_t n = 0;
    for (const auto& [pid, w] : workers_)
        n += w.state == s;
    return n;
}

Status Supervisor::setup()
{
    sigset_t mask;
    sigemptyset(&mask);
    // SIGUSR1 is for workers (routed cancels); the supervisor reads and ignores it.
    for (int s : {SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1})
        sigaddset(&mask, s);
    if (sigprocmask(SIG_BLOCK, &mask, nullptr) != 0)
        return Error{std::string("sigprocmask: ") + std::strerror(errno)};
    signal(SIGPIPE, SIG_IGN);
    sigfd_.reset(signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC));
    if (!sigfd_.valid())
        return Error{std::string("signalfd: ") + std::strerror(errno)};

    // Before the first fork, so every worker maps the same table.
    auto table = ipc::SessionTable::create(std::uint32_t(cfg_.max_client_conn), std::uint32_t(cfg_.peer_id));
    if (!table)
        return Error{table.error()};
    table_ = std::move(*table);
    for (std::uint32_t i = table_.capacity(); i-- > 0;)
        free_slots_.push_back(i);

    auto ls = open_listeners(cfg_);
    if (!ls)
        return Error{ls.error()};
    listeners_ = std::move(*ls);

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
        log_info("listening on %s", listeners_[i].name.c_str());
    }
    return ok_status();
}

std::vector<int> Supervisor::fds_to_close_in_child(int own_parent_end) const
{
    std::vector<int> fds = {epoll_.get(), sigfd_.get(), own_parent_end};
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
    std::vector<int> to_close = fds_to_close_in_child(parent_end.get());
    pid_t pid = fork();
    if (pid < 0) {
        log_error("fork: %s", std::strerror(errno));
        return false;
    }
    if (pid == 0)
        session::worker_main(cfg_, table_, child_end.release(), to_close);
    Worker w;
    w.pid = pid;
    w.channel = std::move(parent_end);
    workers_.emplace(pid, std::move(w));
    spares_.push_back(pid);
    return true;
}

void Supervisor::replenish()
{
    while (!stopping_ && spares_.size() < size_t(cfg_.spare_workers))
        if (!spawn_spare())
            break;
}

void Supervisor::dispatch(UniqueFd client, const sockaddr_storage& peer, socklen_t peer_len,
                          ListenerKind kind)
{
    ipc::Handoff h;
    h.listener_kind = std::uint32_t(kind);
    h.peer = peer;
    h.peer_len = peer_len;
    const bool refuse = count(Worker::State::Busy) >= size_t(cfg_.max_client_conn) || free_slots_.empty();
    if (refuse) {
        if (count(Worker::State::Refusing) >= kMaxRefusers) {
            log_warning("max_client_conn (%ld) reached and %zu refusals in progress: closing "
                        "connection from %s without a message",
                        cfg_.max_client_conn, kMaxRefusers, net::describe_peer(peer, peer_len).c_str());
            return;
        }
        h.type = ipc::HandoffType::Refuse;
    } else {
        h.session_id = next_session_id_++;
    }
    // A spare that died since it was forked fails the send; try the next one.
    for (int attempt = 0; attempt < 3; ++attempt) {
        if (spares_.empty() && !spawn_spare())
            break;
        pid_t pid = spares_.front();
        spares_.pop_front();
        Worker& w = workers_.at(pid);
        if (!refuse) {
            // The slot is the worker's from now until it is reaped.
            h.slot = free_slots_.back();
            free_slots_.pop_back();
            table_.claim(h.slot, pid, h.session_id);
            h.generation = ipc::generation_of(table_.slot(h.slot).gen_cancel.load());
            w.slot = h.slot;
        }
        auto st = ipc::send_handoff(w.channel.get(), h, client.get());
        w.channel.reset();
        if (!st) {
            log_warning("handoff to worker %d failed: %s", int(pid), st.error().c_str());
            // Its slot is freed when it is reaped.
            w.state = Worker::State::Retired;
            ::kill(pid, SIGKILL);
            h.slot = ipc::kNoSlot;
            continue;
        }
        w.state = refuse ? Worker::State::Refusing : Worker::State::Busy;
        w.session_id = h.session_id;
        w.since = Clock::now();
        log_debug("C-%llu: %s handed to worker %d", (unsigned long long)h.session_id,
                  net::describe_peer(peer, peer_len).c_str(), int(pid));
        return;
    }
    log_error("no worker could take the connection from %s; closing it",
              net::describe_peer(peer, peer_len).c_str());
}

void Supervisor::accept_all(size_t index)
{
    Listener& l = listeners_[index];
    for (;;) {
        sockaddr_storage peer{};
        socklen_t len = sizeof peer;
        int fd = accept4(l.fd.get(), reinterpret_cast<sockaddr*>(&peer), &len, SOCK_CLOEXEC);
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
        auto it = workers_.find(pid);
        if (it == workers_.end())
            continue;
        Worker& w = it->second;
        double secs = std::chrono::duration<double>(Clock::now() - w.since).count();
        const char* role = w.state == Worker::State::Busy       ? "session"
                           : w.state == Worker::State::Refusing ? "refusal"
                           : w.state == Worker::State::Retired  ? "failed handoff"
                                                                : "spare";
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
        workers_.erase(it);
    }
}

void Supervisor::stop_listening()
{
    for (auto& l : listeners_) {
        epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, l.fd.get(), nullptr);
        if (!l.unix_path.empty())
            ::unlink(l.unix_path.c_str());
    }
    listeners_.clear();
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
        case SIGINT:
        case SIGQUIT:
            if (!stopping_)
                log_info("received %s: shutting down", strsignal(int(si.ssi_signo)));
            stopping_ = true;
            break;
        case SIGHUP:
            // Reload arrives with the operations issue; until then say so.
            log_warning("received SIGHUP: configuration reload is not implemented yet; ignored");
            break;
        default:
            break;
        }
    }
}

void Supervisor::shutdown()
{
    sd_notify(0, "STOPPING=1");
    stop_listening();
    // Spares exit when their channel closes; sessions get SIGTERM and send 57P01.
    for (auto& [pid, w] : workers_) {
        w.channel.reset();
        if (w.state != Worker::State::Spare)
            ::kill(pid, SIGTERM);
    }
    spares_.clear();
    const auto deadline = Clock::now() + kShutdownGrace;
    while (!workers_.empty() && Clock::now() < deadline) {
        epoll_event ev;
        int n = epoll_wait(epoll_.get(), &ev, 1, net::ms_until(deadline));
        if (n > 0 && ev.data.u64 == kSignalTag) {
            signalfd_siginfo si;
            while (::read(sigfd_.get(), &si, sizeof si) == sizeof si)
                if (si.ssi_signo == SIGCHLD)
                    reap();
        }
    }
    for (auto& [pid, w] : workers_) {
        log_warning("worker %d did not stop within %lld s; killing it", int(pid),
                    (long long)std::chrono::duration_cast<std::chrono::seconds>(kShutdownGrace).count());
        ::kill(pid, SIGKILL);
    }
    while (!workers_.empty()) {
        int status;
        pid_t pid = waitpid(-1, &status, 0);
        if (pid < 0)
            break;
        workers_.erase(pid);
    }
    if (!cfg_.pidfile.empty())
        ::unlink(cfg_.pidfile.c_str());
    log_info("pgwicket stopped");
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
    log_info("pgwicket %s ready: %zu spare workers, max_client_conn %ld", PGWICKET_VERSION,
             spares_.size(), cfg_.max_client_conn);
    sd_notify(0, "READY=1");

    while (!stopping_) {
        epoll_event events[16];
        int n = epoll_wait(epoll_.get(), events, 16, 1000);
        if (n < 0 && errno != EINTR) {
            log_error("epoll_wait: %s", std::strerror(errno));
            break;
        }
        for (int i = 0; i < n; ++i) {
            if (events[i].data.u64 == kSignalTag)
                on_signal();
            else if (!stopping_ && events[i].data.u64 < listeners_.size())
                accept_all(size_t(events[i].data.u64));
        }
        // Crash-loop guard: a burst of abnormal exits pauses spawning for a second.
        while (!crashes_.empty() && Clock::now() - crashes_.front() > kCrashWindow)
            crashes_.pop_front();
        if (crashes_.size() >= size_t(kCrashLimit) && Clock::now() >= spawn_blocked_until_) {
            log_warning("%zu workers failed within %lld s; pausing worker creation for 1 s",
                        crashes_.size(), (long long)std::chrono::duration_cast<std::chrono::seconds>(kCrashWindow).count());
            spawn_blocked_until_ = Clock::now() + 1s;
            crashes_.clear();
        }
        replenish();
    }
    shutdown();
    return 0;
}

} // namespace

int run(const config::Config& cfg)
{
    Supervisor s(cfg);
    return s.run();
}

} // namespace pgw::supervisor
