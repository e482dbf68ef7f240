// libFuzzer target for the statement classifier: any text must classify or fail cleanly,
// and what comes back must keep the invariants the read-only policy relies on.
#include "fuzz_check.hh"
#include "policy/classify.hh"

#include <cstdint>
#include <string>
#include <string_view>

namespace pol = pgw::policy;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    std::string_view sql(reinterpret_cast<const char*>(data), size);
    // The other readings parse cleanly or fail cleanly, and leave the lexing setting
    // as it was (the primary reading after them equals the one before).
    auto readings = pol::classify_readings(sql);
    for (const auto& other : readings.others)
        FUZZ_CHECK(!other.how.empty() && (other.statements.ok() || !other.statements.error().empty()));
    bool high = false;
    for (char c : sql)
        high |= static_cast<unsigned char>(c) >= 0x80;
    FUZZ_CHECK(readings.others.empty() || high || sql.find('\\') != std::string_view::npos);
    auto r = pol::classify(sql);
    FUZZ_CHECK(r.ok() == readings.primary.ok());
    // Classifying twice gives the same answer (no state leaks between calls).
    auto again = pol::classify(sql);
    FUZZ_CHECK(r.ok() == again.ok());
    if (!r.ok()) {
        FUZZ_CHECK(!r.error().empty());
        return 0;
    }
    FUZZ_CHECK(r.value().size() == again.value().size());
    const auto& allow = pol::FunctionAllowlist::builtin();
    for (std::size_t i = 0; i < r.value().size(); ++i) {
        const pol::Statement& s = r.value()[i];
        FUZZ_CHECK(s.kind == again.value()[i].kind);
        FUZZ_CHECK(s.functions == again.value()[i].functions);
        FUZZ_CHECK(s.offset <= size && s.length <= size - s.offset);
        FUZZ_CHECK(s.involves(s.kind) && s.involves(s.inner));
        FUZZ_CHECK(!pol::kind_name(s.kind).empty());
        FUZZ_CHECK(pol::kind_from_name(pol::kind_name(s.kind)) == s.kind);
        // A statement that writes always says why, so it can never pass as read-only.
        FUZZ_CHECK(!s.writes || !s.not_read_only.empty());
        bool ro = pol::is_read_only(s, allow);
        FUZZ_CHECK(ro == pol::read_only_violation(s, allow).empty());
        FUZZ_CHECK(!(ro && s.writes));
        for (const std::string& fn : s.functions) {
            FUZZ_CHECK(!fn.empty());
            // A recorded name reads back as itself through the config syntax (which
            // refuses names of more than three parts, as PostgreSQL does later).
            auto canon = pol::canonical_function_name(fn);
            FUZZ_CHECK(!canon.ok() || canon.value() == fn);
        }
    }
    // A text and its literal_key classify alike when the cache would share them: the
    // same statements, kinds, functions and places.
    if (auto key = pol::literal_key(sql); key && pol::shareable_by_literal_key(r.value())) {
        FUZZ_CHECK(key->size() == size);
        auto k = pol::classify(*key);
        FUZZ_CHECK(k.ok() && k.value().size() == r.value().size());
        for (std::size_t i = 0; i < r.value().size(); ++i) {
            const pol::Statement& a = r.value()[i];
            const pol::Statement& b = k.value()[i];
            FUZZ_CHECK(a.kind == b.kind && a.kinds == b.kinds && a.functions == b.functions);
            FUZZ_CHECK(a.offset == b.offset && a.length == b.length && a.writes == b.writes);
        }
    }
    // Parseable text normalizes and fingerprints too.
    FUZZ_CHECK(pol::fingerprint(sql).ok());
    (void)pol::normalize(sql);
    return 0;
}
