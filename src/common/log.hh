// Process-wide logging: stderr, a file, or journald; levels; format-checked.
// A session sets its prefix once (C-<id>: db/user@addr) and every line carries it.
#pragma once

#include <string>

namespace pgw::log {

enum class Level { Error = 0, Warning = 1, Info = 2, Debug = 3 };

enum class Sink { Stderr, File, Journal, Syslog };

struct Settings {
    Level level = Level::Info;
    std::string logfile;  // empty: no file
    bool syslog = false;
    std::string syslog_ident = "pgwicket";
    std::string syslog_facility = "daemon";
};

// Chooses the sink: syslog when asked, else the file, else journald when stderr
// is connected to the journal (JOURNAL_STREAM matches), else stderr. Calling it
// again (SIGHUP) reopens the file, so logrotate can move it away.
void setup(const Settings& settings);
void setup(Level level, const std::string& logfile);
Sink sink();
void set_level(Level level);
Level level();
bool parse_level(const std::string& text, Level& out);

// Attached to every later line of this process (workers set it per session).
void set_prefix(std::string prefix);
void set_process_name(std::string name);

void write(Level level, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

} // namespace pgw::log

#define PGW_LOG(lvl, ...)                                                \
    do {                                                                 \
        if (static_cast<int>(lvl) <= static_cast<int>(::pgw::log::level())) \
            ::pgw::log::write(lvl, __VA_ARGS__);                         \
    } while (0)
#define log_error(...) PGW_LOG(::pgw::log::Level::Error, __VA_ARGS__)
#define log_warning(...) PGW_LOG(::pgw::log::Level::Warning, __VA_ARGS__)
#define log_info(...) PGW_LOG(::pgw::log::Level::Info, __VA_ARGS__)
#define log_debug(...) PGW_LOG(::pgw::log::Level::Debug, __VA_ARGS__)
