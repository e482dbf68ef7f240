// Forks, restarts with a growing delay, and reaps the supervisor's helper processes.
#include "supervisor/aux_process.hh"

#include "common/log.hh"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace pgw::supervisor {

using namespace std::chrono_literals;

namespace {
constexpr auto kFirstDelay = 1s;
constexpr auto kLongestDelay = 30s;
// A helper that ran this long before ending starts again after the first delay.
constexpr auto kHealthyRun = 60s;
} // namespace

AuxProcess::AuxProcess(std::string name, Main main, Wanted wanted)
    : name_(std::move(name)), main_(std::move(main)), wanted_(std::move(wanted))
{
}

bool AuxProcess::start(const config::Config& cfg, const ipc::SessionTable& table,
                       const std::function<std::vector<int>()>& close_in_child, net::Clock::time_point now)
{
    if (!due(now))
        return true;
    pid_t pid = fork();
    if (pid < 0) {
        log_error("fork (%s): %s", name_.c_str(), std::strerror(errno));
        not_before_ = now + kFirstDelay;
        return false;
    }
    if (pid == 0) {
        for (int fd : close_in_child())
            ::close(fd);
        for (int s : {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGCHLD})
            ::signal(s, SIG_DFL);
        ::signal(SIGPIPE, SIG_IGN);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, nullptr);
        log::set_process_name(name_.c_str());
        log::set_prefix("");
        int code = 1;
        try {
            code = main_(cfg, table);
        } catch (const std::exception& e) {
            log_error("%s: %s", name_.c_str(), e.what());
        }
        _exit(code);
    }
    pid_ = pid;
    started_ = now;
    log_debug("%s started (pid %d)", name_.c_str(), int(pid));
    return true;
}

bool AuxProcess::reaped(pid_t pid, int status, net::Clock::time_point now)
{
    if (pid_ <= 0 || pid != pid_)
        return false;
    pid_ = 0;
    const bool failed = WIFSIGNALED(status) || WEXITSTATUS(status) != 0;
    const bool asked = WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM;
    if (asked || !failed)
        delay_ = 0s;
    else if (now - started_ >= kHealthyRun || delay_ == 0s)
        delay_ = kFirstDelay;
    else
        delay_ = std::min<std::chrono::seconds>(delay_ * 2, kLongestDelay);
    not_before_ = now + delay_;
    if (asked)
        log_debug("%s (pid %d) ended", name_.c_str(), int(pid));
    else if (WIFSIGNALED(status))
        log_warning("%s (pid %d) was killed by signal %d (%s); starting it again in %lld s", name_.c_str(),
                    int(pid), WTERMSIG(status), strsignal(WTERMSIG(status)), (long long)delay_.count());
    else if (failed)
        log_warning("%s (pid %d) exited with status %d; starting it again in %lld s", name_.c_str(), int(pid),
                    WEXITSTATUS(status), (long long)delay_.count());
    return true;
}

void AuxProcess::signal(int sig) const
{
    if (pid_ > 0)
        ::kill(pid_, sig);
}

net::Clock::time_point AuxProcess::next_start() const
{
    if (pid_ > 0 || !wanted_now_)
        return net::Clock::time_point::max();
    return not_before_;
}

} // namespace pgw::supervisor
