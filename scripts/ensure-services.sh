#!/usr/bin/env bash
# Which PostgreSQL and Redis `make test` uses, in one line. The machine's, at 127.0.0.1:5432 (trust,
# database `test`) and 127.0.0.1:6379, when they answer (never started or stopped from here). Where
# they do not, the test run starts its own on free ports (tests/own_services.py): no error, nothing
# to install.
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

# say NAME GIVEN_VAR UP_FUNCTION ADDRESS
say() {
  if [ -n "${!2:-}" ]; then echo "$1 given by $2"
  elif [ "$mode" = own ]; then echo "$1 the run's own (KILN_TEST_SERVICES=own)"
  elif $3; then echo "$1 the machine's at $4"
  else echo "$1 the run's own (none at $4)"; fi
}
echo "test services: $(say PostgreSQL KILN_TEST_PG pg_up 127.0.0.1:5432); $(say Redis KILN_TEST_REDIS redis_up 127.0.0.1:6379)"
exit 0
