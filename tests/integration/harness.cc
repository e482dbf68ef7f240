// The harness behind harness.hh: process running, the cluster's life cycle (initdb, TLS
// certificate, pg_ctl), pgwicket's life cycle, and the Boost.Test global fixture that owns both.
#include "harness.hh"

#include <boost/test/tree/observer.hpp>
#include <boost/test/unit_test.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <poll.h>
#include <pty.h>
#include <pwd.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>

extern char** environ;

namespace fs = std::filesystem;

namespace pgw::it {

// ---- small utilities -------------------------------------------------------------------------

void sleep_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

std::string RunResult::status() const
{
    if (timed_out)
        return "timed out";
    if (signal)
        return "signal " + std::to_string(signal);
    return "exit " + std::to_string(exit_code);
}

std::string read_file(const std::string& path)
{
    std::ifstream in(path, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

void write_file(const std::string& path, const std::string& text)
{
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << text;
    if (!out)
        throw std::runtime_error("cannot write " + path);
}

std::string tail(const std::string& text, size_t lines)
{
    size_t pos = text.size();
    if (pos && text[pos - 1] == '\n')
        --pos;
    while (lines-- && pos != std::string::npos && pos > 0) {
        pos = text.rfind('\n', pos - 1);
        if (pos == std::string::npos)
            return text;
    }
    return pos == std::string::npos || pos == 0 ? text : text.substr(pos + 1);
}

std::string excerpt(const std::string& text, size_t max)
{
    if (text.size() <= max)
        return text;
    return text.substr(0, max / 2) + "\n... (" + std::to_string(text.size() - max) +
           " bytes left out) ...\n" + text.substr(text.size() - max / 2);
}

std::string sha256_hex(const std::string& data)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
    static const char* hex = "0123456789abcdef";
    std::string out;
    for (unsigned i = 0; i < len; ++i) {
        out += hex[md[i] >> 4];
        out += hex[md[i] & 15];
    }
    return out;
}

static int bound_free_port()
{
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        throw std::runtime_error("socket: " + std::string(strerror(errno)));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    socklen_t len = sizeof a;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
        ::close(fd);
        throw std::runtime_error("bind: " + std::string(strerror(errno)));
    }
    ::close(fd);
    return ntohs(a.sin_port);
}

int free_port()
{
    // Never hand out a port twice: the "unreachable" route's port must stay dead even when a
    // later pgwicket asks for a port.
    static std::set<int> given;
    for (;;) {
        int port = bound_free_port();
        if (given.insert(port).second)
            return port;
    }
}

bool tcp_accepts(int port)
{
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<uint16_t>(port));
    bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    ::close(fd);
    return ok;
}

RunResult http_get(const std::string& url)
{
    return run({"curl", "-sS", "--max-time", "10", "-w", "\nHTTP %{http_code}\n", url});
}

double metric(const std::string& body, const std::string& series)
{
    size_t at = body.find("\n" + series + " ");
    if (at == std::string::npos)
        return -1;
    return std::stod(body.substr(at + series.size() + 2));
}

// ---- running commands ------------------------------------------------------------------------

static std::vector<std::string> build_env(const EnvOverrides& ov)
{
    std::map<std::string, std::string> m;
    for (char** e = environ; *e; ++e) {
        std::string_view kv(*e);
        size_t eq = kv.find('=');
        if (eq != std::string_view::npos)
            m[std::string(kv.substr(0, eq))] = std::string(kv.substr(eq + 1));
    }
    for (const auto& [k, v] : ov) {
        if (v)
            m[k] = *v;
        else
            m.erase(k);
    }
    std::vector<std::string> out;
    for (const auto& [k, v] : m)
        out.push_back(k + "=" + v);
    return out;
}

static std::vector<char*> c_strings(std::vector<std::string>& v)
{
    std::vector<char*> out;
    for (auto& s : v)
        out.push_back(s.data());
    out.push_back(nullptr);
    return out;
}

[[noreturn]] static void exec_child(std::vector<std::string> argv, std::vector<std::string> envs)
{
    // The child must not inherit our blocked signals or ignored SIGPIPE.
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    signal(SIGPIPE, SIG_DFL);
    auto a = c_strings(argv);
    auto e = c_strings(envs);
    execvpe(a[0], a.data(), e.data());
    std::string msg = "exec " + argv[0] + ": " + strerror(errno) + "\n";
    (void)!::write(2, msg.data(), msg.size());
    _exit(127);
}

