// The rules of the pass-through login without I/O: which server message may come at
// which stage, what reaches the client, when the client must answer. passthrough.cc reads
// and writes; tests/fuzz/fuzz_passthrough.cc drives this with hostile servers.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace pgw::upstream {

// The server's messages during login are small; a huge one is a broken or hostile server.
constexpr std::uint32_t kMaxLoginMessage = 1024 * 1024;
// A password, token or SASL message from the client.
constexpr std::uint32_t kMaxClientAuthMessage = 64 * 1024;
// PostgreSQL sends about fifteen ParameterStatus messages; a flood is not a login.
constexpr int kMaxLoginMessages = 10000;

struct LoginStep {
    enum class Kind {
        Forward,      // `type` + `body` to the client (on_client: to the server)
        AskClient,    // the same, then the client's one answer goes to on_client
        Wait,         // nothing to send (BackendKeyData, kept here); read the next message
        Ready,        // the first ReadyForQuery: the login is done, `status` holds its status
        ServerError,  // the server's own ErrorResponse, for the client as it is: login failed
        Refuse,       // our FATAL `sqlstate` `message` (+ `hint`); the message is not relayed
    };
    Kind kind = Kind::Wait;
    char type = 0;
    std::string body;
    std::string sqlstate;  // Refuse: ours; ServerError: the server's
    std::string message;
    std::string hint;
    std::string log;  // for our log line (Refuse, ServerError)
};

class LoginRelay {
public:
    // A server message's header, before its body is read: a length out of bounds is
    // refused without allocating it.
    static std::optional<LoginStep> check_server_header(std::uint32_t len);
    // A client answer's header (to an AskClient step).
    static std::optional<LoginStep> check_client_header(char type, std::uint32_t len);

    LoginStep on_server(char type, std::string_view body);
    // The client's answer to the last AskClient: Forward (to the server) or Refuse.
    LoginStep on_client(char type, std::string_view body);

    std::uint32_t backend_pid() const { return backend_pid_; }
    std::uint32_t backend_secret() const { return backend_secret_; }
    bool has_key() const { return has_key_; }
    char status() const { return status_; }

private:
    enum class Stage {
        Start,          // nothing but NegotiateProtocolVersion and notices yet
        ClientAnswers,  // an AskClient is out; only on_client may come
        Sasl,           // the client answered the SASL start or a continue
        SaslFinal,      // AuthenticationSASLFinal came: Ok or an error next
        Password,       // the client answered a cleartext or MD5 request
        Authenticated,  // AuthenticationOk came: ParameterStatus, key, ReadyForQuery
        Done,           // Ready, ServerError or Refuse was returned
    };
    LoginStep refuse(std::string sqlstate, std::string message, std::string log = {});
    LoginStep violation(const std::string& what);
    LoginStep on_auth_request(std::string_view body);

    Stage stage_ = Stage::Start;
    Stage after_client_ = Stage::Start;  // the stage once the client has answered
    std::uint32_t asked_code_ = 0;       // the request the client is answering
    bool offered_plus_ = false;          // the server offered SCRAM-SHA-256-PLUS (removed)
    bool negotiated_ = false;            // NegotiateProtocolVersion came
    int messages_ = 0;
    std::uint32_t backend_pid_ = 0;
    std::uint32_t backend_secret_ = 0;
    bool has_key_ = false;
    char status_ = 'I';
};

} // namespace pgw::upstream
