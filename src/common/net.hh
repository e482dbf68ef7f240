// Small socket helpers shared by the supervisor and the worker:
// non-blocking mode, peer names, and deadline-bounded blocking reads and writes.
#pragma once

#include "common/result.hh"

#include <sys/socket.h>

#include <chrono>
#include <cstddef>
#include <string>

namespace pgw::net {

using Clock = std::chrono::steady_clock;

Status set_nonblocking(int fd);

// What PostgreSQL sets on its client sockets: no Nagle delay (a reply written in
// two pieces would otherwise wait for the client's delayed ACK) and keepalives.
// A no-op for Unix sockets.
void tune_client_socket(int fd);
// The same options on a TCP listener: accepted sockets inherit them (Linux), which
// saves each session the system calls.
void tune_listener(int fd);

// "10.0.0.5:41234", "[::1]:41234", or "[local]" for a Unix socket.
std::string describe_peer(const sockaddr_storage& addr, socklen_t len);
// The address alone (no port), for places with little room such as application_name.
std::string peer_host(const sockaddr_storage& addr, socklen_t len);

// Milliseconds left until `deadline` (0 when passed), for poll().
int ms_until(Clock::time_point deadline);

enum class ReadStatus { Ok, Eof, Timeout, Error };
// Reads exactly n bytes from a non-blocking fd before the deadline.
// Eof means the peer closed before sending anything of this read or part of it.
ReadStatus read_exact(int fd, void* buf, size_t n, Clock::time_point deadline);
// Reads at least `min` and at most `max` bytes (what has arrived, in as few reads as
// it can) before the deadline; `got` says how many. Eof as for read_exact.
ReadStatus read_between(int fd, void* buf, size_t min, size_t max, Clock::time_point deadline, size_t& got);

// Whether bytes are waiting to be read on fd right now (not an EOF); never blocks.
bool readable_now(int fd);
// Reads and drops what has already arrived on fd (up to `limit` bytes); never blocks.
void discard_pending(int fd, size_t limit = 64 * 1024);

// Writes all of buf to a non-blocking fd before the deadline; false on error or timeout.
bool write_all(int fd, const void* buf, size_t n, Clock::time_point deadline);

// Ends our side of a connection gently after an error message: half-close, then
// discard what the peer still sends (at most `limit` bytes or until the deadline).
// Closing with unread input would send a RST, and the peer could lose our message.
void linger_close(int fd, Clock::time_point deadline, size_t limit = 256 * 1024);

} // namespace pgw::net
