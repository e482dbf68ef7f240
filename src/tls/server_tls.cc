// Building the server SSL_CTX, and TLS reads and writes on a non-blocking client socket.
#include "tls/server_tls.hh"

#include "config/config.hh"

#include <openssl/err.h>
#include <poll.h>

#include <cerrno>
#include <cstring>

namespace pgw::tls {
namespace {

std::string openssl_error()
{
    unsigned long e = ERR_get_error();
    ERR_clear_error();
    if (e == 0)
        return "unknown OpenSSL error";
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    return buf;
}

} // namespace

Result<ServerContext> make_server_context(const config::Config& cfg)
{
    if (cfg.client_tls_sslmode == "disable")
        return ServerContext{};
    if (cfg.client_tls_cert_file.empty() || cfg.client_tls_key_file.empty())
        return Error{cfg.path + ": client_tls_sslmode = " + cfg.client_tls_sslmode +
                     " needs client_tls_cert_file and client_tls_key_file"};
    ERR_clear_error();
    ServerContext ctx(SSL_CTX_new(TLS_server_method()), SSL_CTX_free);
    if (!ctx)
        return Error{"could not create a TLS context: " + openssl_error()};
    int min = 0, max = 0;
    for (const auto& p : config::split_list(cfg.client_tls_protocols)) {
        int v = p == "tlsv1.2" ? TLS1_2_VERSION : p == "tlsv1.3" ? TLS1_3_VERSION : 0;
        if (v == 0)
            return Error{cfg.path + ": client_tls_protocols: unknown or insecure protocol \"" + p +
                         "\" (use tlsv1.2, tlsv1.3 or both)"};
        min = min == 0 || v < min ? v : min;
        max = v > max ? v : max;
    }
    if (min == 0)
        return Error{cfg.path + ": client_tls_protocols is empty"};
    SSL_CTX_set_min_proto_version(ctx.get(), min);
    SSL_CTX_set_max_proto_version(ctx.get(), max);
    if (SSL_CTX_set_cipher_list(ctx.get(), cfg.client_tls_ciphers.c_str()) != 1)
        return Error{cfg.path + ": client_tls_ciphers \"" + cfg.client_tls_ciphers + "\": " + openssl_error()};
    if (SSL_CTX_use_certificate_chain_file(ctx.get(), cfg.client_tls_cert_file.c_str()) != 1)
        return Error{"client_tls_cert_file \"" + cfg.client_tls_cert_file + "\": " + openssl_error()};
    if (SSL_CTX_use_PrivateKey_file(ctx.get(), cfg.client_tls_key_file.c_str(), SSL_FILETYPE_PEM) != 1)
        return Error{"client_tls_key_file \"" + cfg.client_tls_key_file + "\": " + openssl_error()};
    if (SSL_CTX_check_private_key(ctx.get()) != 1)
        return Error{"client_tls_key_file \"" + cfg.client_tls_key_file +
                     "\" does not belong to client_tls_cert_file \"" + cfg.client_tls_cert_file + "\""};
    if (!cfg.client_tls_ca_file.empty()) {
        if (SSL_CTX_load_verify_locations(ctx.get(), cfg.client_tls_ca_file.c_str(), nullptr) != 1)
            return Error{"client_tls_ca_file \"" + cfg.client_tls_ca_file + "\": " + openssl_error()};
        // Ask for a certificate and check one that comes; do not insist (rules decide).
        SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
        if (STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(cfg.client_tls_ca_file.c_str()))
            SSL_CTX_set_client_CA_list(ctx.get(), names);
    }
    SSL_CTX_set_options(ctx.get(), SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                       SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_TICKET);
    SSL_CTX_set_session_cache_mode(ctx.get(), SSL_SESS_CACHE_OFF);
    // The relay may retry a write from a buffer that moved, and write in parts.
    SSL_CTX_set_mode(ctx.get(), SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_ENABLE_PARTIAL_WRITE);
    return ctx;
}

Conn::~Conn()
{
    if (ssl_)
        SSL_free(ssl_);
    if (own_ctx_)
        SSL_CTX_free(own_ctx_);
}

bool Conn::wait_for(int ssl_error, net::Clock::time_point deadline)
{
    int ms = net::ms_until(deadline);
    if (ms == 0)
        return false;
    pollfd p{fd_, short(ssl_error == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN), 0};
    int rc = ::poll(&p, 1, ms);
    return rc > 0 || (rc < 0 && errno == EINTR);
}

Status Conn::start_tls(SSL_CTX* ctx, net::Clock::time_point deadline)
{
    ERR_clear_error();
    ssl_ = SSL_new(ctx);
    if (!ssl_ || SSL_set_fd(ssl_, fd_) != 1)
        return Error{"could not start TLS: " + openssl_error()};
    return handshake(true, deadline);
}

Status Conn::connect_tls(const std::string& sslmode, const std::string& root_cert, const std::string& host,
                         net::Clock::time_point deadline)
{
    ERR_clear_error();
    own_ctx_ = SSL_CTX_new(TLS_client_method());
    if (!own_ctx_)
        return Error{"could not create a TLS context: " + openssl_error()};
    SSL_CTX_set_min_proto_version(own_ctx_, TLS1_2_VERSION);
    SSL_CTX_set_mode(own_ctx_, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_ENABLE_PARTIAL_WRITE);
    const bool verify = sslmode == "verify-ca" || sslmode == "verify-full";
    if (verify) {
        if (root_cert.empty())
            return Error{"sslmode=" + sslmode + " needs sslrootcert= in the [databases] entry"};
        if (SSL_CTX_load_verify_locations(own_ctx_, root_cert.c_str(), nullptr) != 1)
            return Error{"sslrootcert \"" + root_cert + "\": " + openssl_error()};
        SSL_CTX_set_verify(own_ctx_, SSL_VERIFY_PEER, nullptr);
    }
    ssl_ = SSL_new(own_ctx_);
    if (!ssl_ || SSL_set_fd(ssl_, fd_) != 1)
        return Error{"could not start TLS: " + openssl_error()};
    const bool is_ip = host.find_first_not_of("0123456789.") == std::string::npos || host.find(':') != std::string::npos;
    if (!is_ip)
        SSL_set_tlsext_host_name(ssl_, host.c_str());
    if (sslmode == "verify-full") {
        X509_VERIFY_PARAM* param = SSL_get0_param(ssl_);
        int ok = is_ip ? X509_VERIFY_PARAM_set1_ip_asc(param, host.c_str()) : X509_VERIFY_PARAM_set1_host(param, host.c_str(), 0);
        if (ok != 1)
            return Error{"could not set the name to verify: " + openssl_error()};
    }
    auto st = handshake(false, deadline);
    if (!st && verify && SSL_get_verify_result(ssl_) != X509_V_OK)
        return Error{std::string("the upstream server's certificate does not verify: ") +
                     X509_verify_cert_error_string(SSL_get_verify_result(ssl_))};
    return st;
}

Status Conn::handshake(bool server, net::Clock::time_point deadline)
{
    for (;;) {
        int rc = server ? SSL_accept(ssl_) : SSL_connect(ssl_);
        if (rc == 1)
            return ok_status();
        int err = SSL_get_error(ssl_, rc);
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
            if (!wait_for(err, deadline))
                return Error{"TLS handshake timed out"};
            continue;
        }
        std::string why = err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0
                              ? std::string(server ? "the client" : "the server") + " closed the connection"
                              : openssl_error();
        return Error{"TLS handshake failed: " + why};
    }
}

