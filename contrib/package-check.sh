#!/usr/bin/env bash
# Checks the Debian package end to end on this machine, as root: builds it from HEAD in a
# clean copy, installs, runs, upgrades, removes and purges it, and checks every step.
#
# Not part of `make check` (it takes minutes and changes /usr and /etc; the purge at the
# end leaves them as they were, but for the pgwicket user, which Debian leaves). Without
# systemd as PID 1, the script stands in for it: the daemon runs under
# systemd-socket-activate with a NOTIFY_SOCKET, as the units would run it.
# PACKAGE_DEB=FILE checks that .deb instead of building one.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=contrib/lib.sh
. "$root/contrib/lib.sh"

step=start
fail()
{
    echo "package-check: FAIL ($step): $*" >&2
    exit 1
}
pass()
{
    echo "package-check: ok   $step: $*"
}
# expect DESCRIPTION COMMAND...: fails the step with DESCRIPTION when COMMAND fails.
expect()
{
    local what=$1
    shift
    "$@" >/dev/null 2>&1 || fail "$what"
}

# run_dpkg WHAT ARGS...: dpkg ARGS, its output in $work/WHAT.log; fails the step with it.
run_dpkg()
{
    local what=$1
    shift
    dpkg "$@" </dev/null >"$work/$what.log" 2>&1 || {
        cat "$work/$what.log" >&2
        fail "dpkg $* failed"
    }
}

[ "$(id -u)" -eq 0 ] || fail "must run as root (it installs the package)"
if dpkg-query -W -f='${Status}' pgwicket 2>/dev/null | grep -qv 'not-installed'; then
    fail "pgwicket is already installed (or its configuration is left): dpkg -P pgwicket first"
fi
bash "$root/contrib/install-deps.sh" debhelper dh-autoreconf logrotate man-db

under_systemd=0
if [ -d /run/systemd/system ]; then
    under_systemd=1
fi
started=$(date +%s)
work=$(work_dir pgwicket-package)
pg_dir=$work/pg
daemon_pid=
installed=0

cleanup()
{
    local rc=$?
    set +e
    if [ "$under_systemd" -eq 1 ] && [ "$installed" -eq 1 ]; then
        systemctl stop pgwicket.socket pgwicket.service >/dev/null 2>&1
    fi
    [ -n "$daemon_pid" ] && stop_daemon
    [ -n "${notify_pid:-}" ] && kill "$notify_pid" 2>/dev/null
    pg_stop "$pg_dir"
    if [ "$installed" -eq 1 ]; then
        dpkg -P pgwicket >/dev/null 2>&1
    fi
    if [ "$rc" -eq 0 ]; then
        rm -rf "$work"
    else
        echo "package-check: the package is purged; logs and the build are in $work" >&2
    fi
}
trap cleanup EXIT

# ---- the file lists that install must add to and purge must restore -------------------
watched=(/etc /usr/sbin /usr/share/man /lib/systemd/system /var/log /run/pgwicket
    /var/lib/systemd/deb-systemd-helper-enabled /var/lib/systemd/deb-systemd-helper-masked)
snapshot()
{
    # The account files are rewritten (and their "-" backups made) by adduser: the
    # pgwicket user stays after a purge, as in most Debian packages (debian/pgwicket.postrm).
    { find "${watched[@]}" 2>/dev/null || true; } | grep -Ev '^/etc/(passwd|group|shadow|gshadow)-?$' | sort
}
snapshot >"$work/files.before"
dpkg-statoverride --list >"$work/statoverride.before"

# ---- build ----------------------------------------------------------------------------
step=build
version=$(sed -n 's/^AC_INIT(\[pgwicket\], \[\([^]]*\)\].*/\1/p' "$root/configure.ac")
if [ -n "${PACKAGE_DEB:-}" ]; then
    deb=$PACKAGE_DEB
    pass "using $deb"
