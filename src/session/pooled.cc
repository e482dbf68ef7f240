// Pooled routes in a session: asking the supervisor for a route, moving to or serving on
// a warm worker's connection, passing a client the guess brought here on, min_pool_size.
#include "session/session_impl.hh"

#include "admin/console.hh"
#include "auth/rules.hh"
#include "common/held_signals.hh"
#include "ipc/fdpass.hh"
#include "pool/context.hh"
#include "pool/held.hh"
#include "session/relay.hh"

#include <openssl/err.h>
#include <poll.h>
#include <signal.h>

#include <algorithm>
#include <chrono>

namespace pgw::session {

bool Session::serves_elsewhere(const std::string& user, const std::string& database) const
{
    if (database == admin::kConsoleDatabase)
        return true;
    const config::DatabaseEntry* entry = cfg_.find_database(database);
    if (!entry)
        return false;  // refused here as anywhere
    if (!entry->pool.pooled)
        return true;
    const auth::Rule* rule = auth::match_rule(
        cfg_.rules, auth::ConnectionFacts{local(), false, local() ? nullptr : &handoff_.peer, database, user});
    return rule && rule->method == auth::Method::PassThrough;
}

ExitCode Session::pass_on()
{
    ipc::Handoff h = handoff_;
    h.type = ipc::HandoffType::PassOn;
    const std::string_view packet(reinterpret_cast<const char*>(startup_packet_.data()), startup_packet_.size());
    if (auto st = ipc::send_handoff(ws_.channel, h, client_.get(), packet); !st) {
        log_error("passing the client on to another worker: %s", st.error().c_str());
        return kExitChannelError;
    }
    log_debug("not for pool %s: client passed on to a spare", pool::route_label(ws_.held->route).c_str());
    return kExitHandedOver;
}

// Asks the supervisor for the route of each host in turn (the next one when a host does
// not take the connection: its place in the pool is given back first), and connects
// when told to. Returns the session's end when it does not go on here: moved to a warm
// worker, refused, or no host took it.
std::optional<ExitCode> Session::pooled_connect(const Login& login, const protocol::StartupMessage& startup,
                                                const config::DatabaseEntry& entry,
                                                const std::vector<health::Attempt>& tries)
{
    pool::SessionContext ctx;
    ctx.entry = entry.name;
    ctx.user = login.user;
    ctx.database = login.database;
    ctx.identity = login.identity;
    ctx.rule_policy = login.rule_policy;
    ctx.method = std::uint32_t(login.method);
    ctx.secret_length = std::uint32_t(secret_length_);
    ctx.protocol_minor = startup.minor;
    ctx.groups = login.groups;
    ctx.startup = startup.params;
    for (size_t i = 0;; ++i) {
        const std::string route = pool::route_key(entry.name, tries[i].params);
        const std::string where = upstream::describe(tries[i].params);
        ctx.route = route;
        auto answer = ask_for_route(ctx);
        if (!answer)
            return *answer.error_code;
        switch (*answer.type) {
        case ipc::HandoffType::HandedOver:
            if (relay_end_.valid())
                return relay_tls_client();
            log_debug("handed to a warm worker on route %s", pool::route_label(route).c_str());
            return kExitHandedOver;
        case ipc::HandoffType::PoolTimeout:
            log_info("refused: no connection of pool %s within query_wait_timeout (%ld s)",
                     pool::route_label(route).c_str(), cfg_.query_wait_timeout);
            return fail("53300",
                        "no upstream connection of pool \"" + pool::route_label(route) +
                            "\" became free within query_wait_timeout (" + std::to_string(cfg_.query_wait_timeout) +
                            " s)",
                        kExitRefused, "The pool is full (pool_size); try again later, or ask the operator to raise it.");
        default:
            break;  // Connect
        }
        relay_end_.reset();
        ws_.held.reset();  // another route's: the pool no longer counts it
        upstream::PgConnPtr conn;
        upstream::ConnectFailure why;
        if (try_host(tries[i], login.database, conn, why)) {
            log_info("connected to upstream (%s), backend pid %d%s; pooled on %s", where.c_str(),
                     PQbackendPID(conn.get()), PQsslInUse(conn.get()) ? ", TLS" : "",
                     pool::route_label(route).c_str());
            ws_.held = pool::hold(std::move(conn), route, where);
            ws_.held->watch = watch_of(ws_.held->conn.get());
            return std::nullopt;
        }
        if (i + 1 == tries.size())
            return connect_failed(why, where, login.database);
        log_warning("upstream connection failed (%s): %s; trying the next host", where.c_str(), why.message.c_str());
        // The supervisor counted a connection being opened on that route: not any more.
        if (auto st = ipc::send_message(ws_.channel, ipc::HandoffType::Released); !st) {
            log_error("telling the supervisor of a failed pooled connection: %s", st.error().c_str());
            return fail("08006", "pgwicket could not reach its pool", kExitChannelError);
        }
    }
}

// A session on a pooled route. The worker that authenticated the client asks the
// supervisor for the route: a plaintext client may move to a warm worker (this worker
// is then a spare again), otherwise this worker connects, or waits for room. A warm
// worker that received the client carries on with the connection it holds.
ExitCode Session::pooled_session(const Login& login, const protocol::StartupMessage& startup,
                                 const config::DatabaseEntry& entry, const std::vector<health::Attempt>& tries,
                                 const std::string& front_route)
{
    const health::Attempt& attempt = tries.front();
    const upstream::Params& params = attempt.params;
    const std::string route = front_route.empty() ? pool::route_key(entry.name, params) : front_route;
    const std::string where = upstream::describe(params);
    const std::string* app = upstream::get(params, "application_name");
    if (ws_.held && ws_.held->route != route && handoff_.type == ipc::HandoffType::MoveClient) {
        // The supervisor matched the asker's key; ours must agree.
        log_error("a client for route %s reached a worker warm on %s", route.c_str(), ws_.held->route.c_str());
        return fail("XX000", "pgwicket internal error: pooled connection of the wrong route", kExitInternal);
    }
    // A warm worker given a new connection guessed it would be for its route; when it is
    // for another, it asks for that one as a spare would, keeping its own meanwhile.
    if (!ws_.held || ws_.held->route != route) {
        if (auto code = pooled_connect(login, startup, entry, tries))
            return *code;
    } else {
        // Reused: make sure it still works (the socket is looked at unless the warm
        // wait that this client ended saw it silent a moment ago), and name the new
        // client upstream.
        auto& held = *ws_.held;
        const auto now = net::Clock::now();
        const auto deadline = now + std::chrono::seconds(cfg_.server_connect_timeout);
        Status ok = ok_status();
        if (!held.conn)
            ok = Error{"its reset failed"};
        else if (ipc::HostRole role{}; health::role_changed(*table_.header(), held.watch, &role))
            ok = Error{"its host " + held.watch.label + " is a " + health::role_name(role) + " now"};
        else if (now - held.quiet_at > std::chrono::milliseconds(10) && pool::stirred(held))
            ok = Error{"the server closed it or spoke while it was idle"};
        else if (now - held.checked >= std::chrono::seconds(cfg_.server_check_delay)) {
            // The route's startup settings hold the client's search_path: the check runs
            // with pg_catalog's functions and operators, never ones the client put first.
            ok = pool::simple_query(held,
                                    cfg_.server_check_query.empty()
                                        ? cfg_.server_check_query
                                        : "SET LOCAL search_path = pg_catalog, pg_temp; " + cfg_.server_check_query,
                                    deadline);
            held.checked = now;
        }
        if (!ok) {
            log_info("pooled connection (backend pid %u) is not usable (%s); connecting afresh", held.backend_pid,
                     ok.error().c_str());
            ws_.held.reset();
            upstream::PgConnPtr conn;
            if (auto code = connect_upstream({attempt}, login.database, conn))
                return *code;
            ws_.held = pool::hold(std::move(conn), route, where);
            ws_.held->watch = watch_of(ws_.held->conn.get());
        } else if (app && held.parameters["application_name"] != *app) {
            if (Status named = pool::set_application_name(held, *app, deadline); !named) {
                log_warning("pooled connection (backend pid %u): %s; closing it", held.backend_pid,
                            named.error().c_str());
                ws_.held.reset();
                return fail("08006", "pooled upstream connection failed: " + named.error(), kExitUpstreamFailure);
            }
        }
        log_debug("reusing pooled connection to %s (backend pid %u, session %u on it)", where.c_str(),
                  ws_.held->backend_pid, ws_.held->sessions + 1);
    }
    auto& held = *ws_.held;
    ++held.sessions;
    pool::mark_server(held, table_, pool::ServerState::Active);
    bool reusable = false;
    const ExitCode code = establish(held, &reusable);
    if (reusable)
        held.reset_pending = true;  // keep_warm resets it
    else
        ws_.held.reset();
    return code;
}

Session::RouteAnswer Session::ask_for_route(pool::SessionContext ctx)
{
    RouteAnswer answer;
    ipc::Handoff h = handoff_;
    h.type = ipc::HandoffType::NeedRoute;
    // A plaintext client may move to a warm worker. A TLS session cannot leave this
    // process: one end of a socket pair goes instead, and if the client is given to a
    // warm worker this one relays between them (relay_tls_client).
    int movable = client_.get();
    UniqueFd far_end;
    if (conn_.is_tls()) {
        int sv[2];
        movable = -1;
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) == 0) {
            relay_end_ = UniqueFd(sv[0]);
            far_end = UniqueFd(sv[1]);
            movable = sv[1];
            ctx.relayed_by = std::uint32_t(getpid());
        } else {
            log_warning("socketpair: %s; this TLS client cannot be given a warm connection", std::strerror(errno));
        }
    }
    if (auto st = ipc::send_handoff(ws_.channel, h, movable, pool::encode(ctx)); !st) {
        log_error("asking the supervisor for a pooled connection: %s", st.error().c_str());
        answer.error_code = fail("08006", "pgwicket could not reach its pool", kExitChannelError);
        return answer;
    }
    // SIGTERM and SIGINT are let in only inside ppoll(), so the wait (up to
    // query_wait_timeout, which the supervisor keeps) needs no tick.
    HeldSignals stop_signals{SIGTERM, SIGINT};
    // The client is watched too: it says nothing until it has its greeting, so its
    // socket wakes us only when it goes away (or breaks the protocol: then it is left to
    // the session). A client that gives up leaves the queue at once, with this process.
    // A TLS client's goodbye (close_notify) is a record like any other in TLS 1.3: it is
    // looked at with SSL_peek, which keeps any data it decrypts for the session.
    auto client_gone = [&](short revents) {
        if (revents & (POLLHUP | POLLRDHUP | POLLERR))
            return true;
        if (conn_.is_tls()) {
            char byte;
            ERR_clear_error();
            const int r = SSL_peek(conn_.ssl(), &byte, 1);
            if (r > 0)
                return false;
            const int e = SSL_get_error(conn_.ssl(), r);
            ERR_clear_error();
            return e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE;
        }
        char byte;
        return ::recv(client_.get(), &byte, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
    };
    bool watch_client = true;
    for (;;) {
        pollfd p[2] = {{ws_.channel, POLLIN, 0}, {client_.get(), POLLIN | POLLRDHUP, 0}};
        int n = g_stop_requested ? 0 : ::ppoll(p, watch_client ? 2 : 1, nullptr, stop_signals.wait_mask());
        if (g_stop_requested) {
            answer.error_code = fail("57P01", "terminating connection due to administrator command", kExitShutdown);
            return answer;
        }
        if (n > 0 && watch_client && p[1].revents) {
            if (client_gone(p[1].revents)) {
                log_info("the client left while waiting for a pooled connection of %s",
                         pool::route_label(ctx.route).c_str());
                answer.error_code = kExitOk;
                return answer;
            }
            // Bytes for the session (SSL_peek may also have read a record that was no
            // data, such as a key update: then the client is still watched).
            watch_client = conn_.is_tls() && SSL_has_pending(conn_.ssl()) != 1;
        }
        if (n <= 0 || !p[0].revents)
            continue;
        auto reply = ipc::receive_handoff(ws_.channel);
        if (!reply) {
            log_error("waiting for a pooled connection: %s", reply.error().c_str());
            answer.error_code = fail("08006", "pgwicket could not reach its pool", kExitChannelError);
            return answer;
        }
        switch (reply->handoff.type) {
        case ipc::HandoffType::Connect:
        case ipc::HandoffType::HandedOver:
        case ipc::HandoffType::PoolTimeout:
            answer.type = reply->handoff.type;
            return answer;
        default:
            log_error("unexpected message %u while waiting for a pooled connection", unsigned(reply->handoff.type));
            answer.error_code = fail("XX000", "pgwicket internal error while waiting for its pool", kExitInternal);
            return answer;
        }
    }
}

