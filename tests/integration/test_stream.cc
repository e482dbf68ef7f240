// The relay streams: a result fifty times larger must not make the worker larger. Measures
// the peak RSS (VmHWM) of pgwicket's worker processes for a 100k-row and a 5M-row result.
#include "harness.hh"

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cstdlib>

using namespace pgw::it;

namespace {

struct StreamRun {
    long long rows = 0;
    long long bytes = 0;          // column data as libpq hands it out
    long worker_peak_kib = -1;    // VmHWM of the worker that served the session
    long children_peak_kib = -1;  // largest VmHWM among all the supervisor's children
    std::string error;
};

// Reads the result in single-row mode so the client never holds it, then, with the session
// still open, takes the peak RSS (VmHWM covers the whole transfer) of the worker holding the
// other end of our socket, and of every child of the supervisor for comparison.
StreamRun stream_rows(Proxy& proxy, long long n)
{
    StreamRun out;
    Conn c = connect_ok(proxy.conninfo("postgres", "postgres", "application_name=pgw_it_stream"));
    std::string sql =
        "SELECT g, repeat('x', 20) FROM generate_series(1, " + std::to_string(n) + ") g";
    if (!PQsendQuery(c.get(), sql.c_str()) || !PQsetSingleRowMode(c.get())) {
        out.error = PQerrorMessage(c.get());
        return out;
    }
    while (PGresult* r = PQgetResult(c.get())) {
        Result res(r);
        switch (PQresultStatus(r)) {
        case PGRES_SINGLE_TUPLE:
            ++out.rows;
            out.bytes += PQgetlength(r, 0, 0) + PQgetlength(r, 0, 1);
            break;
        case PGRES_TUPLES_OK:
            break;
        default:
            out.error = PQresultErrorMessage(r);
        }
    }
    pid_t worker = worker_serving(PQsocket(c.get()), proxy.port(), proxy.pid());
    if (worker > 0)
        out.worker_peak_kib = vm_hwm_kib(worker);
    for (pid_t child : children_of(proxy.pid()))
        out.children_peak_kib = std::max(out.children_peak_kib, vm_hwm_kib(child));
    BOOST_TEST(scalar(c.get(), "SELECT 'still there'") == "still there");
    return out;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(stream)

BOOST_AUTO_TEST_CASE(worker_memory_is_flat)
{
    // A pgwicket of its own, so no other session's worker is around. Under ASan, freed memory
    // sits in a quarantine (256 MB by default) and would count as RSS; keep it small here so
    // the figure measures pgwicket's buffering, not the sanitizer's.
    const char* asan = std::getenv("ASAN_OPTIONS");
    ProxyOptions opts;
    opts.env = {{"ASAN_OPTIONS", std::string(asan ? asan : "") + (asan && *asan ? ":" : "") +
                                     "quarantine_size_mb=1:thread_local_quarantine_size_kb=64"}};
    Proxy proxy("pgwicket-stream", opts);
    StreamRun small = stream_rows(proxy, 100000);
    BOOST_TEST_REQUIRE(small.error.empty(), small.error);
    BOOST_TEST(small.rows == 100000);
    StreamRun big = stream_rows(proxy, 5000000);
    BOOST_TEST_REQUIRE(big.error.empty(), big.error);
    BOOST_TEST(big.rows == 5000000);
    BOOST_TEST(big.bytes == 5000000LL * 20 + 33888896LL);  // "x" columns plus the digits of g

    for (const auto* run : {&small, &big})
        BOOST_TEST_MESSAGE("stream: " << run->rows << " rows, " << run->bytes
                                      << " bytes of column data: serving worker peak RSS "
                                      << run->worker_peak_kib << " KiB (largest child "
                                      << run->children_peak_kib << " KiB)");
    BOOST_TEST_REQUIRE(small.worker_peak_kib > 0, "the worker serving the session was not found");
    BOOST_TEST_REQUIRE(big.worker_peak_kib > 0, "the worker serving the session was not found");
    BOOST_TEST(big.worker_peak_kib <= small.worker_peak_kib + 8 * 1024,
               "worker memory grows with the result: " << small.worker_peak_kib << " KiB for 100k "
                                                       << "rows, " << big.worker_peak_kib
                                                       << " KiB for 5M rows");
    check_clean_stop(proxy);
}

BOOST_AUTO_TEST_SUITE_END()
