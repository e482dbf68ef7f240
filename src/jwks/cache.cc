// The key cache file and the worker's side of a refresh (see cache.hh).
#include "jwks/cache.hh"

#include "auth/json_util.hh"
#include "common/unique_fd.hh"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace pgw::jwks {

using auth::json_util::json;

namespace {

// The key set is at most 1 MiB (auth::jwt::kMaxJwksBytes); the rest is our own metadata.
constexpr size_t kMaxCacheBytes = (1 << 20) + 64 * 1024;

Status private_enough(const struct stat& st, const std::string& what)
{
    if (st.st_uid != geteuid())
        return Error{what + " belongs to uid " + std::to_string(st.st_uid) + ", not to pgwicket's uid " +
                     std::to_string(geteuid())};
    if (st.st_mode & (S_IWGRP | S_IWOTH))
        return Error{what + " is writable by other users (mode " + std::to_string((st.st_mode >> 6) & 7) +
                     std::to_string((st.st_mode >> 3) & 7) + std::to_string(st.st_mode & 7) + ")"};
    return ok_status();
}

} // namespace

std::string cache_file(const std::string& dir) { return dir + "/jwks.json"; }
std::string socket_path(const std::string& dir) { return dir + "/refresh"; }

std::string utc(std::int64_t unix_seconds) { return auth::jwt::format_utc(unix_seconds); }

Status ensure_private_dir(const std::string& dir)
{
    if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
        return Error{"could not create the key cache directory " + dir + ": " + std::strerror(errno)};
    struct stat st;
    if (::lstat(dir.c_str(), &st) != 0)
        return Error{dir + ": " + std::strerror(errno)};
    if (!S_ISDIR(st.st_mode))
        return Error{"the key cache " + dir + " is not a directory"};
    return private_enough(st, "the key cache directory " + dir);
}

Status write_cache(const std::string& dir, const std::string& fetch_for, const KeySet& set, std::int64_t fetched_at)
{
    std::string err;
    auto doc = auth::json_util::parse_object(set.jwks_json, err);
    if (!doc)
        return Error{"key set: " + err};
    (*doc)["pgwicket"] = json{{"for", fetch_for},
                              {"fetched_at", fetched_at},
                              {"expires_at", fetched_at + std::int64_t(set.lifetime.count())},
                              {"sources", set.sources}};
    const std::string text = doc->dump(1) + "\n";
    const std::string path = cache_file(dir), tmp = path + ".tmp";
    UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!fd.valid())
        return Error{tmp + ": " + std::strerror(errno)};
    size_t done = 0;
    while (done < text.size()) {
        ssize_t n = ::write(fd.get(), text.data() + done, text.size() - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return Error{tmp + ": " + std::strerror(errno)};
        done += size_t(n);
    }
    if (::fsync(fd.get()) != 0)
        return Error{tmp + ": fsync: " + std::strerror(errno)};
    fd.reset();
    if (::rename(tmp.c_str(), path.c_str()) != 0)
        return Error{path + ": rename: " + std::strerror(errno)};
    return ok_status();
}

