#!/usr/bin/env bash
# Entrypoint of soulnear/postgres:15 (PostgreSQL 15 from Debian packages).
#
# Follows the documented contract of the official postgres image, so the project
# can use either image without changes:
#   POSTGRES_PASSWORD / POSTGRES_PASSWORD_FILE  superuser password (required unless
#                                               POSTGRES_HOST_AUTH_METHOD=trust)
#   POSTGRES_USER (default postgres)            superuser created by initdb
#   POSTGRES_DB   (default = POSTGRES_USER)     database created on first start
#   POSTGRES_INITDB_ARGS, POSTGRES_INITDB_WALDIR
#   POSTGRES_HOST_AUTH_METHOD                   pg_hba line "host all all all <method>"
#                                               (default: password_encryption, i.e.
#                                               scram-sha-256)
#   every variable above also as NAME_FILE (Docker secrets)
#   PGDATA=/var/lib/postgresql/data
#   /docker-entrypoint-initdb.d/*.sh|*.sql|*.sql.gz|*.sql.xz|*.sql.zst, sorted,
#   run once: only when the data directory was empty.
#
# Written for this project (not a copy of the official script). One addition:
# a first-start initialisation that fails half way leaves a marker in PGDATA, and
# later starts refuse to run on that half-initialised cluster instead of silently
# serving a database whose init scripts never finished.
set -Eeuo pipefail

INIT_MARKER_NAME=".soulnear-initdb-incomplete"

log() { printf '%s [entrypoint] %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')" "$*"; }
die() { printf '%s [entrypoint] ERROR: %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')" "$*" >&2; exit 1; }

# read_env NAME [DEFAULT]: NAME comes from $NAME or from the file named in
# $NAME_FILE (both set is an error); exported so init scripts can use it,
# and NAME_FILE is unset afterwards.
read_env() {
    local name="$1" default="${2:-}" file_var="${1}_FILE" value
    if [ -n "${!name:-}" ] && [ -n "${!file_var:-}" ]; then
        die "both $name and $file_var are set; use only one of them."
    fi
    value="$default"
    if [ -n "${!name:-}" ]; then
        value="${!name}"
    elif [ -n "${!file_var:-}" ]; then
        [ -r "${!file_var}" ] || die "$file_var=${!file_var} cannot be read. Fix: mount the file (docker secret/volume) readable by uid $(id -u)."
        value="$(<"${!file_var}")"
    fi
    export "$name"="$value"
    unset "$file_var"
}

# postgres options that only print something and exit: no setup for them.
only_prints() {
    local arg
    for arg in "$@"; do
        case "$arg" in
            -'?'|--help|--describe-config|-V|--version|-C|-C*) return 0 ;;
        esac
    done
    return 1
}

# --- arguments: "docker run IMAGE -c x=y" means "postgres -c x=y" -------------
if [ "$#" -eq 0 ] || [ "${1:0:1}" = '-' ]; then
    set -- postgres "$@"
fi

# Anything else (bash, psql, pg_dump, ...) just runs as given.
if [ "$1" != postgres ] || only_prints "$@"; then
    exec "$@"
fi

# --- as root: fix ownership, then re-run this script as postgres --------------
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    # A volume created by another image/uid: take it over (only what is not ours).
    find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
    chmod 0700 "$PGDATA"
    chown postgres:postgres /var/run/postgresql
    chmod 3777 /var/run/postgresql
    if [ -n "${POSTGRES_INITDB_WALDIR:-}" ]; then
        mkdir -p "$POSTGRES_INITDB_WALDIR"
        find "$POSTGRES_INITDB_WALDIR" \! -user postgres -exec chown postgres:postgres '{}' +
        chmod 0700 "$POSTGRES_INITDB_WALDIR"
    fi
    # setpriv (util-linux) execs directly: no extra process stays around, so the
    # final `exec postgres` below is PID 1 and receives docker's signals.
    exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
fi

# --- from here on: the postgres user (or another non-root uid) -----------------
id -un >/dev/null 2>&1 \
    || die "uid $(id -u) has no entry in /etc/passwd and initdb/postgres need one. Fix: run the container as root (the default) or with --user postgres (999:999)."
mkdir -p "$PGDATA" 2>/dev/null || true
[ -w "$PGDATA" ] || die "$PGDATA is not writable by uid $(id -u). Fix: run as root (the entrypoint then fixes ownership) or chown the volume to $(id -u)."
chmod 0700 "$PGDATA" 2>/dev/null || true

if [ -e "$PGDATA/$INIT_MARKER_NAME" ]; then
    die "the first-start initialisation of $PGDATA did not finish (an init script failed or the container was stopped during it); this cluster may be missing roles, databases or tables. Fix: read the logs of the first start, then remove the data volume and start again (or delete $PGDATA/$INIT_MARKER_NAME to use it anyway)."
fi