ExitCode Session::relay_tls_client()
{
    log_info("session given to a warm worker; relaying for this TLS client");
    // Our connection of another route, if we were warm: the supervisor has counted it gone.
    ws_.held.reset();
    upstream::TlsTransport client(conn_.ssl(), client_.get());
    upstream::PlainTransport worker(relay_end_.get());
    // No stop flag: the warm worker runs the session, and its end (a message to the
    // client included) reaches the client through here.
    const RelayOutcome out = relay(client, worker, 'I', nullptr);
    log_info("relay for the TLS client ended: %s", relay_end_name(out.end));
    return kExitOk;
}

ExitCode Session::moved_in()
{
    auto ctx = pool::decode_context(payload_);
    if (!ctx) {
        log_error("session moved in: %s", ctx.error().c_str());
        return kExitChannelError;
    }
    secret_length_ = ctx->secret_length == ipc::kSecretBytes ? ipc::kSecretBytes : 4;
    auto [login, startup] = login_of(std::move(*ctx));
    return proceed(login, startup);
}

namespace {

// The upstream parameters of a login with no client address on a pooled entry: what a
// prefill connects with, and what its route is keyed on.
Result<upstream::Params> prefill_params(const config::Config& cfg, const config::DatabaseEntry& entry,
                                        pool::SessionContext ctx)
{
    auto [login, startup] = login_of(std::move(ctx));
    const policy::Policy* policy = cfg.policy_for(login.groups, login.rule_policy, login.database);
    return upstream::build_params(entry, client_info(cfg, login, startup, "", policy), cfg.application_name_prefix);
}

// The connections a session of this entry could use, one host each as a session's host
// plan makes them, with their route keys: those that fit now first (`fits`), then the
// other hosts as written. An entry of several hosts that the health checker has not
// answered for yet gives one connection of every host (libpq chooses). `checked`: the
// health checker has answered for the host (always, for an entry of one host).
struct HostRoute {
    health::Attempt attempt;
    std::string route;
    bool fits = false;
    bool checked = true;
};
std::vector<HostRoute> host_routes(const config::DatabaseEntry& entry, const upstream::Params& params,
                                   ipc::TableHeader& hosts)
{
    const health::Attempts plan = health::plan_connection(params, entry.replicas, hosts);
    const bool one_host = health::hosts_of(params).size() <= 1;
    // (libpq's whole list, before any answer, has no row: not checked.)
    auto checked = [&](const health::Attempt& a) {
        return one_host ||
               (a.row >= 0 && health::read_host(hosts, std::uint32_t(a.row)).state != ipc::HostState::Unknown);
    };
    std::vector<HostRoute> out;
    for (const auto& a : plan.tries)
        out.push_back({a, pool::route_key(entry.name, a.params), true, checked(a)});
    for (const auto& a : plan.every) {
        std::string key = pool::route_key(entry.name, a.params);
        if (std::none_of(out.begin(), out.end(), [&](const HostRoute& h) { return h.route == key; }))
            out.push_back({a, std::move(key), false, checked(a)});
    }
    return out;
}

} // namespace