Result<Cached> read_cache(const std::string& dir, const std::string& fetch_for)
{
    struct stat st;
    if (::lstat(dir.c_str(), &st) != 0)
        return Error{"no key cache directory " + dir + " (" + std::strerror(errno) + ")"};
    if (!S_ISDIR(st.st_mode))
        return Error{"the key cache " + dir + " is not a directory"};
    if (auto ok = private_enough(st, "the key cache directory " + dir); !ok)
        return Error{ok.error()};
    const std::string path = cache_file(dir);
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
    if (!fd.valid())
        return Error{errno == ENOENT ? "no keys fetched yet (" + path + " does not exist)"
                                     : path + ": " + std::strerror(errno)};
    if (::fstat(fd.get(), &st) != 0)
        return Error{path + ": " + std::strerror(errno)};
    if (!S_ISREG(st.st_mode))
        return Error{path + " is not a regular file"};
    if (auto ok = private_enough(st, path); !ok)
        return Error{ok.error()};
    if (size_t(st.st_size) > kMaxCacheBytes)
        return Error{path + " is too large"};
    std::string text(size_t(st.st_size), '\0');
    size_t done = 0;
    while (done < text.size()) {
        ssize_t n = ::read(fd.get(), text.data() + done, text.size() - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        done += size_t(n);
    }
    text.resize(done);
    std::string err;
    auto doc = auth::json_util::parse_object(text, err);
    if (!doc)
        return Error{path + ": " + err};
    auto meta = doc->find("pgwicket");
    if (meta == doc->end() || !meta->is_object())
        return Error{path + ": not written by pgwicket's key fetcher"};
    Cached c;
    try {
        if (meta->at("for").get<std::string>() != fetch_for)
            return Error{path + " holds keys fetched for another configuration (" +
                         meta->at("for").get<std::string>() + ")"};
        c.fetched_at = meta->at("fetched_at").get<std::int64_t>();
        c.expires_at = meta->at("expires_at").get<std::int64_t>();
        c.sources = meta->at("sources").get<std::vector<std::string>>();
    } catch (const std::exception&) {
        return Error{path + ": its \"pgwicket\" member is malformed"};
    }
    doc->erase("pgwicket");
    auto jwks = auth::jwt::Jwks::parse(doc->dump());
    if (!jwks)
        return Error{path + ": " + jwks.error()};
    for (const auto& k : jwks->keys())
        c.kids.push_back(k.kid);
    c.jwks = std::make_shared<const auth::jwt::Jwks>(std::move(*jwks));
    return c;
}

LoginKeys keys_for_login(const config::Config& cfg, const ipc::SessionTable* table, std::int64_t now_s)
{
    LoginKeys out;
    std::string last_error;
    if (table && table->valid())
        last_error = table->header()->jwks.error();
    auto cached = read_cache(cfg.jwks_cache_dir, cfg.jwks_fetch_for);
    if (!cached) {
        out.why_none = cached.error();
        if (!last_error.empty())
            out.why_none += "; the last fetch failed: " + last_error;
        return out;
    }
    const std::int64_t usable_until = cached->expires_at + cfg.jwt_jwks_max_stale;
    if (now_s > usable_until) {
        out.why_none = "the signing keys fetched at " + utc(cached->fetched_at) + " expired at " +
                       utc(cached->expires_at) + " and are past jwt_jwks_max_stale (" +
                       std::to_string(cfg.jwt_jwks_max_stale) + " s) since " + utc(usable_until);
        out.why_none += last_error.empty() ? "; no fetch has succeeded since" : "; the last fetch failed: " + last_error;
        return out;
    }
    out.jwks = cached->jwks;
    return out;
}

bool refresh_and_wait(const config::Config& cfg, const ipc::SessionTable& table, net::Clock::time_point deadline)
{
    if (!table.valid())
        return false;
    const ipc::JwksStatus& st = table.header()->jwks;
    const std::uint64_t before = st.attempts.load(std::memory_order_acquire);
    UniqueFd sock(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!sock.valid())
        return false;
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    const std::string path = socket_path(cfg.jwks_cache_dir);
    if (path.size() >= sizeof addr.sun_path)
        return false;
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    const char poke = 'r';
    if (::sendto(sock.get(), &poke, 1, 0, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 1)
        return false;  // no fetcher (starting again after a reload or a crash)
    // The fetcher fetches at once unless it fetched within jwt_jwks_min_refresh; then
    // it fetches when that has passed, and only a wait that lasts so long is worth it.
    const std::int64_t last = st.last_attempt_ms.load(std::memory_order_relaxed);
    const std::int64_t next_allowed = last + cfg.jwt_jwks_min_refresh * 1000;
    const auto wait_until = std::min(deadline, net::Clock::now() + kRefreshWait);
    if (last != 0 && next_allowed > ipc::wall_clock_ms() + net::ms_until(wait_until))
        return false;
    while (net::Clock::now() < wait_until) {
        if (st.attempts.load(std::memory_order_acquire) != before)
            return true;
        ::poll(nullptr, 0, 20);
    }
    return st.attempts.load(std::memory_order_acquire) != before;
}

} // namespace pgw::jwks
