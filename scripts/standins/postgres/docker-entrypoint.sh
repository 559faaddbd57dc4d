#!/bin/sh
# Entry point of the postgres stand-in. Like the official image, it
# initializes an empty data folder once and then runs the server as PID 1.
set -eu
. /usr/local/lib/airlock-standin.sh

# Like the official image, options alone mean "postgres with these options",
# and any other command runs as given.
if [ "${1#-}" != "${1:-}" ]; then
    set -- postgres "$@"
fi
if [ "${1:-}" != postgres ]; then
    exec "$@"
fi

standin_exit_if_requested postgres
: "${PGDATA:=/var/lib/postgresql/data}"
mkdir -p "$PGDATA"

if [ -s "$PGDATA/PG_VERSION" ]; then
    echo "PostgreSQL Database directory appears to contain a database; Skipping initialization"
else
    # The official image rejects an empty data folder without a password.
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "${POSTGRES_HOST_AUTH_METHOD:-}" != trust ]; then
        echo "Error: Database is uninitialized and superuser password is not specified." >&2
        echo "       Set POSTGRES_PASSWORD to a non-empty value for the superuser." >&2
        exit 1
    fi
    user=${POSTGRES_USER:-postgres}
    mkdir -p "$PGDATA/airlock-kv"
    echo "$PG_MAJOR" >"$PGDATA/PG_VERSION"
    printf 'user=%s\ndatabase=%s\n' "$user" "${POSTGRES_DB:-$user}" >"$PGDATA/airlock-standin-cluster"
    # Marker for volume tests: it survives a restart only if the volume does.
    date -u +%Y-%m-%dT%H:%M:%SZ >"$PGDATA/airlock-standin-initialized"
    echo "PostgreSQL init process complete; ready for start up."
fi

chown -R postgres:postgres "$PGDATA"
chmod 700 "$PGDATA"
exec postgres