std::vector<pool::SessionContext> starting_contexts(const config::Config& cfg, const config::DatabaseEntry& entry,
                                                   ipc::TableHeader& hosts)
{
    if (!entry.pool.pooled || entry.name == "*" || cfg.min_pool_size_for(entry) <= 0)
        return {};
    pool::SessionContext ctx;
    ctx.entry = ctx.database = entry.name;
    ctx.method = std::uint32_t(auth::Method::Trust);
    ctx.startup = {{"user", ""}, {"database", entry.name}};
    // Which upstream user? Only the entry can say before a client comes: with no user
    // of its own, the client's name is used, and none is known yet.
    auto probe = prefill_params(cfg, entry, ctx);
    if (!probe)
        return {};
    const std::string* probed = upstream::get(*probe, "user");
    const std::string user = probed ? *probed : std::string();
    if (user.empty())
        return {};
    ctx.user = ctx.identity = ctx.startup[0].second = user;
    auto params = prefill_params(cfg, entry, ctx);
    if (!params)
        return {};
    // An entry of several hosts has a pool per host: a route for each host that takes
    // its sessions, once the health checker has answered for every host (until then
    // none: the supervisor asks again every few seconds, and so learns of hosts that
    // come to fit later).
    const auto routes = host_routes(entry, *params, hosts);
    if (std::any_of(routes.begin(), routes.end(), [](const HostRoute& h) { return !h.checked; }))
        return {};
    std::vector<pool::SessionContext> out;
    for (const auto& h : routes) {
        if (!h.fits)
            continue;
        ctx.route = h.route;
        out.push_back(ctx);
    }
    return out;
}

