#!/usr/bin/env bash
# Start the PostgreSQL and Redis servers the integration tests use, when they aren't running.
set -euo pipefail
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if ! listening 5432; then
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$version" ]; then
    echo "PostgreSQL is not installed; install it or set TRIAGE_TEST_PG_URL" >&2
    exit 1
  fi
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
fi
if ! listening 6379; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
fi
for _ in $(seq 50); do
  listening 5432 && listening 6379 && exit 0
  sleep 0.2
done
echo "PostgreSQL or Redis did not come up" >&2
exit 1
