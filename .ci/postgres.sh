#!/usr/bin/env bash
# A throwaway PostgreSQL server with PgBouncer in front, for the tests.
#
#   bash .ci/postgres.sh install              apt-get install postgresql pgbouncer
#   bash .ci/postgres.sh start DIR            print two `export ...URL=` lines to eval
#   bash .ci/postgres.sh restart-server DIR   pg_ctl restart -m fast, same port
#   bash .ci/postgres.sh stop DIR             stop both; never fails
#
# Everything lives in DIR (cluster in DIR/data, sockets, configs, logs); both servers listen
# on 127.0.0.1 only, on the first free ports from 55432 (PostgreSQL) and 56432 (PgBouncer),
# so two runs in two folders do not collide. As root, the servers run as a system user of
# their own (initdb, pg_ctl and pgbouncer all refuse to run as root). Only stdout carries the
# export lines; progress goes to stderr, server output to DIR/*.log.
set -euo pipefail

CI_USER=agentsessions-ci        # the OS user the servers run as, when we are root
DB_USER=agent_sessions          # the cluster's superuser, in both URLs
DB_NAME=agent_sessions_test
PG_PORT_FIRST=55432
BOUNCER_PORT_FIRST=56432
PORT_TRIES=50
WAIT_SECONDS=30

