// The key fetcher process and --check-config's fetch (see fetcher.hh). Its status goes
// to the session table's JwksStatus, which it alone writes.
#include "jwks/fetcher.hh"

#include "common/log.hh"
#include "common/net.hh"
#include "common/unique_fd.hh"
#include "jwks/cache.hh"
#include "jwks/fetch.hh"

#include <curl/curl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <set>

namespace pgw::jwks {
namespace {

using namespace std::chrono_literals;
using Clock = net::Clock;

// Retries after a failed fetch: 10 s, doubled up to 5 minutes (never sooner than
// jwt_jwks_min_refresh).
constexpr auto kFirstRetry = 10s;
constexpr auto kLongestRetry = 300s;

std::int64_t unix_now() { return std::int64_t(std::time(nullptr)); }

std::string join(const std::vector<std::string>& v, const char* sep = ", ")
{
    std::string out;
    for (const auto& s : v)
        out += (out.empty() ? "" : sep) + (s.empty() ? std::string("(no kid)") : s);
    return out;
}

Result<UniqueFd> bind_socket(const std::string& dir)
{
    const std::string path = socket_path(dir);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.size() >= sizeof addr.sun_path)
        return Error{path + ": too long for a Unix socket"};
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    UniqueFd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd.valid())
        return Error{std::string("socket: ") + std::strerror(errno)};
    ::unlink(path.c_str());  // the last fetcher's
    if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0)
        return Error{path + ": bind: " + std::strerror(errno)};
    ::chmod(path.c_str(), 0600);
    return fd;
}

class Fetcher {
public:
    Fetcher(const config::Config& cfg, ipc::JwksStatus& status)
        : cfg_(cfg), status_(status), settings_(settings_from(cfg))
    {
    }
    int run();

private:
    void fetch();
    std::string fallback_state(std::int64_t now_s) const;

    const config::Config& cfg_;
    ipc::JwksStatus& status_;
    FetchSettings settings_;
    // The set in the cache (from the last fetcher, if its file is for this configuration).
    bool have_set_ = false;
    std::int64_t fetched_at_ = 0, expires_at_ = 0;
    std::vector<std::string> kids_;
    int failures_ = 0;
    Clock::time_point next_fetch_{};
};

std::string Fetcher::fallback_state(std::int64_t now_s) const
{
    if (!have_set_)
        return "no signing keys: jwt logins fail until a fetch succeeds";
    const std::int64_t until = expires_at_ + cfg_.jwt_jwks_max_stale;
    if (now_s > until)
        return "the keys fetched at " + utc(fetched_at_) + " are past jwt_jwks_max_stale since " + utc(until) +
               ": jwt logins fail until a fetch succeeds";
    return "the keys fetched at " + utc(fetched_at_) + " stay in use until " + utc(until);
}