RunResult run(const std::vector<std::string>& argv, const RunOptions& opts)
{
    if (argv.empty())
        throw std::invalid_argument("run: empty argv");
    auto envs = build_env(opts.env);
    RunResult r;
    int io = -1;     // parent's end: write stdin / read output (pty: the same fd)
    int in_fd = -1;  // pipe mode: stdin's write end
    pid_t pid;
    if (opts.pty) {
        termios t{};
        t.c_iflag = ICRNL;
        t.c_oflag = 0;  // no OPOST: output bytes arrive as written, without \r\n
        t.c_cflag = CS8 | CREAD;
        t.c_lflag = ICANON | ISIG;  // no ECHO: only the program's output is captured
        t.c_cc[VEOF] = 4;
        t.c_cc[VINTR] = 3;
        t.c_cc[VMIN] = 1;
        cfsetispeed(&t, B38400);
        cfsetospeed(&t, B38400);
        winsize ws{};
        ws.ws_row = 50;
        ws.ws_col = 200;
        pid = forkpty(&io, nullptr, &t, &ws);
        if (pid < 0)
            throw std::runtime_error("forkpty: " + std::string(strerror(errno)));
        if (pid == 0)
            exec_child(argv, envs);
        in_fd = io;
    } else {
        int inp[2], outp[2];
        if (pipe2(inp, O_CLOEXEC) != 0 || pipe2(outp, O_CLOEXEC) != 0)
            throw std::runtime_error("pipe: " + std::string(strerror(errno)));
        pid = fork();
        if (pid < 0)
            throw std::runtime_error("fork: " + std::string(strerror(errno)));
        if (pid == 0) {
            setpgid(0, 0);  // so a timeout can kill everything it started
            dup2(inp[0], 0);
            dup2(outp[1], 1);
            dup2(outp[1], 2);
            exec_child(argv, envs);
        }
        setpgid(pid, pid);
        ::close(inp[0]);
        ::close(outp[1]);
        in_fd = inp[1];
        io = outp[0];
    }
    fcntl(in_fd, F_SETFL, fcntl(in_fd, F_GETFL) | O_NONBLOCK);
    fcntl(io, F_SETFL, fcntl(io, F_GETFL) | O_NONBLOCK);
    size_t written = 0;
    if (!opts.pty && opts.input.empty()) {
        ::close(in_fd);
        in_fd = -1;
    }
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(opts.timeout_s);
    std::optional<std::chrono::steady_clock::time_point> exited_at;
    int wstatus = 0;
    bool reaped = false;
    bool out_open = true;
    char buf[65536];
    while (out_open) {
        if (!reaped && waitpid(pid, &wstatus, WNOHANG) == pid) {
            reaped = true;
            exited_at = std::chrono::steady_clock::now();
        }
        // A daemon started by the child may keep the pipe open; stop reading soon after.
        if (exited_at && std::chrono::steady_clock::now() - *exited_at > std::chrono::seconds(2))
            break;
        if (std::chrono::steady_clock::now() > deadline) {
            kill(-pid, SIGKILL);
            kill(pid, SIGKILL);
            r.timed_out = true;
            break;
        }
        pollfd p[2];
        int n = 0;
        p[n++] = {io, POLLIN, 0};
        bool want_write = in_fd >= 0 && written < opts.input.size();
        if (want_write && in_fd != io)
            p[n++] = {in_fd, POLLOUT, 0};
        else if (want_write)
            p[0].events |= POLLOUT;
        int rc = ::poll(p, n, 50);
        if (rc < 0 && errno != EINTR)
            break;
        if (want_write) {
            ssize_t w = ::write(in_fd, opts.input.data() + written, opts.input.size() - written);
            if (w > 0)
                written += static_cast<size_t>(w);
            else if (w < 0 && errno != EAGAIN && errno != EINTR)
                written = opts.input.size();  // reader gone
            if (written == opts.input.size() && in_fd != io) {
                ::close(in_fd);
                in_fd = -1;
            }
        }
        for (;;) {
            ssize_t got = ::read(io, buf, sizeof buf);
            if (got > 0) {
                r.out.append(buf, static_cast<size_t>(got));
                continue;
            }
            if (got == 0 || (errno != EAGAIN && errno != EINTR))
                out_open = false;  // EOF, or EIO from a pty whose slave side is closed
            break;
        }
    }
    if (in_fd >= 0 && in_fd != io)
        ::close(in_fd);
    ::close(io);
    if (!reaped) {
        if (r.timed_out) {
            waitpid(pid, &wstatus, 0);
        } else {
            while (waitpid(pid, &wstatus, WNOHANG) == 0) {
                if (std::chrono::steady_clock::now() > deadline) {
                    kill(-pid, SIGKILL);
                    kill(pid, SIGKILL);
                    r.timed_out = true;
                    waitpid(pid, &wstatus, 0);
                    break;
                }
                sleep_ms(10);
            }
        }
    }
    if (WIFEXITED(wstatus))
        r.exit_code = WEXITSTATUS(wstatus);
    else if (WIFSIGNALED(wstatus))
        r.signal = WTERMSIG(wstatus);
    return r;
}

RunResult run_shell(const std::string& command, const RunOptions& opts)
{
    return run({"/bin/sh", "-c", command}, opts);
}

std::vector<std::string> as_server_user(std::vector<std::string> argv)
{
    if (geteuid() != 0)
        return argv;
    std::vector<std::string> out = {"runuser", "-u", "postgres", "--"};
    out.insert(out.end(), argv.begin(), argv.end());
    return out;
}