else
    if [ -n "$(git -C "$root" status --porcelain)" ]; then
        echo "package-check: note: uncommitted changes are not in the package (it is built from HEAD)"
    fi
    mkdir -p "$work/build"
    git -C "$root" archive --prefix="pgwicket-$version/" HEAD | tar -x -C "$work/build"
    if ! (cd "$work/build/pgwicket-$version" &&
        dpkg-buildpackage -b -us -uc -j"$(nproc)") >"$work/build.log" 2>&1; then
        tail -n 40 "$work/build.log" >&2
        fail "dpkg-buildpackage failed (log: $work/build.log)"
    fi
    deb=$work/build/pgwicket_${version}_amd64.deb
    [ -f "$deb" ] || fail "dpkg-buildpackage made no $deb"
    grep -qE '^(PASS|FAIL): tests/' "$work/build.log" && fail "the test suite ran at package build time"
    pass "dpkg-buildpackage -b -us -uc made $(basename "$deb")"
fi

# ---- install ----------------------------------------------------------------------------
step=install
run_dpkg install -i "$deb"
installed=1
[ "$(dpkg-query -W -f='${Status} ${Version}' pgwicket)" = "install ok installed $version" ] ||
    fail "dpkg -s pgwicket: $(dpkg-query -W -f='${Status} ${Version}' pgwicket)"
pass "dpkg -i: pgwicket $version installed"

# owner_mode PATH: "owner:group mode" of PATH.
owner_mode() { stat -c '%U:%G %a' "$1" 2>/dev/null; }
# expect_owner_mode PATH OWNER:GROUP MODE
expect_owner_mode()
{
    [ "$(owner_mode "$1")" = "$2 $3" ] || fail "$1 is '$(owner_mode "$1")', expected '$2 $3'"
}
# check_installed: what must hold after an install and after an upgrade.
check_installed()
{
    local uid home shell
    IFS=: read -r _ _ uid _ _ home shell < <(getent passwd pgwicket) || fail "no pgwicket user"
    [ "$uid" -lt 1000 ] || fail "pgwicket is uid $uid, not a system user"
    [ "$(id -gn pgwicket)" = pgwicket ] || fail "pgwicket's group is $(id -gn pgwicket)"
    if [ "$home" != /nonexistent ] || [ -e /nonexistent ]; then fail "pgwicket's home is $home"; fi
    [[ "$shell" == */nologin || "$shell" == /bin/false ]] || fail "pgwicket's shell is $shell"
    [ "$(/usr/sbin/pgwicket --version 2>&1)" = "pgwicket $version" ] ||
        fail "/usr/sbin/pgwicket --version says '$(/usr/sbin/pgwicket --version 2>&1)'"
    expect_owner_mode /etc/pgwicket root:pgwicket 750
    expect_owner_mode /etc/pgwicket/pgwicket.ini root:pgwicket 640
    expect_owner_mode /var/log/pgwicket pgwicket:pgwicket 750
    dpkg-query -W -f='${Conffiles}\n' pgwicket | grep -q '^ /etc/pgwicket/pgwicket.ini ' ||
        fail "/etc/pgwicket/pgwicket.ini is not a conffile"
    expect "the service user cannot check /etc/pgwicket/pgwicket.ini" \
        setpriv --reuid=pgwicket --regid=pgwicket --init-groups -- \
        /usr/sbin/pgwicket --check-config -c /etc/pgwicket/pgwicket.ini
    expect "man pgwicket does not find pgwicket(8)" man -w pgwicket
    for page in man5/pgwicket.ini.5.gz man7/pgwicket-sso.7.gz man8/pgwicket.8.gz; do
        [ -f "/usr/share/man/$page" ] || fail "no /usr/share/man/$page"
    done
    grep -qx 'ExecStart=/usr/sbin/pgwicket -c /etc/pgwicket/pgwicket.ini' \
        /lib/systemd/system/pgwicket.service || fail "pgwicket.service does not run /usr/sbin/pgwicket"
    [ -f /lib/systemd/system/pgwicket.socket ] || fail "no pgwicket.socket"
    # Enabled: systemctl when systemd runs, else the symlinks it would read.
    if [ "$under_systemd" -eq 1 ]; then
        expect "pgwicket.service is not enabled" systemctl is-enabled pgwicket.service
        expect "pgwicket.socket is not enabled" systemctl is-enabled pgwicket.socket
    else
        [ -L /etc/systemd/system/multi-user.target.wants/pgwicket.service ] ||
            fail "pgwicket.service is not enabled (no multi-user.target.wants link)"
        [ -L /etc/systemd/system/sockets.target.wants/pgwicket.socket ] ||
            fail "pgwicket.socket is not enabled (no sockets.target.wants link)"
    fi
    expect "/etc/logrotate.d/pgwicket does not parse" \
        logrotate -d --state "$work/logrotate.state" /etc/logrotate.d/pgwicket
}
check_installed
if [ "$under_systemd" -eq 1 ]; then
    systemctl --quiet is-active pgwicket.service pgwicket.socket && fail "a unit was started on install"
