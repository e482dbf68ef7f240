#!/usr/bin/env bash
# The fault soak: a throwaway PostgreSQL 15 cluster and the real pgwicket binary, set up
# here; contrib/soak/soak.py runs the clients and the faults, checks and reports.
# SOAK_SECONDS (600) sets the length; the exit status is soak.py's (0: every check passed).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=contrib/lib.sh
source "$root/contrib/lib.sh"

label=soak
secs=${SOAK_SECONDS:-600}
python=${SOAK_PYTHON:-/usr/bin/python3}
export PYTHONDONTWRITEBYTECODE=1  # no __pycache__ in the source tree
bin=$(pgw_binary "$root" "$label") || exit 1
for tool in "$PG_BINDIR/initdb" "$PG_BINDIR/pg_ctl" "$PG_BINDIR/pgbench" "$PG_BINDIR/psql" openssl; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "$label: $tool not found; run contrib/install-deps.sh" >&2
        exit 1
    fi
done
if ! "$python" -c 'import psycopg2' 2>/dev/null; then
    echo "$label: $python has no psycopg2; run contrib/install-deps.sh (python3-psycopg2)" >&2
    exit 1
fi

work=$(work_dir pgwicket-soak)
pgdata=$work/pg
audit_dir=$work/audit
pgw_pid=
audit_mounted=0

# shellcheck disable=SC2317  # run by the EXIT trap
cleanup()
{
    trap - EXIT INT TERM
    pgw_stop
    pg_stop "$pgdata"
    if [ "$audit_mounted" = 1 ]; then
        if [ "${SOAK_KEEP:-0}" = 1 ]; then
            cp "$audit_dir/audit.jsonl" "$work/audit.jsonl" 2>/dev/null || true
        fi
        umount "$audit_dir" 2>/dev/null || umount -l "$audit_dir" 2>/dev/null || true
    fi
    if [ "${SOAK_KEEP:-0}" = 1 ]; then
        echo "$label: logs and data kept in $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The audit file's disk, which the soak fills up and frees again: a tmpfs of its own, so
# nothing else on the machine runs out of space. Mounting needs root (CAP_SYS_ADMIN); an
# unprivileged user can mount neither a tmpfs nor a loop device, and RLIMIT_FSIZE cannot be
# put on a daemon that is already running, so without root the audit file is on the work
# folder's disk and the disk-full fault is skipped (the report says so).
# The trail grows by about 20 MiB a minute here; filling a larger tmpfs only costs time.
audit_mb=${SOAK_AUDIT_MB:-$((64 + secs / 2))}
mkdir -p "$audit_dir"
if [ "$(id -u)" -eq 0 ] && mount -t tmpfs -o "size=${audit_mb}m,mode=0755" pgwicket-soak-audit "$audit_dir"; then
    audit_mounted=1
fi

echo "$label: PostgreSQL 15 cluster in $work"
pg_init "$pgdata"
pgport=$(free_port 55432)
pg_start "$pgdata" "$pgport" "-c max_connections=300 -c fsync=off -c synchronous_commit=off"
psql_pg()
{
    "$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$pgport" -U postgres "$@"
}
# Logins go through pgwicket's own auth file (SCRAM: the verifiers PostgreSQL made) and
# tokens (jwt over TLS); upstream, the cluster trusts 127.0.0.1.
psql_pg -d postgres <<'SQL'
CREATE ROLE soak LOGIN SUPERUSER PASSWORD 'soak-password';
CREATE ROLE soakadmin PASSWORD 'soakadmin-password';
CREATE ROLE soakjwt LOGIN SUPERUSER;
CREATE TABLE soak_copy (client int, n int, payload text);
CREATE TABLE soak_txn (client int, n int);
SQL
psql_pg -d postgres -At -c "SELECT format('\"%s\" \"%s\"', rolname, rolpassword) FROM pg_authid
    WHERE rolname IN ('soak', 'soakadmin')" >"$work/userlist.txt"
"$PG_BINDIR/pgbench" -i -q -s 1 -h 127.0.0.1 -p "$pgport" -U postgres postgres >"$work/pgbench-init.log" 2>&1 || {
    cat "$work/pgbench-init.log" >&2
    exit 1
}

tls_certs "$work/tls" "$label" || exit 1
"$python" "$root/contrib/soak/soak.py" jwks --work "$work"
printf '%s\n' "host pgwicket soakadmin 127.0.0.1/32 scram-sha-256" \
    "hostssl all soakjwt 127.0.0.1/32 jwt" \
    "host all soak 127.0.0.1/32 scram-sha-256" >"$work/hba.conf"

# Every session has the policy "soak": TRUNCATE is denied, results are cut at 1000 rows.
# "pooled" is a session-pooled route to the same database.
PGW_EXTRA_SETTINGS="max_client_conn = 200
spare_workers = 4
auth_type = hba
auth_hba_file = $work/hba.conf
auth_file = $work/userlist.txt
client_tls_sslmode = prefer
client_tls_cert_file = $work/tls/server.crt
client_tls_key_file = $work/tls/server.key
jwt_jwks_file = $work/jwks.json
jwt_issuer = https://soak.pgwicket.test
jwt_audience = pgwicket-soak
admin_users = soakadmin
audit_file = $audit_dir/audit.jsonl
audit_statement_text = full
audit_parameters = on
default_policy = soak
server_connect_timeout = 5" \
    PGW_EXTRA_DATABASES="pooled = host=127.0.0.1 port=$pgport dbname=postgres pool_mode=session pool_size=8
[policy.soak]
deny = truncate
max_rows = 1000" \
    pgw_start "$bin" "$work" "$pgport" "$label" || exit 1

echo "$label: pgwicket $pgw_pid on 127.0.0.1:$pgwport, audit on $([ "$audit_mounted" = 1 ] && echo "a tmpfs of $audit_mb MiB" || echo "the work folder's disk (no tmpfs: not root)")"
status=0
"$python" "$root/contrib/soak/soak.py" run --work "$work" --seconds "$secs" --pgdata "$pgdata" \
    --pg-bindir "$PG_BINDIR" --pgport "$pgport" --pgwport "$pgwport" --pgw-pid "$pgw_pid" \
    --audit-dir "$audit_dir" --audit-tmpfs "$audit_mounted" || status=$?
if ! kill -0 "$pgw_pid" 2>/dev/null; then
    echo "$label: pgwicket is gone; the end of its log:" >&2
    tail -n 30 "$work/pgwicket.log" >&2
    status=1
fi
exit "$status"
