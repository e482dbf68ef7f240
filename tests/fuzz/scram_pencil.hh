// The SCRAM verifier for password "pencil" from RFC 7677's example (salt
// W22ZaJ0SNY7soEsUEjb6gQ==), shared by the SCRAM fuzz targets.
#pragma once

#include "auth/scram.hh"
#include "fuzz_check.hh"

inline const pgw::auth::scram::Verifier& pencil()
{
    static const pgw::auth::scram::Verifier v = [] {
        auto text = pgw::auth::scram::parse_verifier("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"
                                                     "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"
                                                     "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=");
        FUZZ_CHECK(text.ok());
        return *text;
    }();
    return v;
}