fi
pgrep -u pgwicket >/dev/null && fail "a pgwicket process runs after install"
pass "user, /etc/pgwicket (0750, conffile 0640), /var/log/pgwicket, man pages, units enabled, not started"

# ---- run ---------------------------------------------------------------------------------
step=run
pg_init "$pg_dir" || fail "initdb failed"
pg_port=$(free_port 55432)
pg_start "$pg_dir" "$pg_port" || fail "PostgreSQL did not start"
port=$(free_port 56432)
# The administrator's part: a port that is free here, the test cluster, log files.
sed -i -e "s|^listen_port = 6432\$|listen_port = $port|" \
    -e "s|^\\* = host=127.0.0.1 port=5432\$|* = host=127.0.0.1 port=$pg_port|" \
    -e 's|^;logfile =$|logfile = /var/log/pgwicket/pgwicket.log|' \
    -e 's|^;audit_file =$|audit_file = /var/log/pgwicket/audit.log|' \
    -e 's|^;pidfile =$|pidfile = /run/pgwicket/pgwicket.pid|' /etc/pgwicket/pgwicket.ini
[ "$(grep -cE "^(listen_port = $port\$|\\* = host=127.0.0.1 port=$pg_port\$|(logfile|audit_file|pidfile) = /)" \
    /etc/pgwicket/pgwicket.ini)" -eq 5 ] || fail "could not edit /etc/pgwicket/pgwicket.ini"

notify_log=$work/notify.log
# times_notified TEXT: how often TEXT has come on the notify socket (datagrams run together
# in the log, hence -o).
times_notified()
{
    { grep -o "$1" "$notify_log" 2>/dev/null || true; } | wc -l
}
# notified TEXT COUNT: waits up to 10 s until TEXT has come COUNT times on the notify socket.
notified()
{
    local i
    for ((i = 0; i < 100; i++)); do
        [ "$(times_notified "$1")" -ge "$2" ] && return 0
        sleep 0.1
    done
    return 1
}
# start_daemon: starts pgwicket as pgwicket.service would, and waits until it is ready.
start_daemon()
{
    if [ "$under_systemd" -eq 1 ]; then
        systemctl start pgwicket.service || fail "systemctl start pgwicket.service failed"
        daemon_pid=$(systemctl show -p MainPID --value pgwicket.service)
        return
    fi
    local ready
    ready=$(times_notified READY=1)
    # The unit's ExecStartPre=, RuntimeDirectory= and pgwicket.socket's ListenStream=.
    setpriv --reuid=pgwicket --regid=pgwicket --init-groups -- \
        /usr/sbin/pgwicket --check-config -c /etc/pgwicket/pgwicket.ini >/dev/null ||
        fail "pgwicket --check-config failed as the service user"
    install -d -o pgwicket -g pgwicket -m 0755 /run/pgwicket
    rm -f "/run/pgwicket/.s.PGSQL.$port"
    systemd-socket-activate -l "127.0.0.1:$port" -l "/run/pgwicket/.s.PGSQL.$port" \
        --fdname=pgwicket:pgwicket -E NOTIFY_SOCKET="$work/notify.sock" \
        /usr/bin/setpriv --reuid=pgwicket --regid=pgwicket --init-groups -- \
        /usr/sbin/pgwicket -c /etc/pgwicket/pgwicket.ini 2>>"$work/daemon.stderr" &
    daemon_pid=$!
    wait_listening "$port" 10 || fail "systemd-socket-activate did not listen (see $work/daemon.stderr)"
    chmod 0777 "/run/pgwicket/.s.PGSQL.$port"
    # As with pgwicket.socket, the first connection starts pgwicket (in the same process).
    query "$tcp" "SELECT 1" >/dev/null
    notified 'READY=1' $((ready + 1)) || fail "pgwicket sent no READY=1 (see $work/daemon.stderr)"
    [ "$(ps -o user=,comm= -p "$daemon_pid" | tr -s ' ')" = "pgwicket pgwicket" ] ||
        fail "pid $daemon_pid is not pgwicket running as pgwicket: $(ps -o user=,comm= -p "$daemon_pid")"
}
# stop_daemon: stops pgwicket (SIGTERM: the drain) and waits for it; returns its status.
stop_daemon()
{
    if [ "$under_systemd" -eq 1 ]; then
        systemctl stop pgwicket.service
        return
    fi
    [ -n "$daemon_pid" ] || return 0
    local rc=0
    kill -TERM "$daemon_pid" 2>/dev/null || true
    wait "$daemon_pid" || rc=$?
    daemon_pid=
    return "$rc"
}
# query CONNINFO SQL: psql through pgwicket; prints the result.
query()
{
    psql -X -At -d "$1" -c "$2" 2>&1
}
tcp="host=127.0.0.1 port=$port dbname=postgres user=postgres connect_timeout=10"
# check_serves LABEL: a query over TCP and one over the Unix socket return their answer.
check_serves()
{
    local got
    got=$(query "$tcp" "SELECT 'tcp ' || 6 * 7")
    [ "$got" = "tcp 42" ] || fail "$1: psql over TCP got: $got"
    got=$(query "host=/run/pgwicket port=$port dbname=postgres user=postgres" "SELECT 'unix'")
    [ "$got" = "unix" ] || fail "$1: psql over /run/pgwicket got: $got"
}

