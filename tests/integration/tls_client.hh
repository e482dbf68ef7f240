// Client-side helpers shared by the TLS and authentication tests (test_tls_auth.cc,
// test_auth_more.cc): pgwicket's TLS settings and a verify-full connection string, libpq
// connection attempts with the SQLSTATE of their FATAL, the first reply to a startup, and
// a pgwire client over TLS for what libpq 15 cannot do (a CancelRequest inside TLS, a SASL
// OAUTHBEARER exchange); upstream roles and auth_file lines.
#pragma once

#include "harness.hh"

#include <openssl/ssl.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pgw::it {

// A value for a libpq connection string, quoted so tokens with any character fit.
std::string quoted(const std::string& v);

// [pgwicket] lines for server TLS with the test CA's server certificate (or the given one).
std::string tls_settings(const std::string& mode, const std::string& cert = "", const std::string& key = "");

// Over TLS, checking the server as `psql "sslmode=verify-full sslrootcert=ca.pem"` does.
// hostaddr skips resolving localhost (which may try ::1 first); the name is still checked.
std::string tls_conninfo(const Proxy& p, const std::string& db = "postgres", const std::string& user = "postgres",
                         const std::string& extra = "");

// ---- connection attempts with the SQLSTATE of their FATAL --------------------------------------

// libpq has no API for the SQLSTATE of a failed connection, but with verbose errors set
// before the first byte is read its message reads "FATAL:  28P01: password ...".
struct Attempt {
    Conn conn;
    bool ok = false;
    std::string severity, sqlstate, message;  // of the last error; message: its first line
    std::string full;                          // PQerrorMessage
    std::string describe() const { return ok ? std::string("connected") : "failed: " + full; }
};

Attempt attempt(const std::string& conninfo, int timeout_ms = 20000);

// Boost.Test checks: the attempt failed with FATAL `sqlstate` and a message containing
// `mention`.
void check_refused(const Attempt& a, const std::string& sqlstate, const std::string& mention);
void check_connected(const Attempt& a);
// SELECT current_user on the attempt's connection, or "<not connected>".
std::string current_user(const Attempt& a);

// ---- first replies -----------------------------------------------------------------------------

// The first message pgwicket sends after a plaintext StartupMessage.
std::optional<Message> first_reply(const Proxy& p, const std::string& user, const std::string& db = "postgres");
// AuthenticationRequest code of an 'R' message, or -1.
int auth_code(const std::optional<Message>& m);
// "ErrorResponse S=FATAL C=...", "AuthenticationRequest 10", ...: for failure messages.
std::string describe(const std::optional<Message>& m);

// ---- roles and auth_file lines ------------------------------------------------------------------

// A LOGIN role upstream (the cluster trusts every local connection; pgwicket is the gate).
void ensure_role(const std::string& name);
// A line of an auth_file: "user" "secret".
std::string userlist_line(const std::string& user, const std::string& secret);
// A SCRAM-SHA-256 verifier for `password`, as --hash-password makes it.
std::string scram_verifier(const std::string& password);

// ---- TLS by hand -------------------------------------------------------------------------------

// The OpenSSL error queue as text (and emptied).
std::string ssl_errors();

// A pgwire client over TLS: SSLRequest, 'S', handshake verifying the server as verify-full
// would (name "localhost", `ca_file`), then messages over the TLS stream. Throws
// std::runtime_error when the server does not answer 'S' or the handshake fails.
class TlsClient {
public:
    TlsClient(int port, const std::string& ca_file);
    ~TlsClient();
    TlsClient(const TlsClient&) = delete;
    TlsClient& operator=(const TlsClient&) = delete;

    bool send(std::string_view bytes);
    // One backend message; nullopt on EOF, error or timeout.
    std::optional<Message> read_message(int timeout_ms = 10000);
    // Messages until ReadyForQuery ('Z') or an ErrorResponse; returns all read.
    std::vector<Message> read_until_ready(int timeout_ms = 10000);
    // Reads and discards until the peer closes; false when it is still open after timeout_ms.
    bool wait_closed(int timeout_ms = 10000);
    // Sends a TLS close_notify and nothing else: the socket stays open.
    void say_goodbye();

private:
    bool fill(size_t n, std::chrono::steady_clock::time_point deadline);

    struct CtxFree {
        void operator()(SSL_CTX* c) const { SSL_CTX_free(c); }
    };
    struct SslFree {
        void operator()(SSL* s) const { SSL_free(s); }
    };
    RawSocket sock_;  // destroyed last: ssl_ uses its fd
    std::unique_ptr<SSL_CTX, CtxFree> ctx_;
    std::unique_ptr<SSL, SslFree> ssl_;
    std::string buf_;
    bool eof_ = false;
};

}  // namespace pgw::it
