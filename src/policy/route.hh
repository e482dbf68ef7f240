// Where a statement may run when an entry routes reads (read_routing = auto): on a
// standby only when the classifier proves it read-only; and whether it leaves state in
// the session that only the primary will have (which pins the session there for life).
#pragma once

#include "policy/classify.hh"

#include <string>

namespace pgw::policy {

struct RouteVerdict {
    // Every statement of the text may run on a standby with the same result as on the
    // primary: plain queries (SELECT, VALUES, TABLE, EXPLAIN of one, COPY ... TO STDOUT of
    // one) that the read-only rules allow, with no row locks and only allowlisted functions,
    // in every reading of the text that parses. Empty text is routable.
    bool standby = false;
    // It creates state that later statements depend on and that only the host that ran
    // it holds: settings, prepared statements, cursors, temporary objects, LISTEN,
    // advisory locks, sequence values, the role. Also every statement whose effect the
    // text cannot show (DO, CALL, EXECUTE) and every utility statement not known to be
    // harmless. A text that does not parse pins nothing (the server refuses it too).
    bool pins = false;
    // For logs: why not a standby (or why pinned), empty when routable.
    std::string why;
};

// The verdict for a query string (a Query's text or a Parse's), from its readings.
RouteVerdict route_verdict(const Classified& c, const FunctionAllowlist& allow);

} // namespace pgw::policy
