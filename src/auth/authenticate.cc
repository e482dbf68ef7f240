// The methods' message exchanges (chapter 55.3 of the PostgreSQL documentation):
// AuthenticationSASL/Continue/Final for SCRAM, MD5Password, CleartextPassword for tokens.
// Nothing secret (passwords, tokens, SCRAM messages) is ever logged or echoed.
#include "auth/authenticate.hh"

#include "auth/jwt.hh"
#include "auth/oauthbearer.hh"
#include "auth/sasl_message.hh"
#include "auth/ossl.hh"
#include "auth/scram.hh"
#include "common/log.hh"
#include "jwks/cache.hh"
#include "protocol/bytes.hh"

#include <openssl/rand.h>

#include <cstring>
#include <ctime>
#include <optional>
#include <variant>
#include <vector>

namespace pgw::auth {
namespace {

AuthResult failure(const char* sqlstate, std::string message, std::string log, std::string hint = {})
{
    AuthResult r;
    r.sqlstate = sqlstate;
    r.message = std::move(message);
    r.log = std::move(log);
    r.hint = std::move(hint);
    return r;
}

AuthResult password_failed(const std::string& user, std::string log)
{
    return failure("28P01", "password authentication failed for user \"" + user + "\"", std::move(log));
}

class Exchange {
public:
    explicit Exchange(const AuthRequest& req) : req_(req) {}

    // Sends an Authentication message: code, then `data` as is.
    bool send_auth(std::uint32_t code, std::string_view data = {})
    {
        protocol::Writer w;
        w.begin('R');
        w.u32(code);
        w.raw(protocol::as_bytes(data));
        w.finish();
        return req_.conn.write_all(w.bytes().data(), w.bytes().size(), req_.deadline);
    }

    // Reads the client's next message, which must be a password-type message ('p').
    // Sets `result` and returns false on anything else.
    bool read_response(std::string& body, AuthResult& result)
    {
        unsigned char head[5];
        auto rs = req_.conn.read_exact(head, sizeof head, req_.deadline);
        if (rs == net::ReadStatus::Timeout) {
            result = failure("08006", "canceling authentication due to timeout (client_login_timeout)",
                             "authentication timed out (client_login_timeout)");
            return false;
        }
        if (rs != net::ReadStatus::Ok) {
            result = failure("08P01", "", "the client closed the connection during authentication");
            result.client_left = true;
            return false;
        }
        std::uint32_t len = protocol::load_be32(reinterpret_cast<const std::byte*>(head + 1));
        if (auto bad = sasl::check_password_header(char(head[0]), len)) {
            result = failure("08P01", *bad,
                             head[0] != 'p' ? std::string("protocol violation during authentication")
                                            : "password packet of " + std::to_string(len) + " bytes");
            return false;
        }
        body.assign(len - 4, '\0');
        if (req_.conn.read_exact(body.data(), body.size(), req_.deadline) != net::ReadStatus::Ok) {
            result = failure("08P01", "", "the client closed the connection during authentication");
            result.client_left = true;
            return false;
        }
        return true;
    }

    AuthResult scram(const std::string* secret);
    AuthResult md5(const std::string& secret);
    AuthResult jwt(const Rule& rule);

private:
    // No signing keys to check a token with, and why (fetched keys only).
    struct Unavailable {
        std::string why;
    };
    using Verdict = std::variant<jwt::Identity, jwt::JwtError, Unavailable>;
    AuthResult check_token(const std::string& token);
    Verdict verify_with_file(const std::string& token, const jwt::VerifyOptions& opt);
    Verdict verify_with_fetched(const std::string& token, const jwt::VerifyOptions& opt);
    AuthResult oauthbearer();

