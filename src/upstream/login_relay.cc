// Pass-through login rules (PostgreSQL 15 documentation, 55.2.1 and 55.7). The server is
// not trusted to keep to the protocol: every stage names what may come, everything else
// ends the login with 08P01 before a byte of it reaches the client.
#include "upstream/login_relay.hh"

#include "protocol/bytes.hh"
#include "protocol/messages.hh"

namespace pgw::upstream {
namespace {

std::uint32_t be32_at(std::string_view s, size_t at)
{
    return protocol::load_be32(reinterpret_cast<const std::byte*>(s.data() + at));
}

// AuthenticationSASL's list without SCRAM-SHA-256-PLUS; nullopt when the list is malformed
// (a name without its terminator, or no empty name at the end).
std::optional<std::string> without_channel_binding(std::string_view body)
{
    std::string out(body.substr(0, 4));  // the code
    size_t at = 4;
    for (;;) {
        size_t nul = body.find('\0', at);
        if (nul == std::string_view::npos)
            return std::nullopt;
        if (nul == at)
            break;
        std::string_view mech = body.substr(at, nul - at);
        if (mech != "SCRAM-SHA-256-PLUS")
            out.append(mech).push_back('\0');
        at = nul + 1;
    }
    if (at + 1 != body.size())
        return std::nullopt;
    out.push_back('\0');
    return out;
}

// A ParameterStatus body: two C strings, nothing after.
bool two_strings(std::string_view body)
{
    size_t a = body.find('\0');
    if (a == std::string_view::npos)
        return false;
    size_t b = body.find('\0', a + 1);
    return b != std::string_view::npos && b + 1 == body.size();
}

std::string printable(char type)
{
    unsigned char c = static_cast<unsigned char>(type);
    if (c >= 0x21 && c < 0x7f)
        return std::string("'") + type + "'";
    return "0x" + std::string(1, "0123456789abcdef"[c >> 4]) + "0123456789abcdef"[c & 15];
}

} // namespace

std::optional<LoginStep> LoginRelay::check_server_header(std::uint32_t len)
{
    if (len >= 4 && len <= kMaxLoginMessage)
        return std::nullopt;
    LoginStep s;
    s.kind = LoginStep::Kind::Refuse;
    s.sqlstate = "08P01";
    s.message = "protocol violation by the upstream server during login: a message length of " +
                std::to_string(len) + " bytes" +
                (len < 4 ? std::string(" (at least 4)") : " (at most " + std::to_string(kMaxLoginMessage) + ")");
    s.log = s.message;
    return s;
}

std::optional<LoginStep> LoginRelay::check_client_header(char type, std::uint32_t len)
{
    LoginStep s;
    s.kind = LoginStep::Kind::Refuse;
    s.sqlstate = "08P01";
    if (type != 'p')
        s.message = "expected a password response, got message type " + printable(type);
    else if (len < 4 || len > kMaxClientAuthMessage)
        s.message = "invalid password packet size";
    else
        return std::nullopt;
    s.log = s.message + " (length " + std::to_string(len) + ")";
    return s;
}

LoginStep LoginRelay::refuse(std::string sqlstate, std::string message, std::string log)
{
    stage_ = Stage::Done;
    LoginStep s;
    s.kind = LoginStep::Kind::Refuse;
    s.sqlstate = std::move(sqlstate);
    s.log = log.empty() ? message : std::move(log);
    s.message = std::move(message);
    return s;
}

LoginStep LoginRelay::violation(const std::string& what)
{
    return refuse("08P01", "protocol violation by the upstream server during login: " + what);
}

LoginStep LoginRelay::on_server(char type, std::string_view body)
{
    if (stage_ == Stage::Done || stage_ == Stage::ClientAnswers)
        return violation("a message while " + std::string(stage_ == Stage::Done ? "the login was over" : "the client was to answer"));
    if (++messages_ > kMaxLoginMessages)
        return violation("more than " + std::to_string(kMaxLoginMessages) + " messages");
    if (body.size() > kMaxLoginMessage)
        return violation("a message of " + std::to_string(body.size()) + " bytes");

    switch (type) {
    case 'E': {
        auto f = protocol::decode_error_fields({reinterpret_cast<const std::byte*>(body.data()), body.size()});
        if (!f || f->sqlstate.size() != 5 || f->message.empty())
            return violation("a malformed ErrorResponse (" +
                             std::string(!f ? "not a list of fields" : f->sqlstate.size() != 5 ? "no SQLSTATE" : "no message") +
                             ")");
        stage_ = Stage::Done;
        LoginStep s;
        s.kind = LoginStep::Kind::ServerError;
        s.type = 'E';
        s.body = body;
        s.sqlstate = f->sqlstate;
        s.message = f->message;
        s.log = "the upstream server refused the login: " + f->sqlstate + ": " + f->message;
        return s;
    }
    case 'N': {
        if (!protocol::decode_error_fields({reinterpret_cast<const std::byte*>(body.data()), body.size()}))
            return violation("a malformed NoticeResponse");
        LoginStep s;
        s.kind = LoginStep::Kind::Forward;
        s.type = 'N';
        s.body = body;
        return s;
    }
    case 'v':
        // Only before authentication starts, once (we send 3.0 and the client's options).
        if (stage_ != Stage::Start || negotiated_ || body.size() < 8)
            return violation("an unexpected NegotiateProtocolVersion");
        negotiated_ = true;
        {
            LoginStep s;
            s.kind = LoginStep::Kind::Forward;
            s.type = 'v';
            s.body = body;
            return s;
        }
    case 'R':
        return on_auth_request(body);
    default:
        break;
    }

    if (stage_ != Stage::Authenticated)
        return violation("unexpected message " + printable(type) + " before authentication was complete");
    LoginStep s;
    switch (type) {
    case 'S':
        if (!two_strings(body))
            return violation("a malformed ParameterStatus");
        s.kind = LoginStep::Kind::Forward;
        s.type = 'S';
        s.body = body;
        return s;
    case 'K':
        // The server's own key stays here: the client gets the pid with our secret. We ask
        // for protocol 3.0, whose key is exactly 8 bytes, sent once.
        if (body.size() != 8 || has_key_)
            return violation(has_key_ ? "a second BackendKeyData" : "a BackendKeyData of " + std::to_string(body.size()) + " bytes");
        backend_pid_ = be32_at(body, 0);
        backend_secret_ = be32_at(body, 4);
        has_key_ = true;
        s.kind = LoginStep::Kind::Wait;
        return s;
    case 'Z':
        if (body.size() != 1 || (body[0] != 'I' && body[0] != 'T' && body[0] != 'E'))
            return violation("a malformed ReadyForQuery");
        status_ = body[0];
        stage_ = Stage::Done;
        s.kind = LoginStep::Kind::Ready;
        return s;
    default:
        return violation("unexpected message " + printable(type) + " after authentication");
    }
}

LoginStep LoginRelay::on_auth_request(std::string_view body)
{
    if (body.size() < 4)
        return violation("a malformed authentication request");
    const std::uint32_t code = be32_at(body, 0);
    LoginStep s;
    s.type = 'R';
    s.body = body;
    s.kind = LoginStep::Kind::Forward;
    auto expecting = [&](std::initializer_list<Stage> stages) {
        for (Stage st : stages)
            if (stage_ == st)
                return true;
        return false;
    };
    switch (code) {
    case 0:  // AuthenticationOk
        if (body.size() != 4 || !expecting({Stage::Start, Stage::Sasl, Stage::SaslFinal, Stage::Password}))
            return violation("an unexpected AuthenticationOk");
        stage_ = Stage::Authenticated;
        return s;
    case 3:  // cleartext password
    case 5:  // MD5, with its 4-byte salt
        if (body.size() != (code == 5 ? 8u : 4u) || stage_ != Stage::Start)
            return violation("an unexpected password request");
        s.kind = LoginStep::Kind::AskClient;
        after_client_ = Stage::Password;
        break;
    case 10: {  // AuthenticationSASL: the mechanisms
        if (stage_ != Stage::Start)
            return violation("a second start of a SASL exchange");
        auto list = without_channel_binding(body);
        if (!list)
            return violation("a malformed list of SASL mechanisms");
        offered_plus_ = list->size() != body.size();
        if (list->size() <= 5)
            return refuse("28000",
                          "the upstream server offers only SCRAM with channel binding, which cannot work through "
                          "pgwicket (the client's TLS ends here)");
        s.body = std::move(*list);
        s.kind = LoginStep::Kind::AskClient;
        after_client_ = Stage::Sasl;
        break;
    }
    case 11:  // AuthenticationSASLContinue
        if (stage_ != Stage::Sasl)
            return violation("a SASL continuation outside a SASL exchange");
        s.kind = LoginStep::Kind::AskClient;
        after_client_ = Stage::Sasl;
        break;
    case 12:  // AuthenticationSASLFinal: no answer
        if (stage_ != Stage::Sasl)
            return violation("a SASL final message outside a SASL exchange");
        stage_ = Stage::SaslFinal;
        return s;
    default:
        if (stage_ != Stage::Start)
            return violation("an unexpected authentication request (code " + std::to_string(code) + ")");
        return refuse("0A000", "the upstream server asked for an authentication method pgwicket cannot relay "
                               "(code " + std::to_string(code) + "; GSSAPI and SSPI are not supported)");
    }
    asked_code_ = code;
    stage_ = Stage::ClientAnswers;
    return s;
}

LoginStep LoginRelay::on_client(char type, std::string_view body)
{
    if (stage_ != Stage::ClientAnswers)
        return refuse("08P01", "unexpected message from the client during authentication");
    if (auto bad = check_client_header(type, std::uint32_t(body.size() + 4))) {
        stage_ = Stage::Done;
        return *bad;
    }
    // A client on TLS that supports channel binding says so ("y") when it is not offered;
    // a server that did offer it takes that for a downgrade attack and refuses. The flag
    // is covered by the client's proof, so say it clearly here.
    if (asked_code_ == 10 && offered_plus_) {
        size_t nul = body.find('\0');
        if (nul != std::string_view::npos && body.size() >= nul + 7 && body.compare(nul + 5, 2, "y,") == 0) {
            // libpq's default (channel_binding=prefer) lands here whenever client and
            // upstream both use TLS; the hint is the way in.
            LoginStep f = refuse("28000",
                                 "SCRAM through pgwicket cannot use channel binding, which the upstream server "
                                 "offers on its TLS connection: connect with channel_binding=disable",
                                 "client supports channel binding and the upstream server offers it; the exchange "
                                 "would fail as a downgrade");
            f.hint = "Add channel_binding=disable to the connection string (or set "
                     "PGCHANNELBINDING=disable), and keep sslmode=verify-full so that the client "
                     "still checks pgwicket's certificate. Channel binding cannot reach a server "
                     "behind a proxy that ends TLS, so nothing that works through pgwicket is lost. "
                     "A plaintext upstream for this database would avoid this too.";
            return f;
        }
    }
    stage_ = after_client_;
    LoginStep s;
    s.kind = LoginStep::Kind::Forward;
    s.type = 'p';
    s.body = body;
    return s;
}

} // namespace pgw::upstream
