#!/usr/bin/env bash
# Make sure the PostgreSQL (127.0.0.1:5432, database `test`) and Redis (127.0.0.1:6379) that
# the tests use are up; start the machine's own services if they are down.
set -u
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

if ! pg_up && command -v pg_ctlcluster >/dev/null 2>&1; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  for _ in $(seq 50); do pg_up && break; sleep 0.2; done
fi
if ! redis_up && command -v redis-server >/dev/null 2>&1; then
  echo "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  for _ in $(seq 50); do redis_up && break; sleep 0.2; done
fi
pg_up || echo "warning: PostgreSQL is not reachable at 127.0.0.1:5432; its tests will fail" >&2
redis_up || echo "warning: Redis is not reachable at 127.0.0.1:6379; its tests will fail" >&2
exit 0