void Fetcher::fetch()
{
    auto set = fetch_keys(settings_);
    const std::int64_t now_s = unix_now();
    Status written = ok_status();
    if (set)
        written = write_cache(cfg_.jwks_cache_dir, cfg_.jwks_fetch_for, *set, now_s);
    status_.last_attempt_ms.store(ipc::wall_clock_ms(), std::memory_order_relaxed);
    if (set && written) {
        const std::set<std::string> before(kids_.begin(), kids_.end()), after(set->kids.begin(), set->kids.end());
        std::vector<std::string> added, removed;
        for (const auto& k : after)
            if (!before.count(k))
                added.push_back(k);
        for (const auto& k : before)
            if (!after.count(k))
                removed.push_back(k);
        if (!have_set_)
            log_info("fetched %zu signing key%s (%s) from %s; next fetch in %lld s", set->kids.size(),
                     set->kids.size() == 1 ? "" : "s", join(set->kids).c_str(), join(set->sources).c_str(), (long long)set->lifetime.count());
        else if (!added.empty() || !removed.empty()) {
            log_info("signing keys changed at %s: added %s; removed %s; next fetch in %lld s",
                     join(set->sources).c_str(), added.empty() ? "none" : join(added).c_str(),
                     removed.empty() ? "none" : join(removed).c_str(), (long long)set->lifetime.count());
            ipc::SessionTable::bump(status_.key_changes);
        } else
            log_debug("signing keys unchanged (%s); next fetch in %lld s", join(set->kids).c_str(),
                      (long long)set->lifetime.count());
        if (!have_set_ || !added.empty())
            for (const auto& n : set->notes)
                log_warning("signing keys from %s: %s", join(set->sources).c_str(), n.c_str());
        if (failures_ > 0)
            log_info("signing keys fetched again after %d failed attempt%s", failures_, failures_ == 1 ? "" : "s");
        have_set_ = true;
        fetched_at_ = now_s;
        expires_at_ = now_s + set->lifetime.count();
        kids_ = set->kids;
        failures_ = 0;
        next_fetch_ = Clock::now() + set->lifetime;
        status_.set_error("");
        status_.last_success_ms.store(ipc::wall_clock_ms(), std::memory_order_relaxed);
        status_.expires_ms.store(expires_at_ * 1000, std::memory_order_relaxed);
        status_.keys.store(std::uint32_t(kids_.size()), std::memory_order_relaxed);
        ipc::SessionTable::bump(status_.fetched_ok);
    } else {
        const std::string why = set ? "could not write the key cache: " + written.error() : set.error();
        ++failures_;
        auto retry = kFirstRetry * (1 << std::min(failures_ - 1, 6));
        retry = std::max<std::chrono::seconds>(std::min<std::chrono::seconds>(retry, kLongestRetry),
                                               std::chrono::seconds(cfg_.jwt_jwks_min_refresh));
        next_fetch_ = Clock::now() + retry;
        log_warning("could not fetch the signing keys: %s; %s; trying again in %lld s", why.c_str(),
                    fallback_state(now_s).c_str(), (long long)retry.count());
        status_.set_error(why);
        ipc::SessionTable::bump(status_.fetch_failed);
    }
    // Last, with release: a worker that sees the count move sees the file and the rest.
    status_.attempts.fetch_add(1, std::memory_order_release);
}

int Fetcher::run()
{
    if (auto ok = ensure_private_dir(cfg_.jwks_cache_dir); !ok) {
        log_error("key fetcher: %s", ok.error().c_str());
        return 1;
    }
    auto sock = bind_socket(cfg_.jwks_cache_dir);
    if (!sock) {
        log_error("key fetcher: %s", sock.error().c_str());
        return 1;
    }
    const std::int64_t now_ms = ipc::wall_clock_ms();
    if (auto cached = read_cache(cfg_.jwks_cache_dir, cfg_.jwks_fetch_for)) {
        have_set_ = true;
        fetched_at_ = cached->fetched_at;
        expires_at_ = cached->expires_at;
        kids_ = cached->kids;
        status_.keys.store(std::uint32_t(kids_.size()), std::memory_order_relaxed);
        status_.expires_ms.store(expires_at_ * 1000, std::memory_order_relaxed);
        if (status_.last_success_ms.load(std::memory_order_relaxed) == 0)
            status_.last_success_ms.store(fetched_at_ * 1000, std::memory_order_relaxed);
    }
    // Started (or restarted by a reload): fetch now, unless a fetch ended within
    // jwt_jwks_min_refresh; then when the cached set expires, or when that has passed.
    const std::int64_t last = status_.last_attempt_ms.load(std::memory_order_relaxed);
    const std::int64_t min_refresh_ms = cfg_.jwt_jwks_min_refresh * 1000;
    next_fetch_ = Clock::now();
    if (last != 0 && now_ms - last < min_refresh_ms) {
        const std::int64_t at_ms = have_set_ ? std::max(expires_at_ * 1000, last + min_refresh_ms) : last + min_refresh_ms;
        next_fetch_ += std::chrono::milliseconds(at_ms - now_ms);
    }
    log_debug("key fetcher: keys for %s, cache %s", cfg_.jwks_fetch_for.c_str(), cfg_.jwks_cache_dir.c_str());
    for (;;) {
        const Clock::time_point now = Clock::now();
        if (now >= next_fetch_) {
            fetch();
            continue;
        }
        pollfd p{sock->get(), POLLIN, 0};
        const int timeout = std::min(net::ms_until(next_fetch_), 60 * 1000);
        int n = ::poll(&p, 1, std::max(timeout, 1));
        if (n < 0 && errno != EINTR) {
            log_error("key fetcher: poll: %s", std::strerror(errno));
            return 1;
        }
        if (n <= 0)
            continue;
        std::uint64_t asked = 0;
        char buf[16];
        while (::recv(sock->get(), buf, sizeof buf, 0) >= 0)
            ++asked;
        if (asked == 0)
            continue;
        ipc::SessionTable::bump(status_.refresh_requests, asked);
        // A worker met an unknown kid (or has no keys): fetch now, or as soon as
        // jwt_jwks_min_refresh allows.
        const std::int64_t since_last = ipc::wall_clock_ms() - status_.last_attempt_ms.load(std::memory_order_relaxed);
        const auto earliest =
            Clock::now() + std::chrono::milliseconds(std::max<std::int64_t>(0, min_refresh_ms - since_last));
        next_fetch_ = std::min(next_fetch_, earliest);
    }
}

} // namespace

