// pgwicket's entry point: flags, configuration, then the supervisor.
// Exit status: 0 ok, 1 configuration or start-up failure, 2 usage error.
#include "auth/scram.hh"
#include "common/log.hh"
#include "config/cli.hh"
#include "config/config.hh"
#include "jwks/fetcher.hh"
#include "supervisor/supervisor.hh"
#include "tls/server_tls.hh"

#include <termios.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <exception>
#include <string>
#include <vector>

namespace {

// --hash-password USER: one password from standard input (asked twice, without echo,
// on a terminal), printed as an auth_file line. The password is never echoed or stored.
int hash_password(const std::string& user)
{
    const bool tty = isatty(STDIN_FILENO) == 1;
    auto read_line = [&](const char* prompt, std::string& out) {
        termios saved{};
        if (tty) {
            std::fputs(prompt, stderr);
            tcgetattr(STDIN_FILENO, &saved);
            termios quiet = saved;
            quiet.c_lflag &= ~tcflag_t(ECHO);
            tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
        }
        bool ok = static_cast<bool>(std::getline(std::cin, out));
        if (tty) {
            tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved);
            std::fputs("\n", stderr);
        }
        if (!out.empty() && out.back() == '\r')
            out.pop_back();
        return ok;
    };
    std::string password, again;
    if (!read_line("Password: ", password) || password.empty()) {
        std::fprintf(stderr, "pgwicket: no password on standard input\n");
        return 1;
    }
    if (tty && (!read_line("Again: ", again) || again != password)) {
        std::fprintf(stderr, "pgwicket: the passwords do not match\n");
        return 1;
    }
    auto verifier = pgw::auth::scram::make_verifier(password);
    if (!verifier) {
        std::fprintf(stderr, "pgwicket: %s\n", verifier.error().c_str());
        return 1;
    }
    std::string quoted;
    for (char c : user)
        quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
    std::printf("\"%s\" \"%s\"\n", quoted.c_str(), verifier->c_str());
    return 0;
}

} // namespace

int main(int argc, char** argv)
{
    using namespace pgw;
    std::vector<std::string> args(argv + 1, argv + argc);
    auto cl = config::parse_command_line(args);
    if (!cl) {
        std::fprintf(stderr, "pgwicket: %s\nTry \"pgwicket --help\" for more information.\n",
                     cl.error().c_str());
        return 2;
    }
    if (cl->help) {
        std::fputs(config::usage_text("pgwicket").c_str(), stdout);
        return 0;
    }
    if (cl->version) {
        std::printf("pgwicket %s\n", PGWICKET_VERSION);
        return 0;
    }
    if (!cl->hash_password_user.empty())
        return hash_password(cl->hash_password_user);
    auto cfg = config::load_file(cl->config_path);
    if (!cfg) {
        std::fprintf(stderr, "%s\n", cfg.error().c_str());
        if (!cl->check_config)
            std::fprintf(stderr, "pgwicket: not started because of configuration errors\n");
        return 1;
    }
    if (auto tls = tls::make_server_context(*cfg); !tls) {
        std::fprintf(stderr, "%s\n", tls.error().c_str());
        if (!cl->check_config)
            std::fprintf(stderr, "pgwicket: not started because of configuration errors\n");
        return 1;
    }
    if (cl->check_config) {
        // The signing keys the key fetcher would fetch, fetched once now (the daemon
        // itself fetches in its key fetcher process, never in the supervisor).
        if (pgw::jwks::check_fetch(*cfg, stdout, stderr) != 0)
            return 1;
        std::printf("%s: configuration is valid\n", cl->config_path.c_str());
        return 0;
    }
    log::setup(config::log_settings(*cfg));
    try {
        return supervisor::run(*cfg);
    } catch (const std::exception& e) {
        log_error("internal error in supervisor: %s", e.what());
        return 1;
    }
}