std::string diff(const std::string& a, const std::string& b, size_t max_lines,
                 const std::string& label_a, const std::string& label_b)
{
    static int counter = 0;
    std::string base = env().tmpdir + "/diff." + std::to_string(++counter);
    write_file(base + "." + label_a, a);
    write_file(base + "." + label_b, b);
    RunResult r = run({"diff", "-u", base + "." + label_a, base + "." + label_b});
    std::string out = r.out;
    std::istringstream in(out);
    std::string line, capped;
    size_t n = 0;
    while (std::getline(in, line)) {
        if (n++ == max_lines) {
            capped += "... (diff truncated; full texts in " + base + ".*)\n";
            break;
        }
        capped += line + "\n";
    }
    return capped;
}

// ---- client tools ----------------------------------------------------------------------------

EnvOverrides client_env(EnvOverrides extra)
{
    EnvOverrides e = {
        {"PGOPTIONS", std::nullopt},
        {"PGHOST", std::nullopt},
        {"PGHOSTADDR", std::nullopt},
        {"PGPORT", std::nullopt},
        {"PGDATABASE", std::nullopt},
        {"PGUSER", std::nullopt},
        {"PGPASSWORD", std::nullopt},
        {"PGSERVICE", std::nullopt},
        {"PGSSLMODE", std::nullopt},
        {"PGTZ", std::nullopt},
        {"PGDATESTYLE", std::nullopt},
        {"PGCLIENTENCODING", std::nullopt},
        {"PGCONNECT_TIMEOUT", std::nullopt},
        {"PGTARGETSESSIONATTRS", std::nullopt},
        {"PSQL_PAGER", std::nullopt},
        {"PAGER", std::nullopt},
        {"PSQLRC", std::nullopt},
        {"PGAPPNAME", kAppName},
        {"LC_ALL", "C.UTF-8"},
        {"LANG", "C.UTF-8"},
        {"COLUMNS", "200"},
    };
    e.insert(e.end(), extra.begin(), extra.end());
    return e;
}

RunResult psql(const std::string& conninfo, const std::string& script, const PsqlOptions& o)
{
    std::vector<std::string> argv = {env().bin("psql"), "-X", "-q",    "-v",
                                     "ON_ERROR_STOP=0", "-d", conninfo};
    argv.insert(argv.end(), o.args.begin(), o.args.end());
    RunOptions ro;
    ro.env = client_env(o.env);
    ro.timeout_s = o.timeout_s;
    if (o.interactive) {
        // -n: no readline, so only psql's prompts and results reach the pty.
        argv.insert(argv.end(), {"-n", "-P", "pager=off"});
        ro.pty = true;
        ro.input = script;
        if (ro.input.empty() || ro.input.back() != '\n')
            ro.input += '\n';
        ro.input += "\\q\n";
    } else {
        argv.insert(argv.end(), {"-f", "-"});
        ro.input = script;
    }
    return run(argv, ro);
}

void check_same_output(const std::string& what, const RunResult& direct, const RunResult& proxied)
{
    BOOST_TEST_INFO("case: " << what);
    BOOST_TEST(direct.status() == proxied.status());
    if (direct.out == proxied.out) {
        BOOST_TEST(true, what << ": identical output (" << direct.out.size() << " bytes)");
    } else {
        BOOST_ERROR(what << ": proxied output differs from direct (" << direct.out.size() << " vs "
                         << proxied.out.size() << " bytes):\n"
                         << diff(direct.out, proxied.out));
    }
}

RunResult check_same_psql(const std::string& what, const std::string& script, const std::string& db,
                          const std::string& user, const PsqlOptions& o)
{
    RunResult d = psql(env().direct(db, user), script, o);
    RunResult p = psql(env().proxied(db, user), script, o);
    check_same_output(what, d, p);
    return p;
}

// ---- libpq -----------------------------------------------------------------------------------

Conn connect(const std::string& conninfo)
{
    Conn c(PQconnectdb(conninfo.c_str()));
    if (!c)
        throw std::runtime_error("PQconnectdb: out of memory");
    // Setup chatter ("... does not exist, skipping") would drown the test log.
    PQsetNoticeProcessor(
        c.get(), [](void*, const char*) {}, nullptr);
    return c;
}

Conn connect_ok(const std::string& conninfo)
{
    Conn c = connect(conninfo);
    if (PQstatus(c.get()) != CONNECTION_OK)
        throw std::runtime_error("connect (" + conninfo + "): " + PQerrorMessage(c.get()));
    return c;
}

std::string scalar(PGconn* c, const std::string& sql)
{
    Result r(PQexec(c, sql.c_str()));
    auto st = PQresultStatus(r.get());
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK)
        throw std::runtime_error("query \"" + sql + "\" failed: " + PQerrorMessage(c));
    if (st == PGRES_COMMAND_OK || PQntuples(r.get()) == 0 || PQnfields(r.get()) == 0)
        return "";
    return PQgetvalue(r.get(), 0, 0);
}

std::vector<std::map<std::string, std::string>> server_rows(Proxy& p)
{
    Conn console = connect_ok(p.conninfo("pgwicket", "postgres"));
    Result r(PQexec(console.get(), "SHOW SERVERS"));
    BOOST_REQUIRE_MESSAGE(PQresultStatus(r.get()) == PGRES_TUPLES_OK, PQresultErrorMessage(r.get()));
    std::vector<std::map<std::string, std::string>> rows;
    for (int i = 0; i < PQntuples(r.get()); ++i) {
        auto& row = rows.emplace_back();
        for (int j = 0; j < PQnfields(r.get()); ++j)
            row[PQfname(r.get(), j)] = PQgetvalue(r.get(), i, j);
    }
    return rows;
}

