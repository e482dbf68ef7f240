// Integration-test harness: one throwaway PostgreSQL 15 cluster and real pgwicket processes
// for the whole test binary, plus runners for psql/pgbench, libpq and raw protocol sockets.
#pragma once

#include <libpq-fe.h>
#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pgw::it {

// ---- processes ---------------------------------------------------------------------------------

// Environment changes for a child: a value sets the variable, nullopt removes it.
using EnvOverrides = std::vector<std::pair<std::string, std::optional<std::string>>>;

struct RunOptions {
    std::string input;  // written to stdin, then stdin is closed (pty: left open)
    EnvOverrides env;
    int timeout_s = 120;  // the whole process group is killed after this
    bool pty = false;     // stdin/stdout/stderr on a pseudo-terminal (no echo, no \r\n)
};

struct RunResult {
    std::string out;     // stdout and stderr through one pipe, in the order written
    int exit_code = -1;  // -1 when killed by a signal
    int signal = 0;
    bool timed_out = false;
    bool ok() const { return exit_code == 0 && !timed_out; }
    // "exit 3", "signal 9", "timed out": for assertion messages.
    std::string status() const;
};

RunResult run(const std::vector<std::string>& argv, const RunOptions& opts = {});
RunResult run_shell(const std::string& command, const RunOptions& opts = {});

// When root, prefix argv so it runs as the postgres system user (PostgreSQL refuses root).
std::vector<std::string> as_server_user(std::vector<std::string> argv);

int free_port();
// True when something accepts a TCP connection on 127.0.0.1:port.
bool tcp_accepts(int port);
// `curl -sS --max-time 10` with "\nHTTP <code>\n" after the body.
RunResult http_get(const std::string& url);
// The value of one series (name and labels, as printed) in a Prometheus text body, or -1.
double metric(const std::string& body, const std::string& series);
std::string read_file(const std::string& path);
void write_file(const std::string& path, const std::string& text);
std::string tail(const std::string& text, size_t lines);
// At most max bytes of text (head and tail), so a failure message stays readable.
std::string excerpt(const std::string& text, size_t max = 3000);
// A unified diff of two texts, capped at max_lines, for failure messages.
std::string diff(const std::string& a, const std::string& b, size_t max_lines = 80,
                 const std::string& label_a = "direct", const std::string& label_b = "proxied");
std::string sha256_hex(const std::string& data);

// ---- pgwicket --------------------------------------------------------------------------------

struct ProxyOptions {
    int max_client_conn = 100;
    int spare_workers = 2;
    bool wildcard = true;         // include the '*' fallback entry
    std::string extra_databases;  // more lines for [databases]
    std::string extra_settings;   // more lines for [pgwicket]
    std::string extra_sections;   // appended after [databases]: more sections, e.g. [peers]
    int port = 0;                 // listen_port; 0 picks a free one (set it to know it early)
    int shutdown_timeout = 3;     // short, so stop() with sessions still open ends in time
    EnvOverrides env;             // for the pgwicket process
    // Run pgwicket through this program (argv prefix), e.g. systemd-socket-activate.
    std::vector<std::string> launcher;
};

// A background process with stdout and stderr appended to a log file; SIGTERM, then SIGKILL
// after 10 s, when destroyed.
class Daemon {
public:
    Daemon(const std::vector<std::string>& argv, const std::string& log_path, const EnvOverrides& env = {});
    ~Daemon();
    Daemon(const Daemon&) = delete;
    Daemon& operator=(const Daemon&) = delete;

    pid_t pid() const { return pid_; }
    bool running();
    // SIGTERM and wait up to 10 s: "exit 0", "signal 9", "had already ended: exit 1",
    // "still running after 10 s: killed" (its children killed too).
    std::string stop();
    std::string log_tail(size_t lines = 40) const;

private:
    std::string log_path_;
    pid_t pid_ = -1;
    std::optional<int> wait_status_;
};

// One running pgwicket supervisor with a generated config; stopped (SIGTERM, then SIGKILL
// after 10 s) when destroyed, so a failing test never leaves one behind.
class Proxy {
public:
    Proxy(const std::string& name, const ProxyOptions& opts);
    ~Proxy();
    Proxy(const Proxy&) = delete;
    Proxy& operator=(const Proxy&) = delete;

