// Entry point of the unit-test binary: Boost.Test's generated main().
// Test files own their suites; this file only names the module.
#define BOOST_TEST_MODULE pgwicket_unit
#include <boost/test/unit_test.hpp>
