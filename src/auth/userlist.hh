// auth_file: users and their verifiers in PgBouncer's userlist.txt format,
// "name" "SCRAM-SHA-256$..." (or "md5..."), one per line.
#pragma once

#include "common/result.hh"

#include <map>
#include <string>

namespace pgw::auth {

// Users to their stored verifier text. SCRAM verifiers are checked here, so a bad
// paste is reported with file and line at start-up rather than at someone's login.
Result<std::map<std::string, std::string>> parse_userlist(const std::string& text, const std::string& name);
Result<std::map<std::string, std::string>> load_userlist(const std::string& path);

} // namespace pgw::auth
