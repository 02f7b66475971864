#!/usr/bin/env bash
# Runs a command against a throwaway PostgreSQL server on loopback:
#   bash scripts/ci-postgres.sh cargo test --release
# Installs PostgreSQL from Debian's packages when no server is on the machine,
# creates a cluster in a temp dir (trust auth, 127.0.0.1, a free port), exports
# STEPCACHE_TEST_POSTGRES=postgres://postgres@127.0.0.1:PORT/postgres and
# STEPCACHE_TEST_PG_CTL (pg_ctl on that cluster: `$STEPCACHE_TEST_PG_CTL stop`,
# `... start`, for the tests that restart PostgreSQL under a server) and
# STEPCACHE_TEST_POSTGRES_CA (the CA that signed the server's certificate: TLS
# is on, for localhost and 127.0.0.1), runs the command, and stops the server
# and removes the cluster whatever happens.
set -euo pipefail

find_bin() {
    local name=$1 d
    if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return; fi
    for d in /usr/lib/postgresql/*/bin; do
        if [ -x "$d/$name" ]; then echo "$d/$name"; return; fi
    done
    return 1
}

if ! find_bin initdb >/dev/null || ! find_bin pg_ctl >/dev/null || ! command -v openssl >/dev/null; then
    echo "ci-postgres: installing PostgreSQL and OpenSSL from Debian's packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql openssl >/dev/null
fi
INITDB=$(find_bin initdb)
PG_CTL=$(find_bin pg_ctl)

# PostgreSQL refuses to run as root: run it as the postgres user then.
as_pg() { "$@"; }
if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    as_pg() { runuser -u postgres -- "$@"; }
fi

DIR=$(mktemp -d /tmp/stepcache-pg.XXXXXX)
chmod 755 "$DIR"
[ "$(id -u)" = 0 ] && chown postgres "$DIR"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

stop() {
    as_pg "$PG_CTL" -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$DIR"
}
trap stop EXIT

as_pg "$INITDB" -D "$DIR/data" -U postgres --auth=trust --no-sync -E UTF8 >"$DIR/initdb.log" 2>&1 ||
    { cat "$DIR/initdb.log" >&2; exit 1; }
# A throwaway CA and the server's certificate from it (webpki takes no
# self-signed server certificate as its own anchor).
(
    cd "$DIR"
    as_pg openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj "/CN=stepcache test CA" -keyout ca.key -out ca.crt
    as_pg openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj "/CN=localhost" -keyout server.key -out server.csr
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$DIR/server.ext"
    as_pg openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
        -extfile "$DIR/server.ext" -out server.crt
    chmod 600 server.key
) >"$DIR/openssl.log" 2>&1 || { cat "$DIR/openssl.log" >&2; exit 1; }
# The settings go in postgresql.conf, so that a restart keeps them. fsync off:
# a test cluster thrown away at the end need not survive a crash.
cat >>"$DIR/data/postgresql.conf" <<EOF
ssl = on
ssl_cert_file = '$DIR/server.crt'
ssl_key_file = '$DIR/server.key'
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$DIR'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 500
EOF
RUN_AS=""
[ "$(id -u)" = 0 ] && RUN_AS="runuser -u postgres --"
cat >"$DIR/pg_ctl" <<EOF
#!/bin/sh
exec $RUN_AS "$PG_CTL" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 "\$@"
EOF
chmod 755 "$DIR/pg_ctl"
"$DIR/pg_ctl" start >/dev/null || { cat "$DIR/server.log" >&2; exit 1; }
export STEPCACHE_TEST_PG_CTL="$DIR/pg_ctl"
export STEPCACHE_TEST_POSTGRES_CA="$DIR/ca.crt"

export STEPCACHE_TEST_POSTGRES="postgres://postgres@127.0.0.1:$PORT/postgres"
echo "ci-postgres: PostgreSQL at $STEPCACHE_TEST_POSTGRES" >&2
"$@"
