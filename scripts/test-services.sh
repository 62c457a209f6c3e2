#!/usr/bin/env bash
# Make sure the services the test suite talks to are up: PostgreSQL, Redis, and Chromium for the
# browser tests. Starts what is installed but down; says clearly what cannot be reached.
set -uo pipefail
db_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/commonground}
redis_url=${REDIS_URL:-redis://127.0.0.1:6379/0}

hostport() { python3 -c "import sys,urllib.parse as u; p=u.urlparse(sys.argv[1]); print(p.hostname or '127.0.0.1', p.port or int(sys.argv[2]))" "$1" "$2"; }
reachable() { python3 -c "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 2)" "$1" "$2" 2>/dev/null; }

read -r pg_host pg_port < <(hostport "$db_url" 5432)
if ! reachable "$pg_host" "$pg_port"; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    echo "PostgreSQL is down; starting it"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
    for _ in $(seq 30); do reachable "$pg_host" "$pg_port" && break; sleep 1; done
  fi
fi
if ! reachable "$pg_host" "$pg_port"; then
  echo "ERROR: cannot reach PostgreSQL at $pg_host:$pg_port. Start it, or set DATABASE_URL=postgres://user@host:port/db." >&2
  exit 1
fi

read -r redis_host redis_port < <(hostport "$redis_url" 6379)
if ! reachable "$redis_host" "$redis_port"; then
  if command -v redis-server >/dev/null; then
    echo "Redis is down; starting it"
    redis-server --daemonize yes --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no
    for _ in $(seq 20); do reachable "$redis_host" "$redis_port" && break; sleep 0.5; done
  fi
fi
if ! reachable "$redis_host" "$redis_port"; then
  echo "ERROR: cannot reach Redis at $redis_host:$redis_port. Start it, or set REDIS_URL=redis://host:port/0." >&2
  exit 1
fi

if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Installing Debian's chromium for the browser tests"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
  fi
fi
if [ ! -x /usr/bin/chromium ]; then
  echo "ERROR: /usr/bin/chromium is missing; the browser tests need it (apt-get install chromium)." >&2
  exit 1
fi
echo "Services ready: PostgreSQL $pg_host:$pg_port, Redis $redis_host:$redis_port, $(/usr/bin/chromium --version 2>/dev/null)"