read_env POSTGRES_PASSWORD
read_env POSTGRES_USER postgres
read_env POSTGRES_DB "$POSTGRES_USER"
read_env POSTGRES_INITDB_ARGS
read_env POSTGRES_HOST_AUTH_METHOD
export PGPORT="${PGPORT:-5432}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    # ----- first start: empty data directory --------------------------------
    # (lost+found is left to initdb, whose error message explains mount points)
    if [ -n "$(find "$PGDATA" -mindepth 1 -maxdepth 1 \! -name lost+found -print -quit)" ]; then
        die "$PGDATA is not empty but holds no cluster (no PG_VERSION). Fix: mount an empty volume, or set PGDATA to a subdirectory of the mount (e.g. $PGDATA/pgdata)."
    fi
    if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
        die "the database is uninitialised and no superuser password is set. Fix: pass -e POSTGRES_PASSWORD=... (or POSTGRES_PASSWORD_FILE=/run/secrets/...); POSTGRES_HOST_AUTH_METHOD=trust allows passwordless access (never in production)."
    fi

    log "initialising a new cluster in $PGDATA (superuser '$POSTGRES_USER')"
    initdb_opts=(--username="$POSTGRES_USER")
    if [ -n "${POSTGRES_INITDB_WALDIR:-}" ]; then
        initdb_opts+=(--waldir="$POSTGRES_INITDB_WALDIR")
    fi
    # The password goes through a pipe, never through argv or a file on disk.
    # POSTGRES_INITDB_ARGS is split on spaces on purpose (it is a list of options).
    # shellcheck disable=SC2086
    initdb "${initdb_opts[@]}" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") $POSTGRES_INITDB_ARGS

    # From here until the end of the init scripts, a crash leaves the marker.
    : >"$PGDATA/$INIT_MARKER_NAME"
    trap 'log "ERROR: first-start initialisation failed (see the messages above); $PGDATA is left marked incomplete and later starts will refuse it. Fix the init script, remove the volume and start again."' ERR

    # Remote access rule. initdb's own rules (local socket and 127.0.0.1/::1:
    # trust) stay, like in the official image, so in-container tools such as
    # `pg_isready -h 127.0.0.1` work without a password.
    if [ -z "$POSTGRES_HOST_AUTH_METHOD" ]; then
        # Follow password_encryption (scram-sha-256 by default; honours -c overrides).
        POSTGRES_HOST_AUTH_METHOD="$(postgres -C password_encryption "${@:2}" 2>/dev/null || echo scram-sha-256)"
    fi
    {
        printf '\n# added by docker-entrypoint.sh (POSTGRES_HOST_AUTH_METHOD)\n'
        if [ "$POSTGRES_HOST_AUTH_METHOD" = trust ]; then
            printf '# WARNING: trust lets anyone who can reach the port log in as any role\n'
        fi
        printf 'host all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD"
    } >>"$PGDATA/pg_hba.conf"

    # Temporary server for the setup: unix socket only (listen_addresses=''),
    # so nothing outside the container sees a half-initialised database and a
    # healthcheck over TCP (-h 127.0.0.1) fails until the real server runs.
    # The command line's own options (-c ...) apply to it too, e.g. a
    # shared_preload_libraries an init script needs; listen_addresses comes last
    # so it wins. Its log goes to the container log like the real server's.
    log "starting a temporary server on the unix socket only"
    temp_opts=""
    if [ "$#" -gt 1 ]; then
        temp_opts="$(printf '%q ' "${@:2}")"
    fi
    pg_ctl -D "$PGDATA" -w -t 60 \
        -o "$temp_opts-c listen_addresses='' -p $(printf '%q' "$PGPORT")" start

    psql_base=(psql -v ON_ERROR_STOP=1 --no-password --no-psqlrc --username "$POSTGRES_USER")
    export PGPASSWORD="$POSTGRES_PASSWORD"   # for init scripts that connect themselves

    if [ "$POSTGRES_DB" != postgres ]; then
        log "creating database \"$POSTGRES_DB\""
        "${psql_base[@]}" --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";' >/dev/null
    fi

    # Init scripts in sorted order (glob order is sorted by the C collation here).
    shopt -s nullglob
    export LC_COLLATE=C
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sh)
                if [ -x "$f" ]; then
                    log "running $f"
                    "$f"
                else
                    log "sourcing $f"
                    # Scripts written for the official image may use unset
                    # variables: do not hold them to our `set -u`.
                    set +u
                    # shellcheck disable=SC1090
                    . "$f"
                    set -u
                fi
                ;;
            *.sql)     log "running $f"; "${psql_base[@]}" --dbname "$POSTGRES_DB" -f "$f" ;;
            *.sql.gz)  log "running $f"; gzip -dc "$f" | "${psql_base[@]}" --dbname "$POSTGRES_DB" ;;
            *.sql.xz)  log "running $f"; xz -dc "$f" | "${psql_base[@]}" --dbname "$POSTGRES_DB" ;;
            *.sql.zst) log "running $f"; zstd -dcq "$f" | "${psql_base[@]}" --dbname "$POSTGRES_DB" ;;
            *)         log "ignoring $f (not .sh, .sql, .sql.gz, .sql.xz or .sql.zst)" ;;
        esac
    done
    shopt -u nullglob
    unset PGPASSWORD LC_COLLATE

    log "stopping the temporary server"
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    rm -f "$PGDATA/$INIT_MARKER_NAME"
    trap - ERR
    log "initialisation complete; starting PostgreSQL"
else
    log "existing cluster in $PGDATA (PostgreSQL $(cat "$PGDATA/PG_VERSION")): skipping initialisation"
fi

unset POSTGRES_PASSWORD
# exec: postgres replaces this shell and becomes PID 1.
exec "$@"