std::string direct_scalar(const std::string& sql, const std::string& db)
{
    Conn c = connect_ok(env().direct(db));
    return scalar(c.get(), sql);
}

bool backend_alive(const std::string& pid)
{
    return direct_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = " + pid) == "1";
}

void direct_exec(const std::string& sql, const std::string& db) { (void)direct_scalar(sql, db); }

// ---- raw protocol ----------------------------------------------------------------------------

std::string be32(uint32_t v)
{
    std::string s(4, '\0');
    s[0] = static_cast<char>(v >> 24);
    s[1] = static_cast<char>(v >> 16);
    s[2] = static_cast<char>(v >> 8);
    s[3] = static_cast<char>(v);
    return s;
}

static uint32_t get32(const char* p)
{
    auto u = reinterpret_cast<const unsigned char*>(p);
    return (uint32_t{u[0]} << 24) | (uint32_t{u[1]} << 16) | (uint32_t{u[2]} << 8) | u[3];
}

std::string startup_packet(const std::vector<std::pair<std::string, std::string>>& params,
                           uint32_t version)
{
    std::string body = be32(version);
    for (const auto& [k, v] : params) {
        body += k;
        body += '\0';
        body += v;
        body += '\0';
    }
    body += '\0';
    return be32(static_cast<uint32_t>(body.size() + 4)) + body;
}

std::string ssl_request() { return be32(8) + be32(80877103); }
std::string gssenc_request() { return be32(8) + be32(80877104); }

std::string query_message(const std::string& sql)
{
    return "Q" + be32(static_cast<uint32_t>(sql.size() + 5)) + sql + std::string(1, '\0');
}

std::string terminate_message() { return "X" + be32(4); }

std::map<char, std::string> error_fields(const std::string& payload)
{
    std::map<char, std::string> f;
    size_t i = 0;
    while (i < payload.size() && payload[i] != '\0') {
        char code = payload[i++];
        size_t end = payload.find('\0', i);
        if (end == std::string::npos)
            break;
        f[code] = payload.substr(i, end - i);
        i = end + 1;
    }
    return f;
}

RawSocket::RawSocket(int port, const std::string& host)
{
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    inet_pton(AF_INET, host.c_str(), &a.sin_addr);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        int e = errno;
        ::close(fd_);
        throw std::runtime_error("connect to " + host + ":" + std::to_string(port) + ": " +
                                 strerror(e));
    }
}

RawSocket::~RawSocket() { close(); }

void RawSocket::close()
{
    if (fd_ >= 0)
        ::close(fd_);
    fd_ = -1;
}

bool RawSocket::send(std::string_view bytes)
{
    while (!bytes.empty()) {
        ssize_t w = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        bytes.remove_prefix(static_cast<size_t>(w));
    }
    return true;
}

void RawSocket::shutdown_write() { ::shutdown(fd_, SHUT_WR); }

std::string RawSocket::read_exact(size_t n, int timeout_ms)
{
    std::string out;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (out.size() < n && !eof_) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                        deadline - std::chrono::steady_clock::now())
                        .count();
        if (left <= 0)
            break;
        pollfd p{fd_, POLLIN, 0};
        int rc = ::poll(&p, 1, static_cast<int>(left));
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc <= 0)
            break;
        char buf[65536];
        ssize_t got = ::recv(fd_, buf, std::min(sizeof buf, n - out.size()), 0);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0) {
            eof_ = true;  // EOF or reset: either way the peer is gone
            break;
        }
        out.append(buf, static_cast<size_t>(got));
    }
    return out;
}

std::optional<Message> RawSocket::read_message(int timeout_ms)
{
    std::string head = read_exact(5, timeout_ms);
    if (head.size() < 5)
        return std::nullopt;
    uint32_t len = get32(head.data() + 1);
    if (len < 4 || len > (64u << 20))
        throw std::runtime_error("raw socket: implausible message length " + std::to_string(len));
    std::string body = read_exact(len - 4, timeout_ms);
    if (body.size() < len - 4)
        return std::nullopt;
    return Message{head[0], std::move(body)};
}

bool RawSocket::wait_closed(int timeout_ms)
{
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (!eof_ && std::chrono::steady_clock::now() < deadline)
        read_exact(1 << 16, 100);
    return eof_;
}

std::vector<Message> RawSocket::read_until_ready(int timeout_ms)
{
    std::vector<Message> out;
    while (auto m = read_message(timeout_ms)) {
        out.push_back(*m);
        if (m->type == 'Z' || m->type == 'E')
            break;
    }
    return out;
}

// ---- /proc -----------------------------------------------------------------------------------

