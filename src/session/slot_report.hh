// What a session shows of itself in its slot of the shared table: its state and since
// when, and its counters (bytes, statements by class, query cycles and their durations).
// The slot may be absent (no table): then nothing is written.
#pragma once

#include "ipc/session_table.hh"

#include <chrono>
#include <cstdint>
#include <string_view>

namespace pgw::session {

class SlotReport {
public:
    explicit SlotReport(ipc::Slot* slot) : slot_(slot) {}

    ipc::Slot* slot() const { return slot_; }
    void publish(ipc::SlotState st);
    void count(ipc::Counter c, std::uint64_t n = 1)
    {
        if (slot_)
            slot_->counters.add(c, n);
    }
    // A query cycle (first client message to ReadyForQuery) that took `us` microseconds.
    void query_done(std::uint64_t us);
    // A CommandComplete, counted by the class of its tag.
    void statement_done(std::string_view tag) { count(statement_class(tag)); }

    // The class of a statement by its command tag's first word. "SELECT n" from
    // SELECT INTO or CREATE TABLE AS counts as a read.
    static ipc::Counter statement_class(std::string_view tag);

private:
    ipc::Slot* slot_;
};

} // namespace pgw::session
