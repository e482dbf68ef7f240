// The helpers behind tls_client.hh.
#include "tls_client.hh"

#include "tls_fixtures.hh"

#include "auth/scram.hh"

#include <boost/test/unit_test.hpp>

#include <fcntl.h>
#include <openssl/err.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <algorithm>
#include <regex>
#include <stdexcept>

namespace pgw::it {

namespace {

using Clock = std::chrono::steady_clock;

long ms_since(Clock::time_point t)
{
    return static_cast<long>(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count());
}

}  // namespace

std::string quoted(const std::string& v)
{
    std::string out = "'";
    for (char c : v) {
        if (c == '\'' || c == '\\')
            out += '\\';
        out += c;
    }
    return out + "'";
}

std::string tls_settings(const std::string& mode, const std::string& cert, const std::string& key)
{
    const TlsFiles& t = tls_files();
    return "client_tls_sslmode = " + mode + "\n" + "client_tls_cert_file = " + (cert.empty() ? t.server_cert : cert) +
           "\n" + "client_tls_key_file = " + (key.empty() ? t.server_key : key) + "\n";
}

std::string tls_conninfo(const Proxy& p, const std::string& db, const std::string& user, const std::string& extra)
{
    return "host=localhost hostaddr=127.0.0.1 port=" + std::to_string(p.port()) + " dbname=" + db + " user=" +
           user + " sslmode=verify-full sslrootcert=" + tls_files().ca_cert + " connect_timeout=10 " + extra;
}

// ---- connection attempts -----------------------------------------------------------------------

Attempt attempt(const std::string& conninfo, int timeout_ms)
{
    Attempt a;
    a.conn = Conn(PQconnectStart(conninfo.c_str()));
    BOOST_TEST_REQUIRE(a.conn != nullptr);
    PGconn* c = a.conn.get();
    PQsetErrorVerbosity(c, PQERRORS_VERBOSE);
    PQsetNoticeProcessor(
        c, [](void*, const char*) {}, nullptr);
    auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
    PostgresPollingStatusType st = PQstatus(c) == CONNECTION_BAD ? PGRES_POLLING_FAILED : PGRES_POLLING_WRITING;
    while (st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
        long left = -ms_since(deadline);
        if (left <= 0) {
            a.full = "timed out connecting";
            return a;
        }
        pollfd p{PQsocket(c), static_cast<short>(st == PGRES_POLLING_READING ? POLLIN : POLLOUT), 0};
        ::poll(&p, 1, static_cast<int>(std::min(left, 200L)));
        st = PQconnectPoll(c);
    }
    a.ok = st == PGRES_POLLING_OK && PQstatus(c) == CONNECTION_OK;
    a.full = PQerrorMessage(c);
    static const std::regex error_re("(FATAL|ERROR|PANIC):  ([0-9A-Z]{5}): ([^\n]*)");
    for (auto it = std::sregex_iterator(a.full.begin(), a.full.end(), error_re); it != std::sregex_iterator(); ++it) {
        a.severity = (*it)[1];
        a.sqlstate = (*it)[2];
        a.message = (*it)[3];
    }
    return a;
}

void check_refused(const Attempt& a, const std::string& sqlstate, const std::string& mention)
{
    BOOST_TEST(!a.ok, "expected FATAL " << sqlstate << " (" << mention << "), but it connected");
    if (a.ok)
        return;
    BOOST_TEST(a.severity == "FATAL", a.full);
    BOOST_TEST(a.sqlstate == sqlstate, a.full);
    BOOST_TEST(contains(a.message, mention), "expected \"" << mention << "\" in: " << a.full);
}

void check_connected(const Attempt& a) { BOOST_TEST(a.ok, a.describe()); }

std::string current_user(const Attempt& a)
{
    return a.ok ? scalar(a.conn.get(), "SELECT current_user") : std::string("<not connected>");
}

// ---- first replies -----------------------------------------------------------------------------

std::optional<Message> first_reply(const Proxy& p, const std::string& user, const std::string& db)
{
    RawSocket s(p.port());
    s.send(startup_packet({{"user", user}, {"database", db}}));
    return s.read_message(10000);
}

int auth_code(const std::optional<Message>& m)
{
    return m && m->type == 'R' && m->payload.size() >= 4 ? static_cast<int>(get32(m->payload, 0)) : -1;
}

std::string describe(const std::optional<Message>& m)
{
    if (!m)
        return "nothing (closed or timed out)";
    if (m->type == 'E')
        return "ErrorResponse " + fields_text(error_fields(m->payload));
    if (m->type == 'R')
        return "AuthenticationRequest " + std::to_string(auth_code(m));
    return std::string("message '") + m->type + "'";
}

// ---- roles and auth_file lines ------------------------------------------------------------------

void ensure_role(const std::string& name)
{
    direct_exec("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '" + name +
                "') THEN CREATE ROLE \"" + name + "\" LOGIN; END IF; END $$");
}

std::string userlist_line(const std::string& user, const std::string& secret)
{
    return "\"" + user + "\" \"" + secret + "\"\n";
}

std::string scram_verifier(const std::string& password)
{
    auto v = pgw::auth::scram::make_verifier(password);
    if (!v.ok())
        throw std::runtime_error("make_verifier: " + v.error());
    return *v;
}

// ---- TLS by hand -------------------------------------------------------------------------------

std::string ssl_errors()
{
    std::string out;
    while (unsigned long e = ERR_get_error()) {
        char buf[256];
        ERR_error_string_n(e, buf, sizeof buf);
        out += std::string(out.empty() ? "" : "; ") + buf;
    }
    return out.empty() ? "no OpenSSL error queued" : out;
}

TlsClient::TlsClient(int port, const std::string& ca_file) : sock_(port)
{
    sock_.send(ssl_request());
    std::string answer = sock_.read_exact(1, 10000);
    if (answer != "S")
        throw std::runtime_error("SSLRequest answered \"" + answer + "\" instead of S");
    ctx_.reset(SSL_CTX_new(TLS_client_method()));
    if (!ctx_ || SSL_CTX_load_verify_locations(ctx_.get(), ca_file.c_str(), nullptr) != 1)
        throw std::runtime_error("TLS client context: " + ssl_errors());
    SSL_CTX_set_verify(ctx_.get(), SSL_VERIFY_PEER, nullptr);
    ssl_.reset(SSL_new(ctx_.get()));
    if (!ssl_ || SSL_set1_host(ssl_.get(), "localhost") != 1 ||
        SSL_set_tlsext_host_name(ssl_.get(), "localhost") != 1 || SSL_set_fd(ssl_.get(), sock_.fd()) != 1)
        throw std::runtime_error("TLS client: " + ssl_errors());
    // The handshake blocks, with a receive timeout so a silent server cannot hang us.
    timeval tv{10, 0};
    setsockopt(sock_.fd(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (SSL_connect(ssl_.get()) != 1)
        throw std::runtime_error("TLS handshake: " + ssl_errors());
    ::fcntl(sock_.fd(), F_SETFL, ::fcntl(sock_.fd(), F_GETFL) | O_NONBLOCK);
}

TlsClient::~TlsClient() = default;

void TlsClient::say_goodbye() { SSL_shutdown(ssl_.get()); }

bool TlsClient::send(std::string_view bytes)
{
    auto deadline = Clock::now() + std::chrono::seconds(10);
    while (!bytes.empty() && Clock::now() < deadline) {
        int n = SSL_write(ssl_.get(), bytes.data(), static_cast<int>(bytes.size()));
        if (n > 0) {
            bytes.remove_prefix(static_cast<size_t>(n));
            continue;
        }
        int err = SSL_get_error(ssl_.get(), n);
        if (err != SSL_ERROR_WANT_WRITE && err != SSL_ERROR_WANT_READ)
            return false;
        pollfd p{sock_.fd(), static_cast<short>(err == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN), 0};
        ::poll(&p, 1, 200);
    }
    return bytes.empty();
}

std::optional<Message> TlsClient::read_message(int timeout_ms)
{
    auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
    if (!fill(5, deadline))
        return std::nullopt;
    uint32_t len = get32(buf_, 1);
    if (len < 4 || len > (64u << 20))
        throw std::runtime_error("TLS client: implausible message length " + std::to_string(len));
    if (!fill(1 + len, deadline))
        return std::nullopt;
    Message m{buf_[0], buf_.substr(5, len - 4)};
    buf_.erase(0, 1 + len);
    return m;
}

std::vector<Message> TlsClient::read_until_ready(int timeout_ms)
{
    std::vector<Message> out;
    while (auto m = read_message(timeout_ms)) {
        out.push_back(*m);
        if (m->type == 'Z' || m->type == 'E')
            break;
    }
    return out;
}

bool TlsClient::wait_closed(int timeout_ms)
{
    auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
    while (!eof_ && Clock::now() < deadline) {
        fill(buf_.size() + 1, deadline);
        buf_.clear();
    }
    return eof_;
}

// Reads until buf_ holds n bytes; false on EOF, error or the deadline.
bool TlsClient::fill(size_t n, Clock::time_point deadline)
{
    while (buf_.size() < n && !eof_) {
        char tmp[16384];
        int got = SSL_read(ssl_.get(), tmp, sizeof tmp);
        if (got > 0) {
            buf_.append(tmp, static_cast<size_t>(got));
            continue;
        }
        int err = SSL_get_error(ssl_.get(), got);
        if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) {
            eof_ = true;  // close_notify, reset or a TLS alert: the peer is gone either way
            ERR_clear_error();
            break;
        }
        long left = -ms_since(deadline);
        if (left <= 0)
            break;
        pollfd p{sock_.fd(), static_cast<short>(err == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN), 0};
        ::poll(&p, 1, static_cast<int>(std::min(left, 200L)));
    }
    return buf_.size() >= n;
}

}  // namespace pgw::it
