// Result caps: the count per result restarts at each RowDescription; the row that would
// pass a cap is the first one dropped.
#include "session/result_caps.hh"

#include "common/log.hh"
#include "protocol/messages.hh"

namespace pgw::session {

void ResultCaps::set(long max_rows, long max_bytes, bool allow_override)
{
    max_rows_ = max_rows;
    max_bytes_ = max_bytes;
    allow_override_ = allow_override;
}

long ResultCaps::override_cap(const std::string& setting, long value, const policy::Policy& p)
{
    const bool rows = setting == "pgwicket.max_rows";
    long& cap = rows ? max_rows_ : max_bytes_;
    cap = value >= 0 ? value : rows ? p.max_rows : p.max_bytes;
    return cap;
}

const char* ResultCaps::on_server_message(char type, std::uint64_t size)
{
    if (!max_rows_ && !max_bytes_)
        return nullptr;
    if (type == 'T') {
        result_rows_ = result_bytes_ = 0;
        in_result_ = true;
        return nullptr;
    }
    if (type != 'D' || capped_)
        return nullptr;
    const char* what = nullptr;
    long limit = 0;
    if (max_rows_ && result_rows_ >= std::uint64_t(max_rows_)) {
        what = "max_rows";
        limit = max_rows_;
    } else if (max_bytes_ && in_result_ && result_bytes_ + size > std::uint64_t(max_bytes_)) {
        what = "max_bytes";
        limit = max_bytes_;
    } else {
        ++result_rows_;
        result_bytes_ += size;
        return nullptr;
    }
    capped_ = true;
    cap_what_ = std::string(what) + " = " + std::to_string(limit);
    log_info("result exceeds %s; cutting it and cancelling the query", cap_what_.c_str());
    return what;
}

std::optional<protocol::Bytes> ResultCaps::end_of_cut(bool cancelled, bool in_transaction)
{
    if (!capped_)
        return std::nullopt;
    capped_ = false;
    in_result_ = false;
    const bool error = cancelled && in_transaction;
    const std::string name = cap_what_.substr(0, cap_what_.find(' '));
    protocol::ErrorFields e;
    e.severity = error ? "ERROR" : "WARNING";
    e.sqlstate = error ? "54000" : "01000";
    e.message = "result cut at " + cap_what_ + " (pgwicket policy): " + std::to_string(result_rows_) +
                " rows sent" + (cancelled ? ", the query was cancelled" : "");
    e.hint = allow_override_ ? "SET pgwicket." + name + " = N raises the cap for this session (0: no cap)."
                             : "Ask the pgwicket operator to raise the policy's " + name + ".";
    protocol::Bytes out = protocol::error_response(e);
    if (error)
        return out;
    out[0] = std::byte('N');  // NoticeResponse: the same fields
    auto done = protocol::command_complete(cut_tag());
    out.insert(out.end(), done.begin(), done.end());
    return out;
}

} // namespace pgw::session
