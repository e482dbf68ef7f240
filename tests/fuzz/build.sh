#!/usr/bin/env bash
# Builds each libFuzzer target against only the sources it needs and runs it for
# FUZZ_SECONDS (default 20; 0 builds only). Exits non-zero if any target crashes.
#
#   tests/fuzz/build.sh                  build and run every target
#   tests/fuzz/build.sh framer config    only these (names without fuzz_)
#   FUZZ_OUT=dir   build/corpus/artifact directory (default: build-fuzz at the top)
#   CXX_FUZZ=...   compiler (default clang++; needs clang and libclang-rt-<ver>-dev)
set -euo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
here="$top/tests/fuzz"
out=${FUZZ_OUT:-$top/build-fuzz}
seconds=${FUZZ_SECONDS:-20}
cxx=${CXX_FUZZ:-clang++}
all_targets=(startup framer error_fields config jwt jwks scram sasl passthrough classify)
targets=("${@:-${all_targets[@]}}")

# shellcheck disable=SC2054 # the commas belong to -fsanitize=
cxxflags=(-std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
          -Wall -Wextra -Wformat=2 -Wshadow -I"$top/src" -I"$here")

sources_for() {
    case $1 in
    startup) echo "$top/src/protocol/startup.cc" ;;
    framer) echo "" ;;
    error_fields) echo "$top/src/protocol/messages.cc" ;;
    config) echo "$top/src/config/config.cc $top/src/config/options.cc $top/src/config/pool_keys.cc" \
        "$top/src/common/log.cc" \
        "$top/src/auth/rules.cc $top/src/auth/userlist.cc $top/src/auth/scram.cc $top/src/auth/base64.cc" \
        "$top/src/auth/ossl.cc $top/src/auth/jwt.cc $top/src/auth/json_util.cc" \
        "$top/src/policy/policy.cc $top/src/policy/classify.cc $top/src/policy/deep_stack.cc" ;;
    jwt) echo "$top/src/auth/base64.cc $top/src/auth/json_util.cc $top/src/auth/jwt.cc $top/src/auth/ossl.cc $top/src/auth/oauthbearer.cc" ;;
    jwks) echo "$top/src/jwks/documents.cc $top/src/auth/base64.cc $top/src/auth/json_util.cc $top/src/auth/jwt.cc $top/src/auth/ossl.cc" ;;
    scram) echo "$top/src/auth/base64.cc $top/src/auth/ossl.cc $top/src/auth/scram.cc" ;;
    sasl) echo "$top/src/auth/base64.cc $top/src/auth/ossl.cc $top/src/auth/scram.cc $top/src/auth/sasl_message.cc" ;;
    passthrough) echo "$top/src/upstream/login_relay.cc $top/src/protocol/messages.cc" ;;
    classify) echo "$top/src/policy/classify.cc $top/src/policy/deep_stack.cc" ;;
    *) echo "unknown fuzz target: $1 (known: ${all_targets[*]})" >&2; return 1 ;;
    esac
}

libs_for() {
    case $1 in
    config) echo "-lpg_query $(pkg-config --cflags --libs libpq inih openssl nlohmann_json libsystemd libprotobuf-c)" ;;
    jwt | jwks) pkg-config --cflags --libs openssl nlohmann_json ;;
    scram | sasl) pkg-config --cflags --libs openssl ;;
    classify) echo "-lpg_query $(pkg-config --cflags --libs libprotobuf-c)" ;;
    *) echo "" ;;
    esac
}