std::vector<pid_t> children_of(pid_t parent)
{
    std::vector<pid_t> out;
    for (const auto& d : fs::directory_iterator("/proc")) {
        std::string name = d.path().filename();
        if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos)
            continue;
        std::string stat = read_file(d.path().string() + "/stat");
        size_t rp = stat.rfind(')');  // comm may contain spaces and parentheses
        if (rp == std::string::npos)
            continue;
        std::istringstream in(stat.substr(rp + 2));
        std::string state;
        long ppid = 0;
        in >> state >> ppid;
        if (ppid == parent && state != "Z")
            out.push_back(static_cast<pid_t>(std::stol(name)));
    }
    return out;
}

pid_t worker_serving(int client_fd, int proxy_port, pid_t supervisor)
{
    sockaddr_in me{};
    socklen_t len = sizeof me;
    if (getsockname(client_fd, reinterpret_cast<sockaddr*>(&me), &len) != 0)
        return -1;
    return child_with_socket(supervisor, unsigned(proxy_port), ntohs(me.sin_port));
}

pid_t child_with_socket(pid_t supervisor, unsigned local_port, unsigned remote_port)
{
    // Lines: "sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ..."
    std::istringstream tcp(read_file("/proc/net/tcp"));
    std::string line, inode;
    std::getline(tcp, line);
    while (std::getline(tcp, line)) {
        std::istringstream f(line);
        std::string sl, local, remote, st, q, tr, retr, uid, timeout, ino;
        f >> sl >> local >> remote >> st >> q >> tr >> retr >> uid >> timeout >> ino;
        auto port_of = [](const std::string& addr) {
            size_t colon = addr.find(':');
            return colon == std::string::npos
                       ? 0u
                       : static_cast<unsigned>(std::stoul(addr.substr(colon + 1), nullptr, 16));
        };
        if (port_of(local) == local_port && port_of(remote) == remote_port) {
            inode = ino;
            break;
        }
    }
    if (inode.empty() || inode == "0")
        return -1;
    const std::string target = "socket:[" + inode + "]";
    for (pid_t child : children_of(supervisor)) {
        std::error_code ec;
        for (const auto& fd :
             fs::directory_iterator("/proc/" + std::to_string(child) + "/fd", ec)) {
            std::error_code ec2;
            if (fs::read_symlink(fd.path(), ec2).string() == target)
                return child;
        }
    }
    return -1;
}

bool process_alive(pid_t pid)
{
    std::string stat = read_file("/proc/" + std::to_string(pid) + "/stat");
    size_t rp = stat.rfind(')');
    return rp != std::string::npos && rp + 2 < stat.size() && stat[rp + 2] != 'Z';
}

long vm_hwm_kib(pid_t pid)
{
    std::istringstream in(read_file("/proc/" + std::to_string(pid) + "/status"));
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("VmHWM:", 0) == 0)
            return std::stol(line.substr(6));
    return -1;
}

// ---- pgwicket --------------------------------------------------------------------------------

Daemon::Daemon(const std::vector<std::string>& argv, const std::string& log_path, const EnvOverrides& env)
    : log_path_(log_path)
{
    int logfd = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (logfd < 0)
        throw std::runtime_error("cannot open " + log_path_);
    auto envs = build_env(env);
    pid_t parent = getpid();
    pid_ = fork();
    if (pid_ < 0) {
        ::close(logfd);
        throw std::runtime_error("fork: " + std::string(strerror(errno)));
    }
    if (pid_ == 0) {
        // If the test binary dies, the process should not outlive it.
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent)
            _exit(1);
        int devnull = ::open("/dev/null", O_RDONLY);
        dup2(devnull, 0);
        dup2(logfd, 1);
        dup2(logfd, 2);
        exec_child(argv, envs);
    }
    ::close(logfd);
}

Daemon::~Daemon()
{
    if (pid_ > 0 && !wait_status_)
        (void)stop();
}

bool Daemon::running()
{
    if (wait_status_)
        return false;
    int st = 0;
    pid_t r = waitpid(pid_, &st, WNOHANG);
    if (r == pid_) {
        wait_status_ = st;
        return false;
    }
    return r == 0;
}

static std::string describe_status(int st)
{
    if (WIFEXITED(st))
        return "exit " + std::to_string(WEXITSTATUS(st));
    if (WIFSIGNALED(st))
        return "signal " + std::to_string(WTERMSIG(st));
    return "status " + std::to_string(st);
}

std::string Daemon::stop()
{
    if (pid_ <= 0)
        return "not started";
    if (wait_status_)
        return "had already ended: " + describe_status(*wait_status_);
    kill(pid_, SIGTERM);
    if (wait_for([&] { return !running(); }, 10000))
        return describe_status(*wait_status_);
    kill(pid_, SIGKILL);
    int st = 0;
    waitpid(pid_, &st, 0);
    wait_status_ = st;
    // Workers of a killed process would linger with our sockets; take them down too.
    for (pid_t child : children_of(pid_))
        kill(child, SIGKILL);
    return "still running after 10 s: killed";
}

std::string Daemon::log_tail(size_t lines) const { return tail(read_file(log_path_), lines); }