if [ "$under_systemd" -eq 0 ]; then
    # The notify socket: a datagram socket that systemd-socket-activate hands to cat.
    systemd-socket-activate --datagram -l "$work/notify.sock" sh -c 'exec cat <&3' \
        >"$notify_log" 2>"$work/notify.stderr" &
    notify_pid=$!
    for _ in $(seq 50); do
        [ -S "$work/notify.sock" ] && break
        sleep 0.1
    done
    chmod 0666 "$work/notify.sock" || fail "no notify socket"
fi
start_daemon
check_serves "first start"
[ "$(stat -c %U /var/log/pgwicket/pgwicket.log 2>/dev/null)" = pgwicket ] ||
    fail "no /var/log/pgwicket/pgwicket.log owned by pgwicket"
expect "no session in /var/log/pgwicket/pgwicket.log" grep -q 'session ended' /var/log/pgwicket/pgwicket.log
expect "no audit record in /var/log/pgwicket/audit.log" grep -q '"event"' /var/log/pgwicket/audit.log
pass "started as user $(ps -o user= -p "$daemon_pid"), psql over TCP and /run/pgwicket, log and audit in /var/log/pgwicket"

# ---- logrotate -------------------------------------------------------------------------------
step=logrotate
reloads=$(times_notified RELOADING=1)
logrotate -f --state "$work/logrotate.state" /etc/logrotate.d/pgwicket >"$work/logrotate.log" 2>&1 || {
    cat "$work/logrotate.log" >&2
    fail "logrotate -f failed"
}
for f in pgwicket.log.1 audit.log.1; do
    [ -f "/var/log/pgwicket/$f" ] || fail "logrotate left no /var/log/pgwicket/$f"
done
if [ "$under_systemd" -eq 0 ]; then
    notified 'RELOADING=1' $((reloads + 1)) || fail "no reload (SIGHUP) after rotating"
fi
sleep 0.5
check_serves "after rotation"
for f in pgwicket.log audit.log; do
    [ -s "/var/log/pgwicket/$f" ] || fail "pgwicket did not reopen /var/log/pgwicket/$f"
done
expect_owner_mode /var/log/pgwicket/pgwicket.log pgwicket:pgwicket 640
pass "logrotate rotated pgwicket.log and audit.log, pgwicket reloaded and writes the new files"