# A few valid inputs so the fuzzer starts from the interesting shapes (octal escapes:
# printf's \x is not POSIX).
seed() {
    local dir="$out/corpus/$1"
    mkdir -p "$dir"
    case $1 in
    startup)
        printf '\000\003\000\000user\000alice\000database\000db\000\000' >"$dir/startup30"
        printf '\000\003\000\002user\000u\000_pq_.x\000y\000\000' >"$dir/startup32"
        printf '\004\322\026\057' >"$dir/ssl"
        printf '\004\322\026\060' >"$dir/gssenc"
        printf '\004\322\026\056\000\000\000\001\000\000\000\002' >"$dir/cancel"
        ;;
    framer)
        # 5 control bytes (cap, inspect salt, stop type, chunk seed), then the stream.
        printf '\100\000\121\007\000Q\000\000\000\015select 1\000D\000\000\000\010abcdP\000\000\000\004' \
            >"$dir/mixed"
        printf '\020\001\000\003\000Q\000\000\000\077aaaa' >"$dir/over_cap"
        printf '\377\002\000\001\000C\000\000\000\002' >"$dir/violation"
        ;;
    error_fields)
        printf 'SERROR\000VERROR\000C42P01\000Mrelation\000Ddetail\000Hhint\000\000' >"$dir/full"
        printf 'SFATAL\000C28000\000Mno\000\000' >"$dir/fatal"
        ;;
    config)
        printf '[pgwicket]\nlisten_addr = 127.0.0.1, ::1\nlisten_port = 6432\nunix_socket_mode = 0700\nlog_level = debug\n[databases]\n* = host=a port=5432\nsales = host=b\n    dbname=s\n' \
            >"$dir/good"
        printf '[databases]\nx = host=a port\n' >"$dir/bad_conninfo"
        printf '[databases]\no = host=a pool_mode=session\n    pool_size = 5 options='"'"'-c pool_mode=x'"'"'\n' \
            >"$dir/pooled"
        ;;
    jwt)
        # First byte picks the decoder: 0 token, 1 JWKS, 2 base64, 3 OAUTHBEARER.
        printf '\000%s.%s.%s' "$(printf '{"alg":"ES256","kid":"k1"}' | basenc --base64url | tr -d '=\n')" \
            "$(printf '{"iss":"joe","aud":"aud","exp":1300819380,"sub":"x"}' | basenc --base64url | tr -d '=\n')" \
            'DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q' >"$dir/es256"
        printf '\001{"keys":[{"kty":"RSA","kid":"r","n":"AQAB","e":"AQAB"},{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}' \
            >"$dir/jwks"
        printf '\002Zm9vYg==' >"$dir/base64"
        printf '\003n,a=x=2Cy,\001auth=Bearer abc.def\001host=h\001\001' >"$dir/oauthbearer"
        ;;
    jwks)
        # First byte picks the decoder: 0 discovery, 1 Cache-Control, 2 JWKS (two split at a NUL).
        printf '\000{"issuer":"https://idp.example/","jwks_uri":"https://idp.example/keys"}' >"$dir/discovery"
        printf '\001public, max-age=3600, no-cache' >"$dir/cache_control"
        printf '\002{"keys":[{"kty":"EC","kid":"k1","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}\000{"keys":[]}' \
            >"$dir/jwks"
        ;;
    scram)
        # Byte 0: bit 0 verifier parse, bit 1 RFC 7677 server nonce, bit 2 unknown user;
        # byte 1: length of the client-first-message.
        printf '\001\000%s' 'SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=' \
            >"$dir/verifier"
        printf '\002\040%s%s' 'n,,n=user,r=rOprNGfwEbeRWgbNEkqO' \
            'c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=' \
            >"$dir/rfc7677"
        printf '\004\013%s%s' 'y,,n=,r=abc' 'c=eSws,r=abcdef,x=1,p=AAAA' >"$dir/mock"
        ;;
    sasl)
        # Byte 0: bit 0 unknown user; then the client's 'p' messages as sent.
        printf '\000p\000\000\000\066SCRAM-SHA-256\000\000\000\000\040n,,n=user,r=rOprNGfwEbeRWgbNEkqO%s' \
            'p\000\000\000\156c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=' \
            >"$dir/rfc7677"
        printf '\001p\377\377\377\377' >"$dir/huge_length"
        printf '\000p\000\000\000\026SCRAM-SHA-256\000\377\377\377\377' >"$dir/wrapping_length"
        ;;
    passthrough)
        # The server's stream; after each request the client's answer is one byte.
        printf 'R\000\000\000\052\000\000\000\012SCRAM-SHA-256-PLUS\000SCRAM-SHA-256\000\000\000R\000\000\000\045\000\000\000\013r=x,s=QSXCR+Q6sek8bf92,i=4096\002' \
            >"$dir/scram"
        printf 'R\000\000\000\010\000\000\000\000S\000\000\000\021TimeZone\000UTC\000K\000\000\000\014\000\000\020\222\336\255\276\357Z\000\000\000\005I' \
            >"$dir/trust"
        printf 'R\000\000\000\014\000\000\000\005salt\003E\000\000\000\027SFATAL\000C28P01\000Mno\000\000' >"$dir/md5"
        ;;
    classify)
        printf 'SELECT 1; DELETE FROM t' >"$dir/multi"
        printf 'WITH d AS (DELETE FROM t RETURNING *) SELECT lower(a) FROM d' >"$dir/cte"
        printf 'EXPLAIN (ANALYZE off) UPDATE t SET a = f(1)' >"$dir/explain"
        printf '/* a /* b */ */ SELECT $x$ ; $x$, E'"'"'\\'"'"'; x'"'"' -- c\n' >"$dir/lexing"
        printf 'COPY (SELECT * FROM t FOR UPDATE) TO STDOUT' >"$dir/copy"
        printf 'PREPARE p AS SELECT "MySchema"."F"(1); BEGIN READ WRITE; SET ROLE x' >"$dir/utility"
        ;;
    esac
}

mkdir -p "$out/artifacts"
failed=()
for t in "${targets[@]}"; do
    srcs=$(sources_for "$t")
    bin="$out/fuzz_$t"
    echo "== building fuzz_$t"
    # shellcheck disable=SC2046,SC2086 # the source and library lists are meant to split
    "$cxx" "${cxxflags[@]}" "$here/fuzz_$t.cc" $srcs $(libs_for "$t") -o "$bin"
    [ "$seconds" -gt 0 ] || continue

    seed "$t"
    extra=()
    [ -f "$here/$t.dict" ] && extra+=(-dict="$here/$t.dict")
    echo "== running fuzz_$t for ${seconds}s"
    if "$bin" "${extra[@]}" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$out/artifacts/$t-" "$out/corpus/$t" \
        >"$out/fuzz_$t.log" 2>&1; then
        grep -E '^(stat::number_of_executed_units|stat::new_units_added|Done )' "$out/fuzz_$t.log" || true
    else
        echo "!! fuzz_$t failed; see $out/fuzz_$t.log and $out/artifacts/$t-*" >&2
        grep -E 'ERROR|property failed|runtime error|SUMMARY' "$out/fuzz_$t.log" | head -5 >&2 || true
        failed+=("$t")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz targets that crashed: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz: all targets clean"