bool fetcher_wanted(const config::Config& cfg) { return !cfg.jwks_fetch_for.empty(); }

int fetcher_main(const config::Config& cfg, const ipc::SessionTable& table)
{
    if (!fetcher_wanted(cfg) || !table.valid())
        return 0;
    // Once, before any thread exists (libcurl's resolver makes them per request).
    curl_global_init(CURL_GLOBAL_DEFAULT);
    Fetcher f(cfg, table.header()->jwks);
    return f.run();
}

int check_fetch(const config::Config& cfg, std::FILE* out, std::FILE* err)
{
    if (!fetcher_wanted(cfg))
        return 0;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    struct Cleanup {
        ~Cleanup() { curl_global_cleanup(); }
    } cleanup;
    const FetchSettings settings = settings_from(cfg);
    const std::string what = settings.jwks_uri.empty() ? "discovery of " + join(settings.issuers)
                                                       : "jwt_jwks_uri";
    auto set = fetch_keys(settings);
    if (set) {
        std::fprintf(out, "jwt: %zu signing key%s (%s) from %s (%s); cache lifetime %lld s\n", set->kids.size(),
                     set->kids.size() == 1 ? "" : "s", join(set->kids).c_str(), join(set->sources).c_str(),
                     what.c_str(), (long long)set->lifetime.count());
        for (const auto& n : set->notes)
            std::fprintf(out, "jwt: note: %s\n", n.c_str());
        return 0;
    }
    std::fprintf(err, "jwt: could not fetch the signing keys (%s): %s\n", what.c_str(), set.error().c_str());
    auto cached = read_cache(cfg.jwks_cache_dir, cfg.jwks_fetch_for);
    const std::int64_t now = unix_now();
    if (cached && now <= cached->expires_at + cfg.jwt_jwks_max_stale) {
        std::fprintf(out, "jwt: pgwicket would use the %zu keys fetched at %s (in %s) until %s\n",
                     cached->kids.size(), utc(cached->fetched_at).c_str(), cfg.jwks_cache_dir.c_str(),
                     utc(cached->expires_at + cfg.jwt_jwks_max_stale).c_str());
        return 0;
    }
    std::fprintf(err, "jwt: and no usable cached keys (%s): jwt logins would fail\n",
                 cached ? "past jwt_jwks_max_stale" : cached.error().c_str());
    return 1;
}

} // namespace pgw::jwks
