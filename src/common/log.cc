// Log sinks and line formatting.
// Lines are built whole in a buffer and written with one write(2) so workers never interleave.
#include "common/log.hh"

#include <fcntl.h>
#include <sys/stat.h>
#include <syslog.h>
#include <systemd/sd-journal.h>
#include <pthread.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>

namespace pgw::log {
namespace {

// Per-process logging state. It is written once at start-up (or once per
// session in a worker) and only read afterwards.
struct State {
    Level level = Level::Info;
    Sink sink = Sink::Stderr;
    int fd = STDERR_FILENO;
    std::string prefix;
    std::string process = "pgwicket";
    std::string syslog_ident;  // openlog() keeps the pointer
};

State& state()
{
    static State s;
    return s;
}

// The pid in every line, asked of the kernel once per process: a fork (the supervisor's
// workers, a worker's cancel children) forgets it in the child.
pid_t cached_pid = 0;
void forget_pid() { cached_pid = 0; }
pid_t my_pid()
{
    static const bool registered = pthread_atfork(nullptr, nullptr, forget_pid) == 0;
    (void)registered;
    if (cached_pid == 0)
        cached_pid = getpid();
    return cached_pid;
}

bool stderr_is_journal()
{
    const char* js = std::getenv("JOURNAL_STREAM");
    if (!js)
        return false;
    unsigned long dev = 0, ino = 0;
    if (std::sscanf(js, "%lu:%lu", &dev, &ino) != 2)
        return false;
    struct stat st {};
    if (fstat(STDERR_FILENO, &st) != 0)
        return false;
    return st.st_dev == dev && st.st_ino == ino;
}

const char* level_name(Level l)
{
    switch (l) {
    case Level::Error:
        return "ERROR";
    case Level::Warning:
        return "WARNING";
    case Level::Info:
        return "LOG";
    case Level::Debug:
        return "DEBUG";
    }
    return "LOG";
}

int syslog_priority(Level l)
{
    switch (l) {
    case Level::Error:
        return LOG_ERR;
    case Level::Warning:
        return LOG_WARNING;
    case Level::Info:
        return LOG_INFO;
    case Level::Debug:
        return LOG_DEBUG;
    }
    return LOG_INFO;
}

int facility_code(const std::string& name)
{
    static const struct {
        const char* name;
        int code;
    } names[] = {{"daemon", LOG_DAEMON}, {"user", LOG_USER},     {"local0", LOG_LOCAL0},
                 {"local1", LOG_LOCAL1}, {"local2", LOG_LOCAL2}, {"local3", LOG_LOCAL3},
                 {"local4", LOG_LOCAL4}, {"local5", LOG_LOCAL5}, {"local6", LOG_LOCAL6},
                 {"local7", LOG_LOCAL7}};
    for (const auto& n : names)
        if (name == n.name)
            return n.code;
    return LOG_DAEMON;
}

} // namespace

void setup(const Settings& settings)
{
    State& s = state();
    s.level = settings.level;
    const Sink before = s.sink;
    int old_fd = s.fd;
    s.sink = Sink::Stderr;
    s.fd = STDERR_FILENO;
    std::string file_error;
    if (!settings.logfile.empty()) {
        int fd = ::open(settings.logfile.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
        if (fd >= 0) {
            s.fd = fd;
            s.sink = Sink::File;
        } else {
            file_error = std::strerror(errno);
        }
    }
    if (old_fd != STDERR_FILENO && old_fd != s.fd)
        ::close(old_fd);
    if (before == Sink::Syslog && !settings.syslog)
        closelog();
    if (settings.syslog) {
        s.syslog_ident = settings.syslog_ident;
        openlog(s.syslog_ident.c_str(), LOG_PID | LOG_NDELAY, facility_code(settings.syslog_facility));
        s.sink = Sink::Syslog;
    } else if (s.sink == Sink::Stderr && stderr_is_journal()) {
        s.sink = Sink::Journal;
    }
    if (!file_error.empty())
        write(Level::Warning, "could not open logfile \"%s\": %s; logging to %s",
              settings.logfile.c_str(), file_error.c_str(),
              s.sink == Sink::Syslog ? "syslog" : s.sink == Sink::Journal ? "journald" : "stderr");
}

void setup(Level lvl, const std::string& logfile)
{
    Settings st;
    st.level = lvl;
    st.logfile = logfile;
    setup(st);
}

Sink sink() { return state().sink; }

void set_level(Level lvl) { state().level = lvl; }
Level level() { return state().level; }

bool parse_level(const std::string& text, Level& out)
{
    static const struct {
        const char* name;
        Level level;
    } names[] = {{"error", Level::Error}, {"warning", Level::Warning},
                 {"info", Level::Info}, {"debug", Level::Debug}};
    for (const auto& n : names)
        if (text == n.name) {
            out = n.level;
            return true;
        }
    return false;
}

void set_prefix(std::string prefix) { state().prefix = std::move(prefix); }
void set_process_name(std::string name) { state().process = std::move(name); }

void write(Level lvl, const char* fmt, ...)
{
    const int saved_errno = errno;
    State& s = state();
    char body[2048];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);

    if (s.sink == Sink::Syslog) {
        // With syslog and a logfile both set, the file gets every line too.
        ::syslog(syslog_priority(lvl), "%s: %s%s%s", s.process.c_str(), s.prefix.c_str(),
                 s.prefix.empty() ? "" : " ", body);
        if (s.fd == STDERR_FILENO) {
            errno = saved_errno;
            return;
        }
    } else if (s.sink == Sink::Journal) {
        sd_journal_send("MESSAGE=%s%s%s", s.prefix.c_str(), s.prefix.empty() ? "" : " ", body,
                        "PRIORITY=%d", syslog_priority(lvl), "SYSLOG_IDENTIFIER=pgwicket",
                        "PGWICKET_PROCESS=%s", s.process.c_str(), nullptr);
        errno = saved_errno;
        return;
    }

    char stamp[64];
    struct timespec ts {};
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm {};
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = std::strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", &tm);
    std::snprintf(stamp + n, sizeof stamp - n, ".%03ld UTC", ts.tv_nsec / 1000000);

    char line[2400];
    int len = std::snprintf(line, sizeof line, "%s [%d] %s %s: %s%s%s\n", stamp, (int)my_pid(),
                            s.process.c_str(), level_name(lvl), s.prefix.c_str(),
                            s.prefix.empty() ? "" : " ", body);
    if (len < 0)
        return;
    if ((size_t)len >= sizeof line) {
        len = sizeof line - 1;
        line[len - 1] = '\n';
    }
    ssize_t rc = ::write(s.fd, line, (size_t)len);
    (void)rc;
    errno = saved_errno;
}

} // namespace pgw::log