    int port() const { return port_; }
    pid_t pid() const { return process_ ? process_->pid() : -1; }
    const std::string& unix_dir() const { return unix_dir_; }
    const std::string& config_path() const { return config_path_; }
    const std::string& log_path() const { return log_path_; }
    std::string log_tail(size_t lines = 40) const;
    // Lines of the log (from byte `from` on) where a sanitizer (ASan, LSan, UBSan) reported
    // something, a worker died of a signal other than SIGTERM, or hit an internal error: a
    // client never sees a worker crash, so the tests look for them here.
    std::string crash_findings(size_t from = 0) const;
    size_t log_size() const;
    bool running();

    // SIGTERM and wait up to 10 s. Returns "exit 0" when it shut down cleanly, otherwise
    // how it ended ("exit 1", "signal 11", "still running after 10 s: killed").
    std::string stop();

    // libpq connection string through this proxy over TCP.
    std::string conninfo(const std::string& db = "postgres", const std::string& user = "postgres",
                         const std::string& extra = "") const;

private:
    std::string name_;
    std::string config_path_;
    std::string log_path_;
    std::string unix_dir_;
    int port_ = 0;
    std::optional<Daemon> process_;
};

// Boost.Test checks: SIGTERM ends `p` with exit 0 within 10 s, and its log has no crash
// findings.
void check_clean_stop(Proxy& p);
// The same, except for "killed by signal 9" lines of the workers (and helper processes)
// the test killed itself.
void check_stop_allowing(Proxy& p, const std::vector<pid_t>& expected_kills);

// ---- the shared environment ------------------------------------------------------------------

struct Env {
    std::string tmpdir;  // everything of this run lives here
    std::string datadir;
    std::string bindir;  // PG_BINDIR: initdb, pg_ctl, psql, pgbench
    std::string pgwicket_bin;
    std::string top_srcdir;
    std::string pg_log;
    int pg_port = 0;
    int dead_port = 0;       // a port nothing listens on (for unreachable upstreams)
    Proxy* proxy = nullptr;  // the shared pgwicket (see ProxyOptions defaults + entries below)

    // Direct connection to the cluster over TCP, TLS off unless `extra` says otherwise.
    std::string direct(const std::string& db = "postgres", const std::string& user = "postgres",
                       const std::string& extra = "") const;
    std::string proxied(const std::string& db = "postgres", const std::string& user = "postgres",
                        const std::string& extra = "") const
    {
        return proxy->conninfo(db, user, extra);
    }
    std::string bin(const std::string& tool) const { return bindir + "/" + tool; }
    // The [databases] lines every proxy of this run gets besides '*':
    //   tlsdb       -> postgres over TLS (sslmode=require)
    //   asalice     -> postgres, upstream user forced to alice
    //   unreachable -> dead_port, with a password that must never be echoed
    std::string standard_databases() const;
};

Env& env();

constexpr const char* kAppName = "pgwicket-it";
constexpr const char* kUnreachablePassword = "hunter2-must-not-leak";

// ---- psql and friends ------------------------------------------------------------------------

// The environment for client tools: nothing inherited from the caller's PG* variables,
// a fixed application_name and locale so direct and proxied runs see the same thing.
EnvOverrides client_env(EnvOverrides extra = {});

struct PsqlOptions {
    std::vector<std::string> args;  // more psql arguments (before -f -)
    EnvOverrides env;
    bool interactive = false;  // on a pty, so prompts (%x) are printed; script is typed in
    int timeout_s = 120;
};

// `psql -X -q -v ON_ERROR_STOP=0 -d CONNINFO -f -` with the script on stdin.
RunResult psql(const std::string& conninfo, const std::string& script, const PsqlOptions& o = {});

// Runs `script` once directly and once through the shared proxy (same db and user) and
// checks exit code and output are identical, printing a diff when not. Returns the
// proxied result.
RunResult check_same_psql(const std::string& what, const std::string& script,
                          const std::string& db = "postgres", const std::string& user = "postgres",
                          const PsqlOptions& o = {});

// Boost.Test check that two runs are identical (output and exit), with a diff on mismatch.
void check_same_output(const std::string& what, const RunResult& direct, const RunResult& proxied);

// ---- libpq -----------------------------------------------------------------------------------

