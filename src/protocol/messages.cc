// Backend message encoders and ErrorResponse decoding (protocol 3.0, chapter 55).
#include "protocol/messages.hh"

namespace pgw::protocol {

Bytes error_response(const ErrorFields& e)
{
    Writer w;
    w.begin('E');
    w.u8('S');
    w.cstring(e.severity);
    w.u8('V');
    w.cstring(e.severity);
    w.u8('C');
    w.cstring(e.sqlstate);
    w.u8('M');
    w.cstring(e.message);
    if (!e.detail.empty()) {
        w.u8('D');
        w.cstring(e.detail);
    }
    if (!e.hint.empty()) {
        w.u8('H');
        w.cstring(e.hint);
    }
    w.u8(0);
    w.finish();
    return w.take();
}

Bytes fatal(std::string_view sqlstate, std::string_view message, std::string_view hint)
{
    ErrorFields e;
    e.sqlstate = std::string(sqlstate);
    e.message = std::string(message);
    e.hint = std::string(hint);
    return error_response(e);
}

Bytes authentication_ok()
{
    Writer w;
    w.begin('R');
    w.u32(0);
    w.finish();
    return w.take();
}

void parameter_status(Writer& w, std::string_view name, std::string_view value)
{
    w.begin('S');
    w.cstring(name);
    w.cstring(value);
    w.finish();
}

Bytes parameter_status(std::string_view name, std::string_view value)
{
    Writer w;
    parameter_status(w, name, value);
    return w.take();
}

Bytes backend_key_data(std::uint32_t pid, ByteSpan secret)
{
    Writer w;
    w.begin('K');
    w.u32(pid);
    w.raw(secret);
    w.finish();
    return w.take();
}

Bytes ready_for_query(char status)
{
    Writer w;
    w.begin('Z');
    w.u8(std::uint8_t(status));
    w.finish();
    return w.take();
}

Bytes row_description(const std::vector<std::string>& columns)
{
    constexpr std::uint32_t kTextOid = 25;
    Writer w;
    w.begin('T');
    w.u16(std::uint16_t(columns.size()));
    for (const auto& c : columns) {
        w.cstring(c);
        w.u32(0);  // not a table column
        w.u16(0);
        w.u32(kTextOid);
        w.u16(std::uint16_t(-1));  // variable length
        w.i32(-1);                 // no type modifier
        w.u16(0);                  // text format
    }
    w.finish();
    return w.take();
}

Bytes data_row(const std::vector<std::optional<std::string>>& values)
{
    Writer w;
    w.begin('D');
    w.u16(std::uint16_t(values.size()));
    for (const auto& v : values) {
        if (!v) {
            w.i32(-1);
            continue;
        }
        w.u32(std::uint32_t(v->size()));
        w.raw(as_bytes(*v));
    }
    w.finish();
    return w.take();
}

Bytes command_complete(std::string_view tag)
{
    Writer w;
    w.begin('C');
    w.cstring(tag);
    w.finish();
    return w.take();
}

Bytes empty_query_response()
{
    Writer w;
    w.begin('I');
    w.finish();
    return w.take();
}

Bytes negotiate_protocol_version(std::uint32_t newest_minor, const std::vector<std::string>& unknown)
{
    Writer w;
    w.begin('v');
    w.u32((3u << 16) | newest_minor);
    w.u32(std::uint32_t(unknown.size()));
    for (const auto& name : unknown)
        w.cstring(name);
    w.finish();
    return w.take();
}

std::optional<ErrorFields> decode_error_fields(ByteSpan body)
{
    Reader r(body);
    ErrorFields e;
    e.severity.clear();
    for (;;) {
        auto code = r.u8();
        if (!code)
            return std::nullopt;
        if (*code == 0)
            break;
        auto value = r.cstring();
        if (!value)
            return std::nullopt;
        switch (*code) {
        case 'V':
            e.severity = std::string(*value);
            break;
        case 'S':
            if (e.severity.empty())
                e.severity = std::string(*value);
            break;
        case 'C':
            e.sqlstate = std::string(*value);
            break;
        case 'M':
            e.message = std::string(*value);
            break;
        case 'D':
            e.detail = std::string(*value);
            break;
        case 'H':
            e.hint = std::string(*value);
            break;
        default:
            break;
        }
    }
    if (!r.empty())
        return std::nullopt;
    return e;
}

} // namespace pgw::protocol