Result<std::vector<std::string>> routes_for(const config::Config& cfg, const pool::SessionContext& ctx,
                                            ipc::TableHeader& hosts)
{
    const config::DatabaseEntry* entry = cfg.find_entry(ctx.entry);
    if (!entry || !entry->pool.pooled)
        return Error{"entry \"" + ctx.entry + "\" is gone or no longer pooled"};
    auto params = prefill_params(cfg, *entry, ctx);
    if (!params)
        return Error{params.error()};
    std::vector<std::string> keys;
    for (auto& h : host_routes(*entry, *params, hosts))
        keys.push_back(std::move(h.route));
    return keys;
}

ExitCode prefill_route(const config::Config& cfg, ipc::TableHeader& hosts, const std::string& context,
                       WorkerState& ws)
{
    auto ctx = pool::decode_context(context);
    if (!ctx) {
        log_error("prefill: %s", ctx.error().c_str());
        return kExitChannelError;
    }
    log::set_prefix("pool " + pool::route_label(ctx->route) + ": ");
    const config::DatabaseEntry* entry = cfg.find_entry(ctx->entry);
    if (!entry || !entry->pool.pooled) {
        log_info("min_pool_size: entry \"%s\" is gone or no longer pooled", ctx->entry.c_str());
        return kExitOk;
    }
    // The same parameters the route's clients get (application_name aside, which each
    // client sets).
    const std::string route = ctx->route;
    auto all = prefill_params(cfg, *entry, std::move(*ctx));
    if (!all) {
        log_info("min_pool_size: the route's settings changed; not opening a connection");
        return kExitOk;
    }
    // The route's host (an entry of several hosts has a pool per host), as a session's
    // host plan would connect to it.
    const auto routes = host_routes(*entry, *all, hosts);
    auto mine = std::find_if(routes.begin(), routes.end(), [&](const HostRoute& h) { return h.route == route; });
    if (mine == routes.end()) {
        log_info("min_pool_size: the route's settings changed; not opening a connection");
        return kExitOk;
    }
    if (!mine->fits) {
        // Down, banned, lagging or of the wrong role: its minimum is dropped (the
        // supervisor's next look at the entry brings it back when the host fits again).
        log_info("min_pool_size: %s does not take this entry's sessions now; not opening a connection",
                 upstream::describe(mine->attempt.params).c_str());
        return kExitOk;
    }
    const upstream::Params& params = mine->attempt.params;
    const std::string where = upstream::describe(params);
    upstream::ConnectFailure why;
    auto conn = upstream::connect(params, net::Clock::now() + std::chrono::seconds(cfg.server_connect_timeout), &why);
    if (!conn) {
        log_warning("min_pool_size: upstream connection failed (%s): %s%s%s", where.c_str(),
                    why.server_sqlstate.c_str(), why.server_sqlstate.empty() ? "" : ": ", why.message.c_str());
        return kExitUpstreamFailure;
    }
    log_info("opened a connection for min_pool_size (%s), backend pid %d", where.c_str(), PQbackendPID(conn->get()));
    ws.held = pool::hold(std::move(*conn), route, where);
    return kExitOk;
}

} // namespace pgw::session
