#!/usr/bin/env bash
# Services the test suite needs, on loopback: a PostgreSQL server (Debian's postgresql) with a
# role that may create databases, and headless Chromium + ChromeDriver (Debian's packages; browser
# downloads by pip packages do not work here). Idempotent: safe to run again on a machine that has them.
# Prints the PostgreSQL URL the tests read from RLSTACK_TEST_POSTGRES_URL.
set -euo pipefail
need=()
command -v pg_ctlcluster >/dev/null 2>&1 || need+=(postgresql)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v tmux >/dev/null 2>&1 || need+=(tmux)
if ((${#need[@]})); then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
ver=$(ls /usr/lib/postgresql | sort -V | tail -1)
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
pg_lsclusters -h | grep -q "^$ver *main" || $SUDO pg_createcluster "$ver" main >/dev/null
pg_lsclusters -h | grep "^$ver *main" | grep -q online || $SUDO pg_ctlcluster "$ver" main start
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi; }
for _ in $(seq 30); do as_pg psql -qtAc "SELECT 1" >/dev/null 2>&1 && break; sleep 0.5; done
as_pg psql -qtAc "SELECT 1 FROM pg_roles WHERE rolname='rlstack'" | grep -q 1 \
  || as_pg psql -qc "CREATE ROLE rlstack LOGIN PASSWORD 'rlstack' CREATEDB"
echo "postgresql+psycopg://rlstack:rlstack@127.0.0.1:5432/postgres"
