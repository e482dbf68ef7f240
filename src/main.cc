// pgwicket's entry point: flags, configuration, then the supervisor.
// Exit status: 0 ok, 1 configuration or start-up failure, 2 usage error.
#include "common/log.hh"
#include "config/cli.hh"
#include "config/config.hh"
#include "supervisor/supervisor.hh"

#include <cstdio>
#include <exception>
#include <string>
#include <vector>

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
    auto cfg = config::load_file(cl->config_path);
    if (!cfg) {
        std::fprintf(stderr, "%s\n", cfg.error().c_str());
        if (!cl->check_config)
            std::fprintf(stderr, "pgwicket: not started because of configuration errors\n");
        return 1;
    }
    if (cl->check_config) {
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
