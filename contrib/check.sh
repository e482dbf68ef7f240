#!/usr/bin/env bash
# Runs every test: `make check` in a normal build (build/, warnings as errors) and in an
# ASan+UBSan build (build-asan/). Ends with "N passed, N failed" over the test cases.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

bash contrib/install-deps.sh

# An in-tree build (./configure run in the source tree) stops out-of-tree
# builds from configuring; remove it (contrib/demo.sh rebuilds it when needed).
if [ -f config.status ]; then
    echo "check: removing the in-tree build (make distclean) so build/ and build-asan/ can configure"
    make distclean >/dev/null 2>&1 || rm -f config.status
fi

echo "check: autoreconf"
autoreconf -fi >/dev/null 2>&1 || autoreconf -fi

passed=0
failed=0
summary=()

# count_results DIR LABEL: adds the .trs results of DIR to the totals; sets `counted`.
counted=0
count_results()
{
    local dir=$1 label=$2 trs result name
    counted=0
    while IFS= read -r -d '' trs; do
        name=${trs#"$dir"/}
        name=${name%.trs}
        result=$(sed -n 's/^:test-result: //p' "$trs" | head -n 1)
        counted=$((counted + 1))
        # Boost.Test's short report ("N test cases out of M passed", "K test cases
        # out of M failed") gives the count of test cases; a program that crashed
        # before reporting counts as one failure.
        local log=${trs%.trs}.log cases_passed cases_failed
        cases_passed=$(sed -n 's/^ *\([0-9][0-9]*\) test cases\{0,1\} out of [0-9]* passed.*/\1/p' "$log" | tail -n 1)
        cases_failed=$(sed -n 's/^ *\([0-9][0-9]*\) test cases\{0,1\} out of [0-9]* failed.*/\1/p' "$log" | tail -n 1)
        cases_passed=${cases_passed:-0}
        cases_failed=${cases_failed:-0}
        # A script that is not a Boost.Test program (tests/soak/run-soak.sh) is one test case.
        if [ "$result" = PASS ] && [ "$cases_passed" -eq 0 ] && [ "$cases_failed" -eq 0 ]; then
            cases_passed=1
        fi
        case "$result" in
        PASS | XFAIL | SKIP) ;;
        *) if [ "$cases_failed" -eq 0 ]; then cases_failed=1; fi ;;
        esac
        passed=$((passed + cases_passed))
        failed=$((failed + cases_failed))
        summary+=("$label $name: ${result:-NO RESULT} ($cases_passed test cases passed, $cases_failed failed)")
    done < <(find "$dir/tests" -name '*.trs' -print0 2>/dev/null | sort -z)
}

# show_logs DIR: prints the logs of the test programs that did not pass.
show_logs()
{
    local dir=$1 log
    while IFS= read -r -d '' log; do
        if [ "$(basename "$log")" = test-suite.log ]; then
            continue
        fi
        if ! grep -qE '^:test-result: (PASS|XFAIL|SKIP)' "${log%.log}.trs" 2>/dev/null; then
            echo "----- $log"
            cat "$log"
        fi
    done < <(find "$dir/tests" -name '*.log' -print0 2>/dev/null | sort -z)
}

# build_and_check LABEL DIR CONFIGURE_ARGS...: configure out of tree, make, make check.
build_and_check()
{
    local label=$1 dir=$2
    shift 2
    echo "check: [$label] configure and build in $dir/"
    mkdir -p "$dir"
    rm -f "$dir"/tests/*/*.trs "$dir"/tests/*/*.log
    if ! (cd "$dir" && ../configure "$@" >configure.out 2>&1); then
        tail -n 30 "$dir/configure.out"
        failed=$((failed + 1))
        summary+=("$label configure: FAIL (see $dir/config.log)")
        return
    fi
    if ! make -C "$dir" -j2; then
        failed=$((failed + 1))
        summary+=("$label build: FAIL")
        return
    fi
    echo "check: [$label] make check"
    local ok=1
    make -C "$dir" -j2 check || ok=0
    count_results "$dir" "$label"
    if [ "$ok" -eq 0 ] || [ "$counted" -eq 0 ]; then
        show_logs "$dir"
    fi
    if [ "$counted" -eq 0 ]; then
        failed=$((failed + 1))
        summary+=("$label make check: FAIL (no test program ran)")
    fi
}

build_and_check normal build --enable-werror

# The fault soak (tests/soak/run-soak.sh) runs in the normal build only: a minute of load under
# ASan would not fit CI's time, and its timing checks would measure the sanitizer.
export SKIP_SOAK=1

# Leak checking stays on (the supervisor and the test programs are checked at exit;
# workers end with _exit(), which it does not check). Library leaks that are not
# ours go into contrib/lsan.supp.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$root/contrib/lsan.supp:print_suppressions=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
build_and_check asan build-asan \
    "CXXFLAGS=-g -O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
    "LDFLAGS=-fsanitize=address,undefined"

# A short run of every fuzz target (one per decoder), so none can rot unnoticed.
echo "check: [fuzz] every target for ${FUZZ_SECONDS:-5} s"
if FUZZ_SECONDS=${FUZZ_SECONDS:-5} bash tests/fuzz/build.sh; then
    passed=$((passed + 1))
    summary+=("fuzz tests/fuzz/build.sh: PASS")
else
    failed=$((failed + 1))
    summary+=("fuzz tests/fuzz/build.sh: FAIL (crash inputs under build-fuzz/artifacts/)")
fi

echo
for line in "${summary[@]}"; do
    echo "  $line"
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