Proxy::Proxy(const std::string& name, const ProxyOptions& opts) : name_(name)
{
    Env& e = env();
    port_ = opts.port > 0 ? opts.port : free_port();
    unix_dir_ = e.tmpdir;
    config_path_ = e.tmpdir + "/" + name + ".ini";
    log_path_ = e.tmpdir + "/" + name + ".log";
    std::ostringstream ini;
    ini << "; generated by tests/integration/harness.cc\n"
        << "[pgwicket]\n"
        << "listen_addr = 127.0.0.1\n"
        << "listen_port = " << port_ << "\n"
        << "unix_socket_dir = " << unix_dir_ << "\n"
        << "max_client_conn = " << opts.max_client_conn << "\n"
        << "spare_workers = " << opts.spare_workers << "\n"
        << "client_login_timeout = 30\n"
        << "server_connect_timeout = 5\n"
        << "log_level = " << (std::getenv("PGWICKET_TEST_LOG_LEVEL") ? std::getenv("PGWICKET_TEST_LOG_LEVEL") : "info") << "\n"
        << "shutdown_timeout = " << opts.shutdown_timeout << "\n"
        << opts.extra_settings << "\n"
        << "[databases]\n";
    if (opts.wildcard)
        ini << "* = host=127.0.0.1 port=" << e.pg_port << " sslmode=disable\n";
    ini << e.standard_databases() << opts.extra_databases << "\n" << opts.extra_sections;
    write_file(config_path_, ini.str());

    std::vector<std::string> argv = opts.launcher;
    for (const std::string& a : {e.pgwicket_bin, std::string("-c"), config_path_})
        argv.push_back(a);
    // journald would swallow the log when started from a systemd unit; we want it in the file.
    EnvOverrides overrides = {{"JOURNAL_STREAM", std::nullopt},
                              {"NOTIFY_SOCKET", std::nullopt},
                              {"LISTEN_FDS", std::nullopt},
                              {"LISTEN_PID", std::nullopt}};
    overrides.insert(overrides.end(), opts.env.begin(), opts.env.end());
    process_.emplace(argv, log_path_, overrides);
    bool up = wait_for([&] { return !running() ? true : tcp_accepts(port_); }, 10000);
    if (!up || !running()) {
        std::string how = running() ? "does not accept connections after 10 s" : "exited";
        std::string st = stop();
        throw std::runtime_error("pgwicket " + name_ + " " + how + " (" + st + "); log tail:\n" +
                                 log_tail());
    }
}

Proxy::~Proxy() = default;

bool Proxy::running() { return process_ && process_->running(); }

std::string Proxy::stop() { return process_ ? process_->stop() : "not started"; }

std::string Proxy::log_tail(size_t lines) const { return tail(read_file(log_path_), lines); }

size_t Proxy::log_size() const
{
    std::error_code ec;
    auto n = fs::file_size(log_path_, ec);
    return ec ? 0 : static_cast<size_t>(n);
}

std::string Proxy::crash_findings(size_t from) const
{
    std::string log = read_file(log_path_);
    std::istringstream in(from < log.size() ? log.substr(from) : std::string());
    std::string line, out;
    auto has = [&](const char* what) { return line.find(what) != std::string::npos; };
    while (std::getline(in, line))
        if (has("AddressSanitizer") || has("LeakSanitizer") || has("runtime error:") ||
            (has("killed by signal") && !has("signal 15 ")) || has("internal error"))
            out += line + "\n";
    return out;
}

void check_stop_allowing(Proxy& p, const std::vector<pid_t>& expected_kills)
{
    std::string how = p.stop();
    BOOST_TEST(how == "exit 0", "pgwicket on SIGTERM: " << how << "; log tail:\n" << p.log_tail());
    std::istringstream in(p.crash_findings());
    std::string line, left;
    while (std::getline(in, line)) {
        bool expected = false;
        for (pid_t k : expected_kills)
            expected = expected || ((contains(line, "worker " + std::to_string(k) + " ") ||
                                     contains(line, "(pid " + std::to_string(k) + ")")) &&
                                    contains(line, "killed by signal 9"));
        if (!expected)
            left += line + "\n";
    }
    BOOST_TEST(left.empty(), "crashes in " << p.log_path() << ":\n" << left);
}

void check_clean_stop(Proxy& p)
{
    std::string how = p.stop();
    BOOST_TEST(how == "exit 0", "pgwicket on SIGTERM: " << how << "; log tail:\n" << p.log_tail());
    std::string findings = p.crash_findings();
    BOOST_TEST(findings.empty(), "crashes in " << p.log_path() << ":\n" << findings);
}

std::string Proxy::conninfo(const std::string& db, const std::string& user,
                            const std::string& extra) const
{
    return "host=127.0.0.1 port=" + std::to_string(port_) + " dbname=" + db + " user=" + user +
           " sslmode=disable connect_timeout=10 " + extra;
}

// ---- the environment -------------------------------------------------------------------------

std::string Env::direct(const std::string& db, const std::string& user,
                        const std::string& extra) const
{
    return "host=127.0.0.1 port=" + std::to_string(pg_port) + " dbname=" + db + " user=" + user +
           " sslmode=disable connect_timeout=10 " + extra;
}

