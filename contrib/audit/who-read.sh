#!/bin/sh
# Who read a table, and when: one line per statement (time, identity, client, command,
# statement) of the audit trail that read it and did not fail.
# usage: who-read.sh TABLE [SINCE] [AUDIT_FILE...]   (no file: stdin)
# TABLE as written in SQL, folded: "customers" matches customers written bare or with any
# schema, "public.customers" only that. SINCE: an RFC 3339 UTC prefix, e.g. 2026-11-15 or
# "$(date -u -d '7 days ago' +%FT%TZ)"; empty for all.
set -eu
[ $# -ge 1 ] || { echo "usage: $0 TABLE [SINCE] [AUDIT_FILE...]" >&2; exit 2; }
table=$1
since=${2:-}
shift
[ $# -gt 0 ] && shift
exec jq -r --arg t "$table" --arg since "$since" '
  select(.v >= 2 and .event == "statement" and .time >= $since and .sqlstate == null)
  | select(any(.relations[]; .access == "read" and (.name == $t or (.name | endswith("." + $t)))))
  | [.time, .identity, .client, .command, .statement] | @tsv' "$@"
