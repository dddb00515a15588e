#!/usr/bin/env bash
# A PostgreSQL server on loopback for the team-server tests (Debian's packages).
#
#   bash scripts/postgres-test-server.sh     # installs postgresql if missing, starts it,
#                                            # creates the role `pipeline` (may create databases)
# Then: export PIPELINE_TEST_POSTGRES=postgresql://pipeline:pipeline@127.0.0.1:5432
set -euo pipefail
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v pg_lsclusters >/dev/null 2>&1; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
version=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$version main"; then
    as_root pg_createcluster "$version" main
fi
# listen on loopback only (Debian's default), whatever state the cluster was left in
as_root pg_ctlcluster "$version" main start 2>/dev/null || true
for _ in $(seq 30); do
    pg_isready -q -h 127.0.0.1 -p 5432 && break
    sleep 1
done
pg_isready -h 127.0.0.1 -p 5432
as_root runuser -u postgres -- psql -q -v ON_ERROR_STOP=1 <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pipeline') THEN
    CREATE ROLE pipeline LOGIN CREATEDB PASSWORD 'pipeline';
  END IF;
END $$;
SQL