std::string Env::standard_databases() const
{
    std::string pg = "host=127.0.0.1 port=" + std::to_string(pg_port) + " dbname=postgres";
    return "tlsdb = " + pg + " sslmode=require\n" + "asalice = " + pg +
           " user=alice sslmode=disable\n" +
           "unreachable = host=127.0.0.1 port=" + std::to_string(dead_port) +
           " dbname=postgres user=postgres password=" + kUnreachablePassword +
           " sslmode=disable connect_timeout=5\n";
}

namespace {

std::string getenv_or(const char* name, const std::string& fallback)
{
    const char* v = std::getenv(name);
    return v && *v ? std::string(v) : fallback;
}

void must(const RunResult& r, const std::string& what)
{
    if (!r.ok())
        throw std::runtime_error(what + " failed (" + r.status() + "):\n" + tail(r.out, 30));
}

// Objects the tests rely on: alice and a table she cannot read, a schema with a described
// table, and plain tables for \dt.
const char* kSetupSql = R"SQL(
CREATE ROLE alice LOGIN;
CREATE TABLE public.secret (id int PRIMARY KEY, launch_code text NOT NULL);
REVOKE ALL ON public.secret FROM PUBLIC;
CREATE TABLE public.items (id serial PRIMARY KEY, name text NOT NULL UNIQUE, price numeric(10,2) CHECK (price >= 0));
GRANT SELECT ON public.items TO alice;
INSERT INTO public.items (name, price) VALUES ('apple', 0.50), ('pear', 0.75), ('fig', 2.00);
CREATE SCHEMA shop;
CREATE TABLE shop.customers (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email text NOT NULL);
CREATE TABLE shop.orders (
    id bigserial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES shop.customers(id) ON DELETE CASCADE,
    placed_at timestamptz NOT NULL DEFAULT now(),
    total numeric(12,2) NOT NULL DEFAULT 0,
    note text COLLATE "C"
);
CREATE INDEX orders_customer_idx ON shop.orders (customer_id, placed_at DESC);
COMMENT ON TABLE shop.orders IS 'orders placed by customers';
COMMENT ON COLUMN shop.orders.total IS 'in EUR';
CREATE VIEW shop.big_orders AS SELECT * FROM shop.orders WHERE total > 100;
)SQL";

// Records whether anything failed, so the global teardown can keep the evidence.
class FailureObserver : public boost::unit_test::test_observer {
public:
    void assertion_result(boost::unit_test::assertion_result ar) override
    {
        if (ar == boost::unit_test::AR_FAILED)
            failed = true;
    }
    void exception_caught(boost::execution_exception const&) override { failed = true; }
    void test_unit_aborted(boost::unit_test::test_unit const&) override { failed = true; }
    bool failed = false;
};

class Cluster {
public:
    explicit Cluster(Env& e) : e_(e)
    {
        e_.datadir = e_.tmpdir + "/data";
        e_.pg_log = e_.tmpdir + "/postgres.log";
        e_.pg_port = free_port();
        must(run(as_server_user({e_.bin("initdb"), "-D", e_.datadir, "--auth=trust", "-U",
                                 "postgres", "--no-locale", "-E", "UTF8", "--no-sync"}),
                 {.input = "", .env = client_env(), .timeout_s = 120, .pty = false}),
             "initdb");
        std::string crt = e_.datadir + "/server.crt", key = e_.datadir + "/server.key";
        must(run({"openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3", "-subj",
                  "/CN=localhost", "-keyout", key, "-out", crt}),
             "openssl req");
        if (geteuid() == 0) {
            passwd* pw = getpwnam("postgres");
            if (!pw)
                throw std::runtime_error("running as root but there is no postgres user");
            if (::chown(crt.c_str(), pw->pw_uid, pw->pw_gid) != 0 ||
                ::chown(key.c_str(), pw->pw_uid, pw->pw_gid) != 0)
                throw std::runtime_error("chown certificate: " + std::string(strerror(errno)));
        }
        ::chmod(key.c_str(), 0600);
        std::ofstream conf(e_.datadir + "/postgresql.conf", std::ios::app);
        conf << "\n# pgwicket integration tests\n"
             << "port = " << e_.pg_port << "\n"
             << "listen_addresses = '127.0.0.1'\n"
             << "unix_socket_directories = '" << e_.tmpdir << "'\n"
             << "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"
             << "log_statement = all\n"
             << "log_line_prefix = '%m [%p] %q%u@%d %a '\n"
             << "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
             << "max_connections = 100\n";
        conf.close();
        must(run(as_server_user(
                 {e_.bin("pg_ctl"), "-D", e_.datadir, "-l", e_.pg_log, "-w", "-t", "60", "start"})),
             "pg_ctl start");
        started_ = true;
        Conn c = connect_ok(e_.direct());
        Result r(PQexec(c.get(), kSetupSql));
        if (PQresultStatus(r.get()) != PGRES_COMMAND_OK)
            throw std::runtime_error("setup SQL: " + std::string(PQerrorMessage(c.get())));
    }
    ~Cluster()
    {
        if (!started_)
            return;
        RunResult r = run(as_server_user(
            {e_.bin("pg_ctl"), "-D", e_.datadir, "-m", "fast", "-w", "-t", "60", "stop"}));
        if (!r.ok())
            std::cerr << "pg_ctl stop failed (" << r.status() << "): " << r.out << "\n";
    }

private:
    Env& e_;
    bool started_ = false;
};

