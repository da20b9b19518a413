#!/usr/bin/env bash
# Install (if missing) and start a local PostgreSQL for the store tests, then print its URL on stdout.
#
#   export RBI_TEST_POSTGRES_URL="$(scripts/ci-postgres.sh)"
#
# Meant for Debian 12 as root, on machines without systemd (CI containers), so the cluster is
# driven with pg_ctlcluster directly. Safe to run again: every step checks before it acts.
# Everything but the URL goes to stderr so that the command substitution above stays clean.
#
# Overrides: RBI_PG_USER, RBI_PG_PASSWORD, RBI_PG_DB (default rbi / rbi / rbi_test), RBI_PG_CLUSTER
# (default main; another name gets its own cluster on the next free port).
set -euo pipefail

PG_USER="${RBI_PG_USER:-rbi}"
PG_PASSWORD="${RBI_PG_PASSWORD:-rbi}"
PG_DB="${RBI_PG_DB:-rbi_test}"
CLUSTER="${RBI_PG_CLUSTER:-main}"

log() { printf 'ci-postgres: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and starts the cluster as user postgres)"

installed_version() {
    # The newest server version that has binaries; empty when none is installed.
    find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/postgres' 2>/dev/null \
        | awk -F/ '{print $5}' | sort -V | tail -n 1
}

if [ -z "$(installed_version)" ] || ! command -v pg_ctlcluster >/dev/null 2>&1; then
    log "installing postgresql"
    export DEBIAN_FRONTEND=noninteractive
    # The postinst creates the first cluster with the caller's locale, which may not be generated in a
    # minimal image; C.UTF-8 always exists on Debian.
    export LANG=C.UTF-8 LC_ALL=C.UTF-8
    apt-get update >&2
    # The package's postinst may fail to start the server without an init system; that is expected,
    # the cluster is started below.
    apt-get install -y --no-install-recommends postgresql >&2
fi

VERSION="$(installed_version)"
[ -n "$VERSION" ] || die "no PostgreSQL server binaries under /usr/lib/postgresql after install"

if ! pg_lsclusters -h | awk -v v="$VERSION" -v c="$CLUSTER" '$1 == v && $2 == c {found=1} END {exit !found}'; then
    log "creating cluster $VERSION/$CLUSTER"
    pg_createcluster --locale=C.UTF-8 "$VERSION" "$CLUSTER" >&2
fi

status="$(pg_lsclusters -h | awk -v v="$VERSION" -v c="$CLUSTER" '$1 == v && $2 == c {print $4}')"
if [ "$status" != "online" ]; then
    log "starting cluster $VERSION/$CLUSTER"
    # The socket directory lives on tmpfs in containers and can vanish between boots.
    install -d -o postgres -g postgres -m 2775 /var/run/postgresql
    pg_ctlcluster "$VERSION" "$CLUSTER" start >&2
fi

PORT="$(pg_lsclusters -h | awk -v v="$VERSION" -v c="$CLUSTER" '$1 == v && $2 == c {print $3}')"
[ -n "$PORT" ] || die "cannot read the port of cluster $VERSION/$CLUSTER"

for _ in $(seq 1 30); do
    if pg_isready -q -h 127.0.0.1 -p "$PORT"; then break; fi
    sleep 1
done
pg_isready -q -h 127.0.0.1 -p "$PORT" || die "server on 127.0.0.1:$PORT does not accept connections; see /var/log/postgresql/"

as_postgres_psql() {
    # Runs as the superuser over the local socket (peer auth); psql variables keep names and the
    # password quoted correctly whatever characters they hold.
    runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$PORT" -d postgres \
        -v user="$PG_USER" -v password="$PG_PASSWORD" -v db="$PG_DB" "$@"
}

role_exists="$(as_postgres_psql -tA <<<"SELECT 1 FROM pg_roles WHERE rolname = :'user';")"
if [ "$role_exists" != "1" ]; then
    log "creating role $PG_USER"
    as_postgres_psql <<<"CREATE ROLE :\"user\" LOGIN PASSWORD :'password';"
else
    # Reset the password so that a rerun with another RBI_PG_PASSWORD still yields a working URL.
    as_postgres_psql <<<"ALTER ROLE :\"user\" LOGIN PASSWORD :'password';"
fi

db_exists="$(as_postgres_psql -tA <<<"SELECT 1 FROM pg_database WHERE datname = :'db';")"
if [ "$db_exists" != "1" ]; then
    log "creating database $PG_DB"
    as_postgres_psql <<<"CREATE DATABASE :\"db\" OWNER :\"user\";"
fi

urlencode() {
    local s="$1" out="" c i
    for ((i = 0; i < ${#s}; i++)); do
        c="${s:i:1}"
        case "$c" in
            [a-zA-Z0-9._~-]) out+="$c" ;;
            *) out+="$(printf '%%%02X' "'$c")" ;;
        esac
    done
    printf '%s' "$out"
}

URL="postgresql+psycopg://$(urlencode "$PG_USER"):$(urlencode "$PG_PASSWORD")@127.0.0.1:${PORT}/$(urlencode "$PG_DB")"

# Prove that the URL works over TCP with a password, as the tests will use it.
PGPASSWORD="$PG_PASSWORD" psql -X -q -h 127.0.0.1 -p "$PORT" -U "$PG_USER" -d "$PG_DB" -tA -c "SELECT 1" >/dev/null \
    || die "cannot log in as $PG_USER to $PG_DB on 127.0.0.1:$PORT"

log "ready: PostgreSQL $VERSION on 127.0.0.1:$PORT, database $PG_DB"
printf '%s\n' "$URL"
