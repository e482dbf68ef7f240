#!/usr/bin/env bash
# Runs pgwicket in the foreground in front of a throwaway PostgreSQL 15 cluster in
# ./demo-data, and prints the psql command to connect through it. Ctrl-C stops both.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=contrib/lib.sh
source contrib/lib.sh

bash contrib/install-deps.sh

demo=$root/demo-data
mkdir -p "$demo"

# build CMD...: runs a build step with its output in demo-data/build.log.
build()
{
    if ! "$@" >>"$demo/build.log" 2>&1; then
        tail -n 40 "$demo/build.log" >&2
        echo "demo: build step failed: $* (whole log in $demo/build.log)" >&2
        exit 1
    fi
}
: >"$demo/build.log"

# Build unless a build is there: in the source tree, or the one contrib/check.sh makes in build/.
if [ -f config.status ]; then
    build make -j2
    bin=$root/pgwicket
elif [ -f build/config.status ]; then
    build make -C build -j2
    bin=$root/build/pgwicket
else
    echo "demo: building pgwicket (autoreconf, configure, make); log in $demo/build.log"
    build autoreconf -fi
    build ./configure
    build make -j2
    bin=$root/pgwicket
fi
pgdata=$(pg_data_dir "$demo/pg")

pgw_pid=
# shellcheck disable=SC2317  # run by the EXIT trap
cleanup()
{
    trap - EXIT INT TERM
    pgw_stop
    echo "demo: stopping PostgreSQL (data kept in $pgdata; re-run to reuse it)"
    pg_stop "$pgdata"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A cluster left running by an earlier run is stopped first, then reused.
pg_stop "$pgdata"
pg_init "$pgdata"
pgport=$(free_port 54320)
pg_start "$pgdata" "$pgport"

port=$(free_port 6432)
socket_dir=$demo
# A Unix socket path must fit in 107 bytes.
if [ $((${#socket_dir} + 20)) -gt 107 ]; then
    socket_dir=/tmp
fi
cat >"$demo/pgwicket.ini" <<EOF
; Written by contrib/demo.sh; rewritten on every run.
[pgwicket]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir = $socket_dir
log_level = info
audit_file = $demo/audit.jsonl
stats_users = postgres

[databases]
; readonly is the same database as postgres, behind a read-only policy with a row cap
readonly = host=127.0.0.1 port=$pgport dbname=postgres
; pooled is postgres again, with warm upstream connections reused between clients
pooled = host=127.0.0.1 port=$pgport dbname=postgres user=postgres pool_mode=session pool_size=10
* = host=127.0.0.1 port=$pgport

[policy.readonly]
read_only = 1
max_rows = 1000
allow_override = 1

[database_policies]
readonly = readonly
EOF

"$bin" --check-config -c "$demo/pgwicket.ini"

"$bin" -c "$demo/pgwicket.ini" &
pgw_pid=$!
if ! wait_listening "$port" 10; then
    echo "demo: pgwicket did not start listening on port $port" >&2
    exit 1
fi

cat <<EOF

  PostgreSQL 15 is running on 127.0.0.1:$pgport (data in $pgdata)
  pgwicket is listening on 127.0.0.1:$port and $socket_dir/.s.PGSQL.$port

  Connect through pgwicket:

    psql "host=127.0.0.1 port=$port dbname=postgres user=postgres"

  or over the Unix socket:

    psql -h $socket_dir -p $port -U postgres postgres

  The database "readonly" is postgres again, behind a read-only policy that
  cuts results at 1000 rows (SET pgwicket.max_rows = N raises it):

    psql "host=127.0.0.1 port=$port dbname=readonly user=postgres"

  The database "pooled" is postgres through a session pool: connect twice and
  SELECT pg_backend_pid() shows the same backend, reset between clients; the
  admin console shows the pool:

    psql "host=127.0.0.1 port=$port dbname=pooled user=postgres" -c 'SELECT pg_backend_pid()'
    psql "host=127.0.0.1 port=$port dbname=pgwicket user=postgres" -c 'SHOW POOLS'

  Every session and statement is recorded in $demo/audit.jsonl.

  Press Ctrl-C to stop pgwicket and PostgreSQL.

EOF

status=0
wait "$pgw_pid" || status=$?
pgw_pid=
exit "$status"
