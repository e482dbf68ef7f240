#!/bin/sh
# make check entry: the fault soak (contrib/soak/soak.sh) for SOAK_SECONDS (60 here) against
# the binary just built. SKIP_SOAK=1 skips it (exit 77): contrib/check.sh sets it for the
# sanitizer build, where a minute of load would not fit CI's time and ASan's pace would
# make the soak's timing checks meaningless.
if [ "${SKIP_SOAK:-0}" = 1 ]; then
    echo "soak: skipped (SKIP_SOAK=1)"
    exit 77
fi
SOAK_SECONDS=${SOAK_SECONDS:-60} SOAK_QUIET=${SOAK_QUIET:-1} \
    exec bash "${top_srcdir:-.}/contrib/soak/soak.sh"