struct PGconnDeleter {
    void operator()(PGconn* c) const { PQfinish(c); }
};
struct PGresultDeleter {
    void operator()(PGresult* r) const { PQclear(r); }
};
using Conn = std::unique_ptr<PGconn, PGconnDeleter>;
using Result = std::unique_ptr<PGresult, PGresultDeleter>;

// Never null; check PQstatus.
Conn connect(const std::string& conninfo);
// Connects or throws std::runtime_error with libpq's message.
Conn connect_ok(const std::string& conninfo);
// First column of the first row; throws with the error message when the query fails.
std::string scalar(PGconn* c, const std::string& sql);
// Runs sql directly as postgres on db (setup/inspection helper); throws on error.
std::string direct_scalar(const std::string& sql, const std::string& db = "postgres");
// Whether a backend of that pid is still in pg_stat_activity (direct connection).
bool backend_alive(const std::string& pid);
void direct_exec(const std::string& sql, const std::string& db = "postgres");
// SHOW SERVERS through the proxy's admin console (as postgres): each row as column name ->
// value.
std::vector<std::map<std::string, std::string>> server_rows(Proxy& p);

// ---- raw protocol ----------------------------------------------------------------------------

struct Message {
    char type = 0;
    std::string payload;  // without type byte and length
};

// Fields of an ErrorResponse/NoticeResponse payload, keyed by field code ('C', 'M', 'S', ...).
std::map<char, std::string> error_fields(const std::string& payload);

std::string be32(uint32_t v);
std::string startup_packet(const std::vector<std::pair<std::string, std::string>>& params,
                           uint32_t version = 196608);
std::string ssl_request();
std::string gssenc_request();
std::string query_message(const std::string& sql);
std::string terminate_message();

// A blocking TCP client socket with read timeouts, for talking pgwire by hand.
class RawSocket {
public:
    explicit RawSocket(int port, const std::string& host = "127.0.0.1");
    ~RawSocket();
    RawSocket(const RawSocket&) = delete;
    RawSocket& operator=(const RawSocket&) = delete;

    bool send(std::string_view bytes);  // false when the peer is gone
    void shutdown_write();
    void close();
    // Exactly n bytes, or fewer on EOF/timeout.
    std::string read_exact(size_t n, int timeout_ms = 10000);
    // One backend message; nullopt on EOF, error or timeout (see eof()).
    std::optional<Message> read_message(int timeout_ms = 10000);
    // Reads and discards until the peer closes; false when it is still open after timeout_ms.
    bool wait_closed(int timeout_ms = 10000);
    // Messages until ReadyForQuery ('Z') or an ErrorResponse; returns all read.
    std::vector<Message> read_until_ready(int timeout_ms = 10000);
    bool eof() const { return eof_; }
    int fd() const { return fd_; }

private:
    int fd_ = -1;
    bool eof_ = false;
};

// ---- processes of a pgwicket -----------------------------------------------------------------

std::vector<pid_t> children_of(pid_t parent);
// The child of `supervisor` holding the server end of our TCP connection `client_fd`
// (found through /proc/net/tcp and the children's fd tables), or -1.
pid_t worker_serving(int client_fd, int proxy_port, pid_t supervisor);
// The child of `supervisor` holding a TCP socket from local_port to remote_port, or -1.
pid_t child_with_socket(pid_t supervisor, unsigned local_port, unsigned remote_port);
// Running (not a zombie).
bool process_alive(pid_t pid);
// VmHWM (peak resident set) of a process in KiB, or -1 when it is gone.
long vm_hwm_kib(pid_t pid);

// Polls pred every 50 ms until it returns true or timeout_ms passes.
template <typename Pred> bool wait_for(Pred pred, int timeout_ms = 10000);

void sleep_ms(int ms);

template <typename Pred> bool wait_for(Pred pred, int timeout_ms)
{
    for (int waited = 0;; waited += 50) {
        if (pred())
            return true;
        if (waited >= timeout_ms)
            return false;
        sleep_ms(50);
    }
}

// Small text and wire helpers shared by the test files.
bool contains(const std::string& haystack, const std::string& needle);
// The big-endian 32-bit value at byte `at` of s.
uint32_t get32(const std::string& s, size_t at);
// ErrorResponse fields as "C=... M=... " for failure messages.
std::string fields_text(const std::map<char, std::string>& f);

}  // namespace pgw::it
