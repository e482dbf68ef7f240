// A session's state and counters in its slot; only the slot's owner writes them.
#include "session/slot_report.hh"

#include <iterator>

namespace pgw::session {

void SlotReport::publish(ipc::SlotState st)
{
    if (!slot_)
        return;
    const auto now = std::chrono::system_clock::now().time_since_epoch();
    slot_->state_since_ms.store(std::chrono::duration_cast<std::chrono::milliseconds>(now).count(),
                                std::memory_order_relaxed);
    slot_->state.store(std::uint32_t(st), std::memory_order_release);
}

void SlotReport::query_done(std::uint64_t us)
{
    if (!slot_)
        return;
    ipc::Counters& c = slot_->counters;
    c.add(ipc::kQueries, 1);
    c.add(ipc::kQueryMicros, us);
    std::uint32_t bucket = ipc::kQueryBucketLast;
    for (std::uint32_t b = 0; b < std::size(ipc::kQueryBucketMicros); ++b)
        if (us <= ipc::kQueryBucketMicros[b]) {
            bucket = ipc::kQueryBucketFirst + b;
            break;
        }
    c.add(ipc::Counter(bucket), 1);
}

ipc::Counter SlotReport::statement_class(std::string_view tag)
{
    std::string_view verb = tag.substr(0, tag.find(' '));
    for (std::string_view w : {"SELECT", "FETCH", "MOVE", "SHOW", "EXPLAIN"})
        if (verb == w)
            return ipc::kStatementsRead;
    for (std::string_view w : {"INSERT", "UPDATE", "DELETE", "MERGE", "COPY", "TRUNCATE"})
        if (verb == w)
            return ipc::kStatementsWrite;
    for (std::string_view w : {"CREATE", "ALTER", "DROP", "COMMENT", "GRANT", "REVOKE", "SECURITY", "REFRESH", "IMPORT"})
        if (verb == w)
            return ipc::kStatementsDdl;
    return ipc::kStatementsUtility;
}

} // namespace pgw::session
