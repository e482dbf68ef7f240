// Unit tests for the pieces of an established session that need no sockets: the result
// caps (counting, the cut, the cut result's end) and the statement classes of the slot's
// counters.
#include "policy/policy.hh"
#include "protocol/messages.hh"
#include "session/result_caps.hh"
#include "session/slot_report.hh"

#include <boost/test/unit_test.hpp>

#include <string>

using namespace pgw;
using session::ResultCaps;

namespace {

// The messages of `bytes` as "type:field" text: an ErrorResponse or NoticeResponse by
// severity, SQLSTATE and message, a CommandComplete by its tag.
std::string describe(const protocol::Bytes& bytes)
{
    std::string out;
    for (size_t at = 0; at + 5 <= bytes.size();) {
        const char type = char(bytes[at]);
        const std::uint32_t len = protocol::load_be32(bytes.data() + at + 1);
        protocol::ByteSpan body(bytes.data() + at + 5, len - 4);
        if (type == 'E' || type == 'N') {
            auto f = protocol::decode_error_fields(body);
            out += std::string(1, type) + ":" + (f ? f->severity + " " + f->sqlstate + " " + f->message : "?") + ";";
        } else {
            out += std::string(1, type) + ":" + std::string(reinterpret_cast<const char*>(body.data()), body.size() - 1) + ";";
        }
        at += 1 + len;
    }
    return out;
}

} // namespace

BOOST_AUTO_TEST_SUITE(result_caps)

BOOST_AUTO_TEST_CASE(the_row_past_max_rows_starts_the_cut)
{
    ResultCaps caps;
    caps.set(3, 0, false);
    BOOST_TEST(caps.on_server_message('T', 30) == nullptr);
    for (int i = 0; i < 3; ++i) {
        BOOST_TEST(caps.on_server_message('D', 20) == nullptr);
        BOOST_TEST(!caps.drops('D'));
    }
    const char* what = caps.on_server_message('D', 20);
    BOOST_TEST_REQUIRE(what != nullptr);
    BOOST_TEST(std::string(what) == "max_rows");
    BOOST_TEST(caps.drops('D'));
    BOOST_TEST(!caps.drops('C'));
    BOOST_TEST(caps.on_server_message('D', 20) == nullptr, "a cut starts once");
    // All rows sent before the cancel landed: a WARNING and the count the client got.
    auto end = caps.end_of_cut(false, false);
    BOOST_TEST_REQUIRE(end.has_value());
    BOOST_TEST(describe(*end) == "N:WARNING 01000 result cut at max_rows = 3 (pgwicket policy): 3 rows sent;C:SELECT 3;");
    BOOST_TEST(!caps.cutting());
    BOOST_TEST(!caps.end_of_cut(false, false).has_value(), "no cut in progress");
}

BOOST_AUTO_TEST_CASE(a_cancelled_cut_is_an_error_inside_a_transaction)
{
    ResultCaps caps;
    caps.set(1, 0, true);
    caps.on_server_message('T', 30);
    caps.on_server_message('D', 20);
    BOOST_TEST_REQUIRE(caps.on_server_message('D', 20) != nullptr);
    auto end = caps.end_of_cut(true, true);
    BOOST_TEST_REQUIRE(end.has_value());
    BOOST_TEST(describe(*end) ==
               "E:ERROR 54000 result cut at max_rows = 1 (pgwicket policy): 1 rows sent, the query was cancelled;");
    // Outside a transaction the cancelled cut is a WARNING too.
    caps.on_ready_for_query();
    caps.on_server_message('T', 30);
    caps.on_server_message('D', 20);
    BOOST_TEST_REQUIRE(caps.on_server_message('D', 20) != nullptr);
    end = caps.end_of_cut(true, false);
    BOOST_TEST_REQUIRE(end.has_value());
    BOOST_TEST(describe(*end) == "N:WARNING 01000 result cut at max_rows = 1 (pgwicket policy): 1 rows sent, the "
                                 "query was cancelled;C:SELECT 1;");
}

BOOST_AUTO_TEST_CASE(max_bytes_counts_each_result_from_its_row_description)
{
    ResultCaps caps;
    caps.set(0, 100, false);
    caps.on_server_message('T', 30);
    BOOST_TEST(caps.on_server_message('D', 60) == nullptr);
    BOOST_TEST(caps.on_server_message('D', 40) == nullptr);  // exactly at the cap
    // A new result starts from zero.
    caps.on_server_message('C', 13);
    caps.on_server_message('T', 30);
    BOOST_TEST(caps.on_server_message('D', 90) == nullptr);
    const char* what = caps.on_server_message('D', 11);
    BOOST_TEST_REQUIRE(what != nullptr);
    BOOST_TEST(std::string(what) == "max_bytes");
}

BOOST_AUTO_TEST_CASE(no_caps_means_no_cut_and_overrides_follow_the_policy)
{
    ResultCaps caps;
    for (int i = 0; i < 1000; ++i)
        BOOST_TEST_REQUIRE(caps.on_server_message('D', 1000) == nullptr);
    policy::Policy p;
    p.max_rows = 5;
    p.max_bytes = 700;
    caps.set(p.max_rows, p.max_bytes, true);
    BOOST_TEST(caps.override_cap("pgwicket.max_rows", 50, p) == 50);
    BOOST_TEST(caps.override_cap("pgwicket.max_rows", -1, p) == 5);
    BOOST_TEST(caps.override_cap("pgwicket.max_bytes", 0, p) == 0);
    BOOST_TEST(caps.override_cap("pgwicket.max_bytes", -1, p) == 700);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(slot_report)

BOOST_AUTO_TEST_CASE(statements_are_classed_by_their_tag)
{
    using session::SlotReport;
    const std::pair<const char*, ipc::Counter> cases[] = {
        {"SELECT 3", ipc::kStatementsRead},      {"FETCH 10", ipc::kStatementsRead},
        {"SHOW", ipc::kStatementsRead},          {"INSERT 0 1", ipc::kStatementsWrite},
        {"COPY 5", ipc::kStatementsWrite},       {"MERGE 2", ipc::kStatementsWrite},
        {"CREATE TABLE", ipc::kStatementsDdl},   {"DROP INDEX", ipc::kStatementsDdl},
        {"BEGIN", ipc::kStatementsUtility},      {"SET", ipc::kStatementsUtility},
        {"SELECTED", ipc::kStatementsUtility},   {"", ipc::kStatementsUtility},
    };
    for (const auto& [tag, cls] : cases)
        BOOST_TEST(SlotReport::statement_class(tag) == cls, "tag \"" << tag << "\"");
    // Without a slot nothing is written, and nothing breaks.
    SlotReport none(nullptr);
    none.publish(ipc::SlotState::Active);
    none.query_done(1234);
    none.statement_done("SELECT 1");
}

BOOST_AUTO_TEST_SUITE_END()
