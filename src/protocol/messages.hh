// Encoders for the backend messages pgwicket writes itself (errors, greeting),
// and decoders for the few relayed messages it inspects.
#pragma once

#include "protocol/bytes.hh"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pgw::protocol {

struct ErrorFields {
    std::string severity = "FATAL";  // ERROR, FATAL, PANIC, WARNING, NOTICE...
    std::string sqlstate;            // five characters
    std::string message;
    std::string detail;
    std::string hint;
};

Bytes error_response(const ErrorFields& e);
// Shorthand for the common FATAL.
Bytes fatal(std::string_view sqlstate, std::string_view message, std::string_view hint = {});

Bytes authentication_ok();
Bytes parameter_status(std::string_view name, std::string_view value);
// The same message appended to `w` (a greeting of many, without a buffer for each).
void parameter_status(Writer& w, std::string_view name, std::string_view value);
Bytes backend_key_data(std::uint32_t pid, ByteSpan secret);
Bytes ready_for_query(char status);
// 'v': the newest minor version we support plus the _pq_ options we did not recognise.
Bytes negotiate_protocol_version(std::uint32_t newest_minor, const std::vector<std::string>& unknown);

// A result set of text columns (type text, OID 25), as the admin console sends.
// A null optional in a row is SQL NULL.
Bytes row_description(const std::vector<std::string>& columns);
Bytes data_row(const std::vector<std::optional<std::string>>& values);
Bytes command_complete(std::string_view tag);
Bytes empty_query_response();

// Reads an ErrorResponse/NoticeResponse body. Returns nullopt when malformed.
std::optional<ErrorFields> decode_error_fields(ByteSpan body);

} // namespace pgw::protocol