class TempDir {
public:
    TempDir()
    {
        char tmpl[] = "/tmp/pgwicket-it-XXXXXX";
        if (!mkdtemp(tmpl))
            throw std::runtime_error("mkdtemp: " + std::string(strerror(errno)));
        path = tmpl;
        ::chmod(tmpl, 0755);
        if (geteuid() == 0) {
            passwd* pw = getpwnam("postgres");
            if (!pw || ::chown(tmpl, pw->pw_uid, pw->pw_gid) != 0)
                throw std::runtime_error("cannot hand " + path + " to the postgres user");
        }
    }
    ~TempDir()
    {
        std::error_code ec;
        if (keep) {
            // The logs, configs and diffs are the evidence; the cluster's files (~100 MB) are
            // not worth filling /tmp with on every failing run.
            fs::remove_all(path + "/data", ec);
            std::cerr << "integration tests: kept the logs in " << path << " for inspection\n";
            return;
        }
        fs::remove_all(path, ec);
    }
    std::string path;
    bool keep = false;
};

// Members are destroyed in reverse order: proxy, cluster, folder.
struct World {
    TempDir dir;
    Env e;
    std::optional<Cluster> cluster;
    std::unique_ptr<Proxy> proxy;
};

World* g_world = nullptr;

}  // namespace

Env& env()
{
    if (!g_world)
        throw std::logic_error("integration environment is not set up");
    return g_world->e;
}

struct GlobalFixture {
    void setup()
    {
        boost::unit_test::framework::register_observer(observer_);
        // The harness talks to sockets whose peers may vanish on purpose.
        signal(SIGPIPE, SIG_IGN);
        world_ = std::make_unique<World>();
        g_world = world_.get();
        Env& e = world_->e;
        e.tmpdir = world_->dir.path;
        e.top_srcdir = getenv_or("top_srcdir", fs::current_path().string());
        e.bindir = getenv_or("PG_BINDIR", "/usr/lib/postgresql/15/bin");
        e.pgwicket_bin =
            getenv_or("PGWICKET_BIN", getenv_or("top_builddir", e.top_srcdir) + "/pgwicket");
        e.dead_port = free_port();
        BOOST_TEST_MESSAGE("integration tests: folder " << e.tmpdir << ", pgwicket "
                                                        << e.pgwicket_bin);
        try {
            world_->cluster.emplace(e);
        } catch (...) {
            world_->dir.keep = true;
            std::cerr << "integration setup: the cluster did not start; PostgreSQL log tail:\n"
                      << tail(read_file(e.pg_log), 20) << "\n";
            throw;
        }
        try {
            world_->proxy = std::make_unique<Proxy>("pgwicket", ProxyOptions{});
            e.proxy = world_->proxy.get();
        } catch (...) {
            world_->dir.keep = true;
            throw;
        }
        BOOST_TEST_MESSAGE("PostgreSQL on port " << e.pg_port << ", pgwicket (pid "
                                                 << e.proxy->pid() << ") on port "
                                                 << e.proxy->port());
    }

    void teardown()
    {
        if (!world_)
            return;
        Env& e = world_->e;
        if (world_->proxy) {
            std::string how = world_->proxy->stop();
            if (how != "exit 0") {
                observer_.failed = true;
                BOOST_ERROR("pgwicket did not shut down cleanly on SIGTERM: " << how);
            }
            std::string findings = world_->proxy->crash_findings();
            if (!findings.empty()) {
                observer_.failed = true;
                BOOST_ERROR("crashes in " << world_->proxy->log_path() << ":\n" << findings);
            }
        }
        if (observer_.failed) {
            world_->dir.keep = true;
            std::cerr << "---- pgwicket log tail (" << (e.proxy ? e.proxy->log_path() : "")
                      << ") ----\n"
                      << (e.proxy ? e.proxy->log_tail(60) : "") << "\n"
                      << "---- PostgreSQL log: " << e.pg_log << " ----\n";
        }
        e.proxy = nullptr;
        world_.reset();
        g_world = nullptr;
        boost::unit_test::framework::deregister_observer(observer_);
    }

private:
    std::unique_ptr<World> world_;
    FailureObserver observer_;
};

BOOST_TEST_GLOBAL_FIXTURE(GlobalFixture);

bool contains(const std::string& haystack, const std::string& needle)
{
    return haystack.find(needle) != std::string::npos;
}

uint32_t get32(const std::string& s, size_t at)
{
    auto u = [&](size_t i) { return static_cast<uint32_t>(static_cast<unsigned char>(s[at + i])); };
    return (u(0) << 24) | (u(1) << 16) | (u(2) << 8) | u(3);
}

std::string fields_text(const std::map<char, std::string>& f)
{
    std::ostringstream o;
    for (const auto& [k, v] : f)
        o << k << "=" << v << " ";
    return o.str();
}

}  // namespace pgw::it
