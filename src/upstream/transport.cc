// Plain and TLS transports with uniform would-block reporting.
#include "upstream/transport.hh"

#include <openssl/err.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace pgw::upstream {

IoResult PlainTransport::read(std::byte* buf, size_t len)
{
    for (;;) {
        ssize_t n = ::recv(fd_, buf, len, 0);
        if (n > 0)
            return {Io::Ok, size_t(n)};
        if (n == 0)
            return {Io::Eof};
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return {Io::WantRead};
        error_ = std::strerror(errno);
        return {errno == ECONNRESET ? Io::Eof : Io::Error};
    }
}

IoResult PlainTransport::write(const std::byte* buf, size_t len)
{
    for (;;) {
        ssize_t n = ::send(fd_, buf, len, MSG_NOSIGNAL);
        if (n >= 0)
            return {Io::Ok, size_t(n)};
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return {Io::WantWrite};
        error_ = std::strerror(errno);
        return {Io::Error};
    }
}

TlsTransport::TlsTransport(SSL* ssl, int fd) : ssl_(ssl), fd_(fd)
{
    // The relay may compact its buffer between a WANT_WRITE and the retry, and
    // may write less than a whole buffer; tell OpenSSL both are fine.
    SSL_set_mode(ssl_, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_ENABLE_PARTIAL_WRITE);
}

IoResult TlsTransport::result_of(int rc)
{
    int err = SSL_get_error(ssl_, rc);
    switch (err) {
    case SSL_ERROR_WANT_READ:
        return {Io::WantRead};
    case SSL_ERROR_WANT_WRITE:
        return {Io::WantWrite};
    case SSL_ERROR_ZERO_RETURN:
        return {Io::Eof};
    case SSL_ERROR_SYSCALL:
        if (errno == 0 || errno == ECONNRESET || errno == EPIPE) {
            ERR_clear_error();
            return {Io::Eof};
        }
        error_ = std::string("TLS: ") + std::strerror(errno);
        ERR_clear_error();
        return {Io::Error};
    default: {
        char msg[256];
        ERR_error_string_n(ERR_get_error(), msg, sizeof msg);
        error_ = std::string("TLS: ") + msg;
        ERR_clear_error();
        return {Io::Error};
    }
    }
}

IoResult TlsTransport::read(std::byte* buf, size_t len)
{
    ERR_clear_error();
    errno = 0;
    size_t n = 0;
    int rc = SSL_read_ex(ssl_, buf, len, &n);
    if (rc == 1)
        return {Io::Ok, n};
    return result_of(rc);
}

IoResult TlsTransport::write(const std::byte* buf, size_t len)
{
    ERR_clear_error();
    errno = 0;
    size_t n = 0;
    int rc = SSL_write_ex(ssl_, buf, len, &n);
    if (rc == 1)
        return {Io::Ok, n};
    return result_of(rc);
}

} // namespace pgw::upstream