net::ReadStatus Conn::read_exact(void* buf, size_t n, net::Clock::time_point deadline)
{
    size_t got = 0;
    return read_between(buf, n, n, deadline, got);
}

net::ReadStatus Conn::read_between(void* buf, size_t min, size_t max, net::Clock::time_point deadline, size_t& done)
{
    if (!ssl_)
        return net::read_between(fd_, buf, min, max, deadline, done);
    auto* p = static_cast<char*>(buf);
    done = 0;
    while (done < min) {
        ERR_clear_error();
        int rc = SSL_read(ssl_, p + done, int(max - done));
        if (rc > 0) {
            done += size_t(rc);
            continue;
        }
        int err = SSL_get_error(ssl_, rc);
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
            if (!wait_for(err, deadline))
                return net::ReadStatus::Timeout;
            continue;
        }
        return err == SSL_ERROR_ZERO_RETURN ? net::ReadStatus::Eof : net::ReadStatus::Error;
    }
    return net::ReadStatus::Ok;
}

bool Conn::write_all(const void* buf, size_t n, net::Clock::time_point deadline)
{
    if (!ssl_)
        return net::write_all(fd_, buf, n, deadline);
    auto* p = static_cast<const char*>(buf);
    size_t done = 0;
    while (done < n) {
        ERR_clear_error();
        int rc = SSL_write(ssl_, p + done, int(n - done));
        if (rc > 0) {
            done += size_t(rc);
            continue;
        }
        int err = SSL_get_error(ssl_, rc);
        if ((err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) && wait_for(err, deadline))
            continue;
        return false;
    }
    return true;
}

void Conn::linger_close(net::Clock::time_point deadline)
{
    if (ssl_)
        SSL_shutdown(ssl_);  // one close_notify; we do not wait for the client's
    net::linger_close(fd_, deadline);
}

std::string Conn::describe_tls() const
{
    if (!ssl_)
        return "no TLS";
    return std::string(SSL_get_version(ssl_)) + " " + SSL_get_cipher_name(ssl_);
}

} // namespace pgw::tls
