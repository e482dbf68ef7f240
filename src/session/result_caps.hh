// A session's result caps (max_rows, max_bytes): rows counted by their headers, the cut
// that starts at the row that would pass a cap, and what the client gets in place of the
// cut result's end.
#pragma once

#include "policy/policy.hh"
#include "protocol/bytes.hh"

#include <cstdint>
#include <optional>
#include <string>

namespace pgw::session {

class ResultCaps {
public:
    // The policy's caps (0: none) and whether SET pgwicket.max_rows/max_bytes may change them.
    void set(long max_rows, long max_bytes, bool allow_override);
    // SET pgwicket.max_rows / max_bytes that the policy allowed (value -1: back to the
    // policy's). Returns the cap now in force.
    long override_cap(const std::string& setting, long value, const policy::Policy& p);

    // Every server message header, with the message's size. Returns which cap a row
    // just passed ("max_rows", "max_bytes") when it starts a cut: the caller cancels the
    // query. From then on drops() is true for rows until the result ends.
    const char* on_server_message(char type, std::uint64_t size);
    bool drops(char type) const { return capped_ && type == 'D'; }
    bool cutting() const { return capped_; }
    // The end of a cut result: its CommandComplete (the rows were all sent before the
    // cancel landed) or the cancel's 57014. Outside a transaction, a WARNING and the
    // CommandComplete of the rows the client got; inside one, an ERROR, because the
    // cancel aborted the transaction on the server (the client sees the real state).
    // Nothing when no cut is in progress.
    std::optional<protocol::Bytes> end_of_cut(bool cancelled, bool in_transaction);
    // The command tag the client gets at the end of a cut result ("SELECT <rows sent>"),
    // which the audit trail records in place of the server's.
    std::string cut_tag() const { return "SELECT " + std::to_string(result_rows_); }
    void on_ready_for_query() { capped_ = in_result_ = false; }

private:
    long max_rows_ = 0, max_bytes_ = 0;
    bool allow_override_ = false;
    std::uint64_t result_rows_ = 0, result_bytes_ = 0;  // of the result in flight
    bool in_result_ = false;
    bool capped_ = false;
    std::string cap_what_;  // "max_rows = 5"
};

} // namespace pgw::session
