#!/usr/bin/env bash
# Start or stop a throwaway cluster for tests: owned by postgres (initdb refuses root),
# reachable on a unix socket in its own directory only, with the library preloaded.
#   tests/pg_cluster.sh start DIR PORT [extra postgresql.conf lines...]
#   tests/pg_cluster.sh stop DIR
#   tests/pg_cluster.sh restart DIR MODE        (pg_ctl stop -m MODE, then start again)
#   tests/pg_cluster.sh standby PRIMARY_DIR PRIMARY_PORT DIR PORT [extra conf lines...]
#                                               (pg_basebackup -R, then start it)
#   tests/pg_cluster.sh stop-server DIR MODE    (pg_ctl stop -m MODE; DIR is kept)
#   tests/pg_cluster.sh start-server DIR        (pg_ctl start, after stop-server)
#   tests/pg_cluster.sh promote DIR             (pg_ctl promote -w: a standby becomes primary)
#   tests/pg_cluster.sh append-conf DIR LINE... (append to postgresql.conf; no reload)
#   tests/pg_cluster.sh copy SRC_DIR DIR PORT   (cp -a of a stopped server's data
#                                               directory, with its own socket and port;
#                                               not started)
set -euo pipefail
PG_BIN=${PG_BIN:-$(pg_config --bindir)}
as_pg() { if [ "$(id -u)" = 0 ]; then sudo -u postgres "$@"; else "$@"; fi; }

case "$1" in
start)
    dir=$2 port=$3
    shift 3
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    as_pg "$PG_BIN/initdb" -D "$dir/data" -A trust -U postgres --no-sync >/dev/null
    {
        echo "shared_preload_libraries = 'api_keys'"
        echo "listen_addresses = ''"
        echo "unix_socket_directories = '$dir'"
        echo "port = $port"
        echo "fsync = off"
        # Room for parallel queries and the api_keys workers (README, "Worker slots").
        echo "max_worker_processes = 11"
        for line in "$@"; do echo "$line"; done
    } | as_pg tee -a "$dir/data/postgresql.conf" >/dev/null
    as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start >/dev/null
    ;;
restart)
    dir=$2 mode=$3
    as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m "$mode" -w stop >/dev/null
    as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start >/dev/null
    ;;
standby)
    primary=$2 primary_port=$3 dir=$4 port=$5
    shift 5
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    as_pg "$PG_BIN/pg_basebackup" -h "$primary" -p "$primary_port" -U postgres \
        -D "$dir/data" -R -X stream --checkpoint=fast --no-sync >/dev/null
    {
        echo "unix_socket_directories = '$dir'"
        echo "port = $port"
        for line in "$@"; do echo "$line"; done
    } | as_pg tee -a "$dir/data/postgresql.conf" >/dev/null
    as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start >/dev/null
    ;;
stop-server)
    dir=$2 mode=$3
    as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m "$mode" -w stop >/dev/null
    ;;
start-server)
    dir=$2
    as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start >/dev/null
    ;;
promote)
    dir=$2
    as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -w promote >/dev/null
    ;;
append-conf)
    dir=$2
    shift 2
    for line in "$@"; do echo "$line"; done | as_pg tee -a "$dir/data/postgresql.conf" >/dev/null
    ;;
copy)
    src=$2 dir=$3 port=$4
    mkdir -p "$dir"
    cp -a "$src/data" "$dir/data"
    [ "$(id -u)" = 0 ] && chown -R postgres "$dir"
    {
        echo "unix_socket_directories = '$dir'"
        echo "port = $port"
    } | as_pg tee -a "$dir/data/postgresql.conf" >/dev/null
    ;;
stop)
    dir=$2
    as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
    ;;
*)
    echo "usage: $0 start DIR PORT [conf lines] | stop DIR | restart DIR MODE |" \
        "standby PRIMARY_DIR PRIMARY_PORT DIR PORT [conf lines] | stop-server DIR MODE |" \
        "start-server DIR | promote DIR | append-conf DIR LINE... | copy SRC_DIR DIR PORT" >&2
    exit 2
    ;;
esac
