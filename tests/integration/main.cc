// Entry point of the integration test binary: Boost.Test's main; the shared cluster and
// pgwicket live in the global fixture of harness.cc.
#define BOOST_TEST_MODULE pgwicket_integration
#include <boost/test/unit_test.hpp>