    const AuthRequest& req_;
};

// The key for unknown users' mock verifiers: stable while auth_file is unchanged (so a
// second probe sees the same salt) and unknown outside (it hashes every verifier).
// Unknown users get the iteration count the real verifiers use, so it tells nothing.
int mock_iterations(const config::Config& cfg)
{
    for (const auto& [user, secret] : cfg.users)
        if (auto v = scram::parse_verifier(secret))
            return v->iterations;
    return scram::kDefaultIterations;
}

std::vector<std::uint8_t> mock_secret(const config::Config& cfg)
{
    std::string all = "pgwicket mock verifier\n";
    for (const auto& [user, secret] : cfg.users)
        all += user + "\n" + secret + "\n";
    auto digest = ossl::sha256({reinterpret_cast<const std::uint8_t*>(all.data()), all.size()});
    return {digest.begin(), digest.end()};
}

AuthResult Exchange::scram(const std::string* secret)
{
    std::optional<scram::ServerExchange> ex;
    if (secret) {
        auto v = scram::parse_verifier(*secret);
        if (!v)  // checked at load; only a md5 entry gets here
            ex.emplace(scram::ServerExchange::for_unknown_user(mock_secret(req_.cfg), req_.user, mock_iterations(req_.cfg)));
        else
            ex.emplace(std::move(*v));
    } else {
        ex.emplace(scram::ServerExchange::for_unknown_user(mock_secret(req_.cfg), req_.user, mock_iterations(req_.cfg)));
    }
    // AuthenticationSASL: the mechanisms we offer, each a C string, then an empty one.
    // Never SCRAM-SHA-256-PLUS: the client's TLS ends here, so there is nothing to bind.
    if (!send_auth(10, std::string_view("SCRAM-SHA-256\0\0", 15)))
        return failure("08006", "", "could not write to the client");
    std::string body;
    AuthResult r;
    if (!read_response(body, r))
        return r;
    auto initial = sasl::parse_initial_response(body);
    if (auto* bad = std::get_if<std::string>(&initial))
        return failure("08P01", *bad, *bad);
    const auto [mechanism, first] = std::get<sasl::InitialResponse>(initial);
    if (mechanism == "SCRAM-SHA-256-PLUS")
        return failure("08P01", "pgwicket does not support SCRAM channel binding",
                       "client asked for SCRAM-SHA-256-PLUS",
                       "Connect with channel_binding=prefer or disable; use sslmode=verify-full to "
                       "authenticate pgwicket instead.");
    if (mechanism != scram::kMechanism)
        return failure("08P01", "client selected an invalid SASL authentication mechanism",
                       "unknown SASL mechanism");
    auto step = ex->client_first(first);
    auto failed = [&](const scram::ScramError& e) {
        if (e.kind == scram::Failure::WrongPassword)
            return password_failed(req_.user, "scram-sha-256: " + e.message);
        AuthResult f = failure(scram::sqlstate(e.kind), e.message, "scram-sha-256: " + e.message);
        if (e.kind == scram::Failure::ChannelBindingDemanded)
            f.hint = "pgwicket does not support SCRAM channel binding; connect with channel_binding=prefer "
                     "or disable, and use sslmode=verify-full to authenticate pgwicket instead.";
        return f;
    };
    if (auto* e = std::get_if<scram::ScramError>(&step))
        return failed(*e);
    if (!send_auth(11, std::get<std::string>(step)))
        return failure("08006", "", "could not write to the client");
    if (!read_response(body, r))
        return r;
    step = ex->client_final(body);
    if (auto* e = std::get_if<scram::ScramError>(&step))
        return failed(*e);
    if (!send_auth(12, std::get<std::string>(step)))
        return failure("08006", "", "could not write to the client");
    AuthResult ok;
    ok.ok = true;
    return ok;
}

AuthResult Exchange::md5(const std::string& secret)
{
    std::uint8_t salt[4];
    if (RAND_bytes(salt, sizeof salt) != 1)
        return failure("XX000", "could not generate an MD5 salt", "RAND_bytes failed");
    if (!send_auth(5, std::string_view(reinterpret_cast<const char*>(salt), sizeof salt)))
        return failure("08006", "", "could not write to the client");
    std::string body;
    AuthResult r;
    if (!read_response(body, r))
        return r;
    std::string response(body.c_str());
    if (!scram::md5_response_matches(secret, std::span<const std::uint8_t, 4>(salt), response))
        return password_failed(req_.user, "md5: wrong password");
    AuthResult ok;
    ok.ok = true;
    return ok;
}

AuthResult Exchange::jwt(const Rule& rule)
{
    // Refused before the token is asked for, so it never crosses the network in clear
    // (a Unix socket never leaves the host).
    if (!req_.conn.is_tls() && !req_.local && !rule.allow_plaintext)
        return failure("28000", "SSO tokens must be sent over TLS",
                       "jwt: plaintext connection; token not requested",
                       "Connect with sslmode=require (or verify-full).");
    if (rule.oauthbearer)
        return oauthbearer();
    if (!send_auth(3))
        return failure("08006", "", "could not write to the client");
    std::string body;
    AuthResult r;
    if (!read_response(body, r))
        return r;
    return check_token(std::string(body.c_str()));
}

// SASL OAUTHBEARER as PostgreSQL 18 runs it (see oauthbearer.hh). A client without a
// token, or with one that fails, gets the discovery document's address so libpq 18
// can run its device flow and come back; then the exchange ends with FATAL.
AuthResult Exchange::oauthbearer()
{
    if (!send_auth(10, std::string("OAUTHBEARER") + std::string(1, '\0') + std::string(1, '\0')))
        return failure("08006", "", "could not write to the client");
    std::string body;
    AuthResult r;
    if (!read_response(body, r))
        return r;
    auto initial = sasl::parse_initial_response(body);
    if (auto* bad = std::get_if<std::string>(&initial))
        return failure("08P01", *bad, *bad);
    if (std::get<sasl::InitialResponse>(initial).mechanism != oauthbearer::kMechanism)
        return failure("08P01", "client selected an invalid SASL authentication mechanism", "bad OAUTHBEARER start");
    auto parsed = oauthbearer::parse_initial_response(std::get<sasl::InitialResponse>(initial).data);
    if (auto* e = std::get_if<oauthbearer::ProtocolError>(&parsed))
        return failure("08P01", e->message, "oauthbearer: " + e->message);
    const auto& resp = std::get<oauthbearer::ClientResponse>(parsed);
    if (!resp.authzid.empty())
        return failure("0A000", "an authorization identity (a=) is not supported", "oauthbearer: authzid sent");
    AuthResult verdict;
    if (resp.kind == oauthbearer::ClientResponse::Kind::Token) {
        verdict = check_token(resp.token);
        if (verdict.ok)
            return verdict;
    } else {
        verdict = failure("28000", "OAuth bearer authentication failed for user \"" + req_.user + "\"",
                          resp.kind == oauthbearer::ClientResponse::Kind::Discovery
                              ? "oauthbearer: the client asked for the provider's parameters"
                              : "oauthbearer: malformed bearer token");
    }
    auto issuers = config::split_list(req_.cfg.jwt_issuer);
    std::string challenge =
        oauthbearer::error_challenge(issuers.empty() ? "" : issuers.front(), req_.cfg.jwt_oauth_scope);
    if (!send_auth(11, challenge))
        return failure("08006", "", "could not write to the client");
    AuthResult ack;
    if (!read_response(body, ack))
        return verdict.client_left ? verdict : ack;
    if (!oauthbearer::is_error_ack(body))
        return failure("08P01", "malformed OAUTHBEARER message", "oauthbearer: no error acknowledgement");
    return verdict;
}

// Keys from jwt_jwks_file, read when the configuration was loaded.
Exchange::Verdict Exchange::verify_with_file(const std::string& token, const jwt::VerifyOptions& opt)
{
    const config::Config& cfg = req_.cfg;
    std::shared_ptr<const jwt::Jwks> jwks = cfg.jwks;
    auto result = jwt::verify(token, *jwks, opt);
    if (auto* e = std::get_if<jwt::JwtError>(&result); e && e->reload_jwks) {
        // The provider may have rotated its keys since we read the file: read it again, once.
        if (auto fresh = config::load_jwks(cfg.jwt_jwks_file)) {
            log_info("jwt: unknown signing key; reread %s", cfg.jwt_jwks_file.c_str());
            jwks = *fresh;
            result = jwt::verify(token, *jwks, opt);
        }
    }
    if (auto* e = std::get_if<jwt::JwtError>(&result))
        return *e;
    return std::get<jwt::Identity>(result);
}

// Keys the key fetcher keeps in its cache (src/jwks/). An unknown kid, or no usable set,
// asks it for a fetch and waits a little (jwks::kRefreshWait) for the result.
Exchange::Verdict Exchange::verify_with_fetched(const std::string& token, const jwt::VerifyOptions& opt)
{
    const config::Config& cfg = req_.cfg;
    auto keys = jwks::keys_for_login(cfg, req_.table, std::int64_t(std::time(nullptr)));
    std::optional<std::variant<jwt::Identity, jwt::JwtError>> result;
    if (keys.jwks) {
        result = jwt::verify(token, *keys.jwks, opt);
        auto* e = std::get_if<jwt::JwtError>(&*result);
        if (!e || !e->reload_jwks)
            return e ? Verdict(*e) : Verdict(std::get<jwt::Identity>(*result));
    }
    if (req_.table && jwks::refresh_and_wait(cfg, *req_.table, req_.deadline)) {
        auto fresh = jwks::keys_for_login(cfg, req_.table, std::int64_t(std::time(nullptr)));
        if (fresh.jwks) {
            log_info("jwt: %s; the key fetcher fetched them again", keys.jwks ? "unknown signing key" : "no signing keys");
            result = jwt::verify(token, *fresh.jwks, opt);
        }
        keys = std::move(fresh);
    }
    if (!result)
        return Unavailable{keys.why_none};
    if (auto* e = std::get_if<jwt::JwtError>(&*result))
        return *e;
    return std::get<jwt::Identity>(*result);
}

AuthResult Exchange::check_token(const std::string& token)
{
    const config::Config& cfg = req_.cfg;
    jwt::VerifyOptions opt;
    opt.issuers = config::split_list(cfg.jwt_issuer);
    opt.audiences = config::split_list(cfg.jwt_audience);
    opt.leeway = std::chrono::seconds(cfg.jwt_leeway);
    opt.identity_claim = cfg.jwt_identity_claim;
    opt.groups_claim = cfg.jwt_groups_claim;
    auto result = cfg.jwks_fetch_for.empty() ? verify_with_file(token, opt) : verify_with_fetched(token, opt);
    if (auto* u = std::get_if<Unavailable>(&result))
        return failure("28P01",
                       "token authentication failed for user \"" + req_.user +
                           "\": the identity provider's signing keys are not available",
                       "jwt: no signing keys: " + u->why,
                       "The identity provider could not be reached; pgwicket's log says more. Try again later.");
    if (auto* e = std::get_if<jwt::JwtError>(&result))
        return failure("28P01", "token authentication failed for user \"" + req_.user + "\": " + e->message,
                       "jwt: " + e->message);
    const auto& id = std::get<jwt::Identity>(result);
    bool allowed = id.identity == req_.user;
    if (auto it = cfg.identity_map.find(id.identity); it != cfg.identity_map.end())
        for (const auto& u : it->second)
            allowed |= u == req_.user;
    if (!allowed)
        return failure("28000", "identity \"" + id.identity + "\" may not connect as user \"" + req_.user + "\"",
                       "jwt: identity \"" + id.identity + "\" is not mapped to user \"" + req_.user + "\"",
                       "Connect as \"" + id.identity + "\", or ask the operator to map the identity in [identity_map].");
    AuthResult ok;
    ok.ok = true;
    ok.identity = id.identity;
    ok.groups = id.groups;
    return ok;
}

std::string describe_connection(const AuthRequest& req)
{
    std::string s = req.local ? "local connection" : "host \"" + req.peer_host + "\"";
    return s + ", user \"" + req.user + "\", database \"" + req.database + "\", " +
           (req.conn.is_tls() ? "SSL encryption" : "no encryption");
}

} // namespace

AuthResult authenticate(const AuthRequest& req)
{
    ConnectionFacts facts{req.local, req.conn.is_tls(), req.peer, req.database, req.user};
    const Rule* rule = match_rule(req.cfg.rules, facts);
    if (!rule)
        return failure("28000", "no pgwicket rule for " + describe_connection(req), "no rule matched");
    const std::string where = rule->file + ":" + std::to_string(rule->line);
    Exchange ex(req);
    AuthResult r;
    switch (rule->method) {
    case Method::Trust:
    case Method::PassThrough:  // the upstream asks, through the session's relay
        r.ok = true;
        break;
    case Method::Reject:
        r = failure("28000", "pgwicket rejects connection for " + describe_connection(req), "rejected");
        break;
    case Method::Scram:
    case Method::Md5: {
        auto it = req.cfg.users.find(req.user);
        const std::string* secret = it == req.cfg.users.end() ? nullptr : &it->second;
        // As PostgreSQL: md5 is used only for an md5 secret; a SCRAM secret gets SCRAM.
        if (rule->method == Method::Md5 && secret && secret->rfind("md5", 0) == 0)
            r = ex.md5(*secret);
        else
            r = ex.scram(secret);
        break;
    }
    case Method::Jwt:
        r = ex.jwt(*rule);
        break;
    }
    r.method = rule->method;
    r.rule_policy = rule->policy;
    if (r.ok && r.identity.empty())
        r.identity = req.user;
    if (!r.ok && !r.log.empty())
        r.log += " (rule " + where + ", " + method_name(rule->method) + ")";
    return r;
}

} // namespace pgw::auth
