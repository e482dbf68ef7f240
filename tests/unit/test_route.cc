// Unit tests for read routing's verdict (src/policy/route.cc) over the routing corpus:
// which statements may run on a standby, and which pin the session to the primary.
#include "policy/classify.hh"
#include "policy/route.hh"
#include "../common/routing_corpus.hh"

#include <boost/test/unit_test.hpp>

namespace policy = pgw::policy;

BOOST_AUTO_TEST_SUITE(route)

BOOST_AUTO_TEST_CASE(every_corpus_statement_gets_its_place)
{
    const auto corpus = pgw::test::routing_corpus();
    BOOST_CHECK_GE(corpus.size(), 100u);
    size_t standby = 0, pins = 0;
    for (const auto& c : corpus) {
        const policy::RouteVerdict v = policy::route_verdict(policy::classify_readings(c.sql), policy::FunctionAllowlist::builtin());
        const std::string got = v.standby ? "standby" : v.pins ? "pin" : "primary";
        BOOST_CHECK_MESSAGE(got == c.where, "line " << c.line << ": " << c.sql << ": expected " << c.where << ", got "
                                                    << got << " (" << v.why << ")");
        BOOST_CHECK_MESSAGE(!(v.standby && v.pins), "line " << c.line << ": routable and pinning at once");
        standby += c.where == "standby";
        pins += c.where == "pin";
    }
    BOOST_CHECK_GE(standby, 30u);
    BOOST_CHECK_GE(pins, 30u);
}

BOOST_AUTO_TEST_CASE(a_text_the_server_may_read_another_way_is_judged_every_way)
{
    // With standard_conforming_strings off, the backslash ends the literal early and the
    // rest is a call the allowlist does not know: not routable.
    const auto v = policy::route_verdict(policy::classify_readings("SELECT 'a\\' , nextval('s') --'"),
                                         policy::FunctionAllowlist::builtin());
    BOOST_CHECK(!v.standby);
    BOOST_CHECK(v.pins);
    // Extra allowlisted functions (a policy's read_only_functions) make a call routable.
    auto allow = policy::FunctionAllowlist::with_extra({"f_ro"});
    BOOST_REQUIRE(allow.ok());
    BOOST_CHECK(policy::route_verdict(policy::classify_readings("SELECT f_ro(1)"), allow.value()).standby);
    BOOST_CHECK(!policy::route_verdict(policy::classify_readings("SELECT f_ro(1)"), policy::FunctionAllowlist::builtin())
                     .standby);
}

BOOST_AUTO_TEST_SUITE_END()
