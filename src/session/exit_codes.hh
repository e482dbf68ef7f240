// Named worker exit codes: the supervisor logs them by name when it reaps a worker.
// They say how the last session ended; 0 is a session (or an idle spare) that ended normally.
#pragma once

namespace pgw::session {

enum ExitCode : int {
    kExitOk = 0,               // session ended normally (client Terminate or close)
    kExitClientError = 3,      // bad startup packet or protocol violation from the client
    kExitUpstreamFailure = 4,  // upstream unreachable, login refused, or lost mid-session
    kExitRefused = 5,          // refused by policy: unknown database, max_client_conn, ...
    kExitChannelError = 6,     // the handoff from the supervisor failed
    kExitShutdown = 7,         // ended by SIGTERM/SIGINT (shutdown)
    kExitStartupTimeout = 8,   // the client did not finish its startup in time
    kExitInternal = 70,        // a broken invariant (an exception reached the worker's entry)
    // Never an exit status: run_session's answer when the client moved to a warm worker.
    kExitHandedOver = 1000,
};

inline const char* exit_code_name(int code)
{
    switch (code) {
    case kExitOk:
        return "ok";
    case kExitClientError:
        return "client protocol error";
    case kExitUpstreamFailure:
        return "upstream failure";
    case kExitRefused:
        return "refused";
    case kExitChannelError:
        return "handoff channel error";
    case kExitShutdown:
        return "shutdown";
    case kExitStartupTimeout:
        return "startup timeout";
    case kExitInternal:
        return "internal error";
    default:
        return "unknown";
    }
}

} // namespace pgw::session
