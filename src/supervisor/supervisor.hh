// The supervisor: one epoll loop over listeners and a signalfd. It accepts, hands
// each client fd to a pre-forked worker, reaps with status, and stops on SIGTERM/SIGINT.
#pragma once

#include "config/config.hh"

namespace pgw::supervisor {

// Runs until a stop signal; returns the process exit code.
int run(const config::Config& cfg);

} // namespace pgw::supervisor