# ---- upgrade --------------------------------------------------------------------------------
step=upgrade
old_pid=$daemon_pid
# A session that outlasts the upgrade and must end normally across the restart.
query "$tcp" "SELECT pg_sleep(6), 'drained'" >"$work/long-session.out" &
long_pid=$!
sleep 1
run_dpkg upgrade -i "$deb"
[ "$(dpkg-query -W -f='${Status}' pgwicket)" = "install ok installed" ] || fail "not installed after upgrade"
if [ "$under_systemd" -eq 1 ]; then
    # postinst's try-restart: the stop drains the session, then a new main process.
    daemon_pid=$(systemctl show -p MainPID --value pgwicket.service)
    [ "$daemon_pid" != "$old_pid" ] || fail "the running service was not restarted"
else
    # Nothing restarts a daemon that systemd does not run: it serves on from the old binary.
    kill -0 "$old_pid" 2>/dev/null || fail "the upgrade stopped pgwicket"
    check_serves "during the upgrade, before the restart"
    kill -0 "$long_pid" 2>/dev/null || fail "the session ended before the restart: $(cat "$work/long-session.out")"
    # What try-restart does under systemd: SIGTERM to the main process (KillMode=mixed).
    stop_daemon || fail "pgwicket exited with status $? on SIGTERM"
    notified 'STOPPING=1' 1 || fail "no STOPPING=1 on SIGTERM"
    start_daemon
fi
wait "$long_pid" || fail "the session open during the upgrade failed: $(cat "$work/long-session.out")"
grep -q '|drained$' "$work/long-session.out" ||
    fail "the session open during the upgrade was not drained: $(cat "$work/long-session.out")"
check_serves "after the upgrade"
check_installed
grep -q "^listen_port = $port\$" /etc/pgwicket/pgwicket.ini || fail "the upgrade lost the edited pgwicket.ini"
ls /etc/pgwicket/*.dpkg-* >/dev/null 2>&1 && fail "the upgrade left $(ls /etc/pgwicket/*.dpkg-*)"
pass "dpkg -i again: session drained across the restart, edited conffile kept, modes kept, serves"

# ---- remove ----------------------------------------------------------------------------------
step=remove
if [ "$under_systemd" -eq 0 ]; then
    stop_daemon || fail "pgwicket exited with status $? on SIGTERM"
fi
run_dpkg remove -r pgwicket
[ "$(dpkg-query -W -f='${Status}' pgwicket)" = "deinstall ok config-files" ] ||
    fail "dpkg -s after remove: $(dpkg-query -W -f='${Status}' pgwicket)"
pgrep -u pgwicket >/dev/null && fail "a pgwicket process runs after remove"
for f in /usr/sbin/pgwicket /lib/systemd/system/pgwicket.service /lib/systemd/system/pgwicket.socket \
    /usr/share/man/man8/pgwicket.8.gz; do
    [ ! -e "$f" ] || fail "$f is still there"
done
grep -q "^listen_port = $port\$" /etc/pgwicket/pgwicket.ini || fail "remove did not keep pgwicket.ini"
expect_owner_mode /etc/pgwicket/pgwicket.ini root:pgwicket 640
pass "dpkg -r: stopped, binary, units and man pages gone, configuration kept"

# ---- purge ------------------------------------------------------------------------------------
step=purge
run_dpkg purge -P pgwicket
installed=0
if dpkg-query -W -f='${Status}' pgwicket 2>/dev/null | grep -qv 'not-installed'; then
    fail "dpkg -s after purge: $(dpkg-query -W -f='${Status}' pgwicket)"
fi
for f in /etc/pgwicket /var/log/pgwicket /run/pgwicket /etc/logrotate.d/pgwicket; do
    [ ! -e "$f" ] || fail "$f is still there"
done
dpkg-statoverride --list | diff "$work/statoverride.before" - >"$work/statoverride.diff" ||
    fail "statoverrides differ after purge: $(cat "$work/statoverride.diff")"
snapshot >"$work/files.after"
diff "$work/files.before" "$work/files.after" >"$work/files.diff" ||
    fail "files differ from before install:"$'\n'"$(cat "$work/files.diff")"
getent passwd pgwicket >/dev/null || fail "the pgwicket user went (Debian keeps it)"
pass "dpkg -P: configuration, logs and unit links gone; ${watched[*]} as before; the pgwicket user stays"

step=end
pass "all steps in $(($(date +%s) - started)) s"
