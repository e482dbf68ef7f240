#!/usr/bin/env bash
# Installs what building, testing, the demo and the bench of pgwicket need on Debian 12.
# Idempotent: installs only the packages that are missing, and prints nothing when none are.
# Packages named as arguments are installed too (contrib/package-check.sh adds its own).
set -euo pipefail

packages=(
    # build
    build-essential autoconf automake autoconf-archive pkg-config
    libpq-dev libssl-dev libsystemd-dev libinih-dev libboost-test-dev
    libpg-query-dev libprotobuf-c-dev nlohmann-json3-dev libcurl4-openssl-dev
    # tests, demo and bench: initdb/pg_ctl/postgres/pgbench (postgresql-15 ships
    # pgbench on Debian 12), psql, runuser (util-linux), ps/pkill (procps)
    postgresql-15 postgresql-client-15 openssl procps util-linux
    pgbouncer expect tmux
    # daemon tests: systemd-socket-activate (systemd), the metrics endpoint (curl)
    systemd curl
    # load balancer tests: HAProxy in front of three instances, the Kubernetes
    # manifests' check (contrib/kubernetes/check-manifests.py)
    haproxy python3 python3-yaml
    # contrib/audit (and the audit tests that run its jq one-liners)
    jq
    # the fault soak's clients (contrib/soak/soak.py, run by make check)
    python3-psycopg2
    # fuzz targets (tests/fuzz): clang with the libFuzzer runtime
    clang libclang-rt-14-dev
    "$@"
)

missing=()
for p in "${packages[@]}"; do
    if ! dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed'; then
        missing+=("$p")
    fi
done
[ "${#missing[@]}" -eq 0 ] && exit 0

as_root=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        as_root=(sudo)
    else
        echo "install-deps: missing packages: ${missing[*]}" >&2
        echo "install-deps: not root and no sudo; install them as root and re-run" >&2
        exit 1
    fi
fi

echo "install-deps: installing ${missing[*]}"
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
