// A worker process's life: after fork, close what belongs to the supervisor,
// wait for one handoff, run that session, and _exit() with a named code.
#pragma once

#include "config/config.hh"
#include "ipc/session_table.hh"

#include <openssl/ssl.h>

#include <vector>

namespace pgw::session {

// Never returns. `close_fds` are the supervisor's descriptors the child inherited;
// `tls` is the client TLS context (null when client TLS is off).
[[noreturn]] void worker_main(const config::Config& cfg, const ipc::SessionTable& table, SSL_CTX* tls,
                              int channel, const std::vector<int>& close_fds);

} // namespace pgw::session
