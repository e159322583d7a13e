#!/usr/bin/env bash
# Which PostgreSQL and Redis `make test` uses, in one line. The machine's, at 127.0.0.1:5432 (trust,
# database `test`) and 127.0.0.1:6379, started here if they are installed but down. Where there are
# none, the test run starts its own on free ports (tests/own_services.py): no error, nothing to install.
# KILN_TEST_SERVICES=own: the run's own even where the machine's run (they are left alone);
# KILN_TEST_PG / KILN_TEST_REDIS: URLs given by hand, used as they are.
set -u
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pg_up() {
  if command -v pg_isready >/dev/null 2>&1; then pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; else port_open 5432; fi
}
redis_up() {
  if command -v redis-cli >/dev/null 2>&1; then
    redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG
  else port_open 6379; fi
}
mode=${KILN_TEST_SERVICES:-auto}

if [ "$mode" != own ]; then
  if [ -z "${KILN_TEST_PG:-}" ] && ! pg_up && command -v pg_ctlcluster >/dev/null 2>&1 \
    && [ -n "$(ls /etc/postgresql 2>/dev/null)" ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start >/dev/null 2>&1
    for _ in $(seq 50); do pg_up && break; sleep 0.2; done
  fi
  if [ -z "${KILN_TEST_REDIS:-}" ] && ! redis_up && command -v redis-server >/dev/null 2>&1; then
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log >/dev/null 2>&1
    for _ in $(seq 50); do redis_up && break; sleep 0.2; done
  fi
fi

# say NAME GIVEN_VAR UP_FUNCTION ADDRESS
say() {
  if [ -n "${!2:-}" ]; then echo "$1 given by $2"
  elif [ "$mode" = own ]; then echo "$1 the run's own (KILN_TEST_SERVICES=own)"
  elif $3; then echo "$1 the machine's at $4"
  else echo "$1 the run's own (none at $4)"; fi
}
echo "test services: $(say PostgreSQL KILN_TEST_PG pg_up 127.0.0.1:5432); $(say Redis KILN_TEST_REDIS redis_up 127.0.0.1:6379)"
exit 0
