// Terminated mode: opening the upstream connection through libpq with the
// proxy's connection string, the client's startup parameters, under a deadline.
#pragma once

#include "common/net.hh"
#include "common/result.hh"
#include "config/config.hh"
#include "protocol/startup.hh"

#include <libpq-fe.h>
#include <signal.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace pgw::upstream {

// libpq can spend minutes inside one PQconnectPoll call, where no deadline of ours is
// looked at: a server that asks for 2^31 SCRAM iterations makes it compute PBKDF2 that
// long. While a PollWatchdog lives, SIGALRM at `deadline` ends the process, after writing
// the last words set below (the client's FATAL); connect() keeps one, 2 s past its own
// deadline. Not nested; one per process at a time.
class PollWatchdog {
public:
    explicit PollWatchdog(net::Clock::time_point deadline);
    ~PollWatchdog();
    PollWatchdog(const PollWatchdog&) = delete;
    PollWatchdog& operator=(const PollWatchdog&) = delete;

private:
    struct ::sigaction old_ {};
};
// What a watchdog that fires writes to `fd` first (-1: nothing), and the process's exit
// code then.
void set_watchdog_last_words(int fd, std::vector<std::byte> words, int exit_code);

struct PgConnDeleter {
    void operator()(PGconn* c) const { PQfinish(c); }
};
using PgConnPtr = std::unique_ptr<PGconn, PgConnDeleter>;

using Params = std::vector<std::pair<std::string, std::string>>;
// Sets a parameter, replacing its value when it is there already.
void put(Params& p, const std::string& key, const std::string& value);
// A parameter's value, or null when it is not set.
const std::string* get(const Params& p, const std::string& key);

struct ClientInfo {
    std::string user;
    std::string database;
    std::string host;  // client address without port, or [local]
    const protocol::StartupMessage* startup = nullptr;
    std::string identity;  // the SSO identity, when it is not the user name
    std::string role;      // from [roles]: the upstream user, overriding every other
    // Settings the session's policy puts on the upstream connection (statement_timeout).
    std::vector<std::pair<std::string, std::string>> settings;
};

// "<prefix> [<identity>@]<client address>": application_name upstream, before the
// client's own application_name is appended.
std::string application_name_base(const std::string& app_prefix, const ClientInfo& client);

// The libpq keywords for this client on this database entry (target_session_attrs=primary
// when the entry routes reads). Pure, for tests.
Result<Params> build_params(const config::DatabaseEntry& entry, const ClientInfo& client,
                            const std::string& app_prefix);

// "host=... port=... dbname=... user=..." without secrets, for messages and logs.
std::string describe(const Params& params);

// Escapes a value for the server's `options` (-c name=value): blanks and backslashes.
std::string escape_option_value(const std::string& v);

// Why a connect failed. When the server itself refused the login (wrong database,
// password, too many connections) its SQLSTATE and message are kept so the client
// gets the same error it would get directly.
struct ConnectFailure {
    std::string server_sqlstate;  // empty for network failures and timeouts
    std::string message;
};

// Whether the failure was the host's (refused, unreachable, timed out, closed): not an
// error the server sent (a wrong password, a missing database), nor a certificate the
// entry's own settings do not accept (its sslrootcert, a name that does not match).
// Only these pass the host over (ban_time) for every entry that uses it.
bool host_refused(const ConnectFailure& f);

// Connects without blocking past the deadline (PQconnectStartParams + PQconnectPoll).
// On failure returns an Error and fills *failure.
Result<PgConnPtr> connect(const Params& params, net::Clock::time_point deadline,
                          ConnectFailure* failure);

// Splits libpq's verbose connection error ("... failed: FATAL:  3D000: message") into
// SQLSTATE and message. Returns false when no server error is in the text.
bool parse_server_error(const std::string& libpq_message, std::string& sqlstate,
                        std::string& message);

// The ParameterStatus names a PostgreSQL server reports (GUC_REPORT), newest included.
const std::vector<const char*>& reported_parameters();

} // namespace pgw::upstream
