// The Prometheus endpoint: a worker answers one HTTP request on a connection the
// supervisor accepted on metrics_listen, then closes it.
#pragma once

#include "ipc/session_table.hh"

namespace pgw::admin {

// Reads one request (GET /metrics or GET /; GET /healthz: 200, or 503 while draining), answers it and returns a worker exit code.
int serve_metrics(int fd, const ipc::SessionTable& table);

} // namespace pgw::admin