log() { echo "postgres.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

pg_bindir() {
    # The newest installed server (Debian puts each major version in its own directory).
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [[ -x "$dir/initdb" ]] || die "no PostgreSQL server under /usr/lib/postgresql (run: $0 install)"
    echo "$dir"
}

as_user() {
    if [[ $EUID -eq 0 ]]; then
        runuser -u "$CI_USER" -- "$@"
    else
        "$@"
    fi
}

ensure_user() {
    [[ $EUID -eq 0 ]] || return 0
    id -u "$CI_USER" >/dev/null 2>&1 && return 0
    # A concurrent start may create it first; that is fine.
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin "$CI_USER" 2>/dev/null || id -u "$CI_USER" >/dev/null
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

wait_ready() {  # PORT DBNAME: until a server on PORT accepts connections, at most WAIT_SECONDS
    local deadline=$((SECONDS + WAIT_SECONDS))
    until "$BIN/pg_isready" -q -h 127.0.0.1 -p "$1" -U "$DB_USER" -d "$2" -t 2; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

socket_dir() {  # DIR, or '' (TCP only) when the socket path would pass the 107-byte limit
    if (( ${#1} + 20 > 107 )); then echo ""; else echo "$1"; fi
}

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

cmd_install() {
    if installed postgresql && installed pgbouncer; then
        log "postgresql and pgbouncer already installed"
        return 0
    fi
    log "apt-get install postgresql pgbouncer"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq -o Dpkg::Use-Pty=0 postgresql pgbouncer >&2
}

start_postgres() {  # DIR -> sets PG_PORT
    local dir=$1 data=$1/data port tries=0
    if [[ ! -f "$data/PG_VERSION" ]]; then
        # --no-sync only skips initdb's final flush of the new files; the server keeps fsync on.
        as_user "$BIN/initdb" -D "$data" -U "$DB_USER" --auth=trust --encoding=UTF8 \
            --locale=C --no-sync >"$dir/initdb.log" 2>&1 \
            || { cat "$dir/initdb.log" >&2; die "initdb failed (log: $dir/initdb.log)"; }
        cat >"$data/pg_hba.conf" <<EOF
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 trust
host    all       all   127.0.0.1/32  trust
EOF
        cat >>"$data/postgresql.conf" <<EOF

# --- .ci/postgres.sh ---
listen_addresses = '127.0.0.1'
unix_socket_directories = '$(socket_dir "$dir")'
max_connections = 200
fsync = on
synchronous_commit = on
include_if_exists = 'ci_port.conf'
EOF
    fi
    [[ ! -f "$data/postmaster.pid" ]] || die "a server already runs from $data (stop it first)"
    port=$PG_PORT_FIRST
    while :; do
        tries=$((tries + 1))
        ((tries <= PORT_TRIES)) || die "no free port for PostgreSQL from $PG_PORT_FIRST"
        if port_in_use "$port"; then port=$((port + 1)); continue; fi
        echo "port = $port" | as_user tee "$data/ci_port.conf" >/dev/null
        : >"$dir/postgres.log"; chown "$CI_USER": "$dir/postgres.log" 2>/dev/null || true
        if as_user "$BIN/pg_ctl" start -D "$data" -l "$dir/postgres.log" -w -t "$WAIT_SECONDS" \
            -s >/dev/null 2>&1; then
            break
        fi
        # Lost a race for the port with another run: try the next one.
        if grep -q 'Address already in use' "$dir/postgres.log"; then
            port=$((port + 1)); continue
        fi
        tail -n 20 "$dir/postgres.log" >&2
        die "PostgreSQL did not start (log: $dir/postgres.log)"
    done
    wait_ready "$port" postgres || die "PostgreSQL on port $port not ready in ${WAIT_SECONDS}s"
    PG_PORT=$port
    if [[ -z $("$BIN/psql" -X -qtA -h 127.0.0.1 -p "$port" -U "$DB_USER" -d postgres \
        -c "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'") ]]; then
        "$BIN/psql" -X -q -h 127.0.0.1 -p "$port" -U "$DB_USER" -d postgres \
            -c "CREATE DATABASE $DB_NAME" >&2
    fi
    log "PostgreSQL $("$BIN/postgres" -V | awk '{print $3}') on 127.0.0.1:$port (data $data)"
}

start_pgbouncer() {  # DIR PG_PORT -> sets BOUNCER_PORT
    local dir=$1 pg_port=$2 port=$BOUNCER_PORT_FIRST tries=0 pid
    command -v pgbouncer >/dev/null || die "pgbouncer is not installed (run: $0 install)"
    # trust still looks the user up in auth_file, so list it (with no password).
    echo "\"$DB_USER\" \"\"" >"$dir/pgbouncer_users.txt"
    chown "$CI_USER": "$dir/pgbouncer_users.txt" 2>/dev/null || true
    while :; do
        tries=$((tries + 1))
        ((tries <= PORT_TRIES)) || die "no free port for PgBouncer from $BOUNCER_PORT_FIRST"
        if port_in_use "$port"; then port=$((port + 1)); continue; fi
        cat >"$dir/pgbouncer.ini" <<EOF
[databases]
; any database name goes to the same server, so per-test databases work through PgBouncer
* = host=127.0.0.1 port=$pg_port

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir = $(socket_dir "$dir")
auth_type = trust
auth_file = $dir/pgbouncer_users.txt
admin_users = $DB_USER
pool_mode = transaction
max_client_conn = 500
default_pool_size = 20
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
EOF
        chown "$CI_USER": "$dir/pgbouncer.ini" 2>/dev/null || true
        rm -f "$dir/pgbouncer.pid"
        : >"$dir/pgbouncer.log"; chown "$CI_USER": "$dir/pgbouncer.log" 2>/dev/null || true
        # -d daemonizes; its stdio must not hold the caller's $(...) pipe open.
        if as_user pgbouncer -d -q "$dir/pgbouncer.ini" </dev/null >>"$dir/pgbouncer.log" 2>&1; then
            # PgBouncer only warns when it cannot bind the TCP port and keeps running on its
            # socket, and another run's PgBouncer may answer on that port: check that the
            # port leads to our own server.
            if ! grep -q "cannot listen on 127.0.0.1:$port" "$dir/pgbouncer.log" \
                && wait_ready "$port" "$DB_NAME" \
                && [[ $("$BIN/psql" -X -qtA -h 127.0.0.1 -p "$port" -U "$DB_USER" -d "$DB_NAME" \
                    -c 'SELECT inet_server_port()' 2>/dev/null) == "$pg_port" ]]; then
                break
            fi
            pid=$(cat "$dir/pgbouncer.pid" 2>/dev/null || true)
            [[ -z $pid ]] || kill "$pid" 2>/dev/null || true
            if grep -q "cannot listen on 127.0.0.1:$port" "$dir/pgbouncer.log"; then
                port=$((port + 1)); continue  # lost a race for the port with another run
            fi
        fi
        tail -n 20 "$dir/pgbouncer.log" >&2
        die "PgBouncer did not start (log: $dir/pgbouncer.log)"
    done
    BOUNCER_PORT=$port
    log "PgBouncer $(pgbouncer --version | head -n 1 | awk '{print $2}') on 127.0.0.1:$port" \
        "(transaction pooling)"
}

cmd_start() {
    local dir
    [[ $# -eq 1 ]] || die "usage: $0 start DIR"
    mkdir -p "$1"
    dir=$(cd "$1" && pwd -P)
    BIN=$(pg_bindir)
    ensure_user
    if [[ $EUID -eq 0 ]]; then
        chown "$CI_USER": "$dir"
        chmod 700 "$dir"
        as_user test -w "$dir" \
            || die "$CI_USER cannot write $dir (a parent folder is closed to other users?)"
    fi
    start_postgres "$dir"
    start_pgbouncer "$dir" "$PG_PORT"
    echo "export AGENT_SESSIONS_TEST_PG_URL=postgresql://$DB_USER@127.0.0.1:$PG_PORT/$DB_NAME"
    echo "export AGENT_SESSIONS_TEST_PGBOUNCER_URL=postgresql://$DB_USER@127.0.0.1:$BOUNCER_PORT/$DB_NAME"
}

cmd_restart_server() {
    local dir port
    [[ $# -eq 1 ]] || die "usage: $0 restart-server DIR"
    dir=$(cd "$1" && pwd -P)
    BIN=$(pg_bindir)
    [[ -f "$dir/data/ci_port.conf" ]] || die "no cluster in $dir/data (start it first)"
    port=$(awk '{print $3}' "$dir/data/ci_port.conf")
    as_user "$BIN/pg_ctl" restart -D "$dir/data" -l "$dir/postgres.log" -m fast -w \
        -t "$WAIT_SECONDS" -s >&2 || die "restart failed (log: $dir/postgres.log)"
    wait_ready "$port" postgres || die "PostgreSQL on port $port not ready in ${WAIT_SECONDS}s"
    log "PostgreSQL restarted on 127.0.0.1:$port"
}

cmd_stop() {
    local dir pid i
    [[ $# -eq 1 ]] || die "usage: $0 stop DIR"
    [[ -d "$1" ]] || { log "nothing to stop in $1"; return 0; }
    dir=$(cd "$1" && pwd -P)
    pid=$(cat "$dir/pgbouncer.pid" 2>/dev/null || true)
    # The pid file outlives a killed PgBouncer: signal the pid only if it is still ours.
    if [[ -n $pid ]] && grep -qF "$dir/pgbouncer.ini" "/proc/$pid/cmdline" 2>/dev/null \
        && kill -TERM "$pid" 2>/dev/null; then  # SIGTERM: immediate shutdown
        for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        log "PgBouncer stopped"
    fi
    if [[ -f "$dir/data/postmaster.pid" ]]; then
        BIN=$(pg_bindir 2>/dev/null) || return 0
        as_user "$BIN/pg_ctl" stop -D "$dir/data" -m fast -w -t "$WAIT_SECONDS" -s >&2 \
            || as_user "$BIN/pg_ctl" stop -D "$dir/data" -m immediate -w -s >&2 \
            || true
        log "PostgreSQL stopped"
    fi
    return 0
}

case "${1:-}" in
    install) shift; cmd_install "$@" ;;
    start) shift; cmd_start "$@" ;;
    restart-server) shift; cmd_restart_server "$@" ;;
    stop) shift; cmd_stop "$@" || true ;;
    *) die "usage: $0 install | start DIR | restart-server DIR | stop DIR" ;;
esac
