#!/bin/sh
# Who ran a DDL statement (pgaudit's DDL class: CREATE, ALTER, DROP, ... of anything but
# roles; ROLE covers those and GRANT/REVOKE), and when: time, identity, client, command,
# error code (empty: it succeeded), statement.
# usage: who-ran-ddl.sh [SINCE] [AUDIT_FILE...]   (no file: stdin; SINCE as in who-read.sh)
set -eu
since=${1:-}
[ $# -gt 0 ] && shift
exec jq -r --arg since "$since" '
  select(.v >= 2 and .event == "statement" and .time >= $since and .class == "DDL")
  | [.time, .identity, .client, .command, .sqlstate // "", .statement] | @tsv' "$@"
