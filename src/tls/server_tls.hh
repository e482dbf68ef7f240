// TLS towards clients: the SSL_CTX built from the client_tls_* options (in the
// supervisor, at start and on reload); and a connection a session reads and writes,
// plain or TLS, with deadlines: the client's, or pass-through's own upstream one.
#pragma once

#include "common/net.hh"
#include "common/result.hh"
#include "config/config.hh"

#include <openssl/ssl.h>

#include <memory>
#include <string>

namespace pgw::tls {

using ServerContext = std::shared_ptr<SSL_CTX>;

// Null when client_tls_sslmode = disable. Loads certificate, key (checked to match)
// and CA, so a bad file is an error at start, in --check-config and on reload.
Result<ServerContext> make_server_context(const config::Config& cfg);

// A connection: the socket (not owned), and after start_tls()/connect_tls() the TLS
// session on it (owned, with the SSL_CTX a client side made for it).
class Conn {
public:
    explicit Conn(int fd) : fd_(fd) {}
    Conn(const Conn&) = delete;
    Conn& operator=(const Conn&) = delete;
    ~Conn();

    // After we answered 'S' to an SSLRequest: the server side of the handshake.
    Status start_tls(SSL_CTX* ctx, net::Clock::time_point deadline);
    // The client side, towards an upstream server after it answered 'S'. `sslmode` as
    // libpq's: require (no checks), verify-ca (chain to `root_cert`), verify-full (and
    // the certificate names `host`).
    Status connect_tls(const std::string& sslmode, const std::string& root_cert, const std::string& host,
                       net::Clock::time_point deadline);

    net::ReadStatus read_exact(void* buf, size_t n, net::Clock::time_point deadline);
    // As net::read_between, through TLS once it is on.
    net::ReadStatus read_between(void* buf, size_t min, size_t max, net::Clock::time_point deadline, size_t& got);
    bool write_all(const void* buf, size_t n, net::Clock::time_point deadline);
    // Half-closes gently after an error message (a TLS close_notify first).
    void linger_close(net::Clock::time_point deadline);

    int fd() const { return fd_; }
    SSL* ssl() const { return ssl_; }
    bool is_tls() const { return ssl_ != nullptr; }
    // "TLSv1.3 TLS_AES_256_GCM_SHA384", for the log.
    std::string describe_tls() const;

private:
    // Waits for what an SSL call asked for; false on timeout or poll failure.
    bool wait_for(int ssl_error, net::Clock::time_point deadline);

    Status handshake(bool server, net::Clock::time_point deadline);

    int fd_;
    SSL* ssl_ = nullptr;
    SSL_CTX* own_ctx_ = nullptr;  // connect_tls's
};

} // namespace pgw::tls
