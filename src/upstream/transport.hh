// A byte stream that the relay reads and writes without knowing whether it is a
// plain socket or a TLS session (libpq's SSL object upstream; pgwicket's own later).
#pragma once

#include <openssl/ssl.h>

#include <cstddef>
#include <string>

namespace pgw::upstream {

enum class Io {
    Ok,         // n bytes moved
    WantRead,   // try again when the fd is readable
    WantWrite,  // try again when the fd is writable
    Eof,        // orderly close by the peer
    Error,      // see error()
};

struct IoResult {
    Io status;
    size_t n = 0;
};

class Transport {
public:
    virtual ~Transport() = default;
    virtual IoResult read(std::byte* buf, size_t len) = 0;
    virtual IoResult write(const std::byte* buf, size_t len) = 0;
    virtual int fd() const = 0;
    virtual bool is_tls() const = 0;
    // Bytes already read from the socket but not yet returned (TLS records, read-ahead):
    // poll() cannot see them, so the caller must read again without waiting.
    virtual bool has_buffered() const { return false; }
    const std::string& error() const { return error_; }

protected:
    std::string error_;
};

// A non-blocking socket (not owned: the client fd or libpq's socket).
class PlainTransport final : public Transport {
public:
    explicit PlainTransport(int fd) : fd_(fd) {}
    IoResult read(std::byte* buf, size_t len) override;
    IoResult write(const std::byte* buf, size_t len) override;
    int fd() const override { return fd_; }
    bool is_tls() const override { return false; }

private:
    int fd_;
};

// An established TLS session on a non-blocking socket. Not owned: libpq frees it.
class TlsTransport final : public Transport {
public:
    TlsTransport(SSL* ssl, int fd);
    IoResult read(std::byte* buf, size_t len) override;
    IoResult write(const std::byte* buf, size_t len) override;
    int fd() const override { return fd_; }
    bool is_tls() const override { return true; }
    bool has_buffered() const override { return SSL_has_pending(ssl_) == 1; }

private:
    IoResult result_of(int rc);
    SSL* ssl_;
    int fd_;
};

} // namespace pgw::upstream
