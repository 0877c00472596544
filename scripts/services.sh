#!/usr/bin/env bash
# Makes sure the engines the test suite uses are running on loopback, starting those that are
# not: PostgreSQL (5432), RabbitMQ (5672), NATS with JetStream (4222).
# Exits non-zero if one cannot be brought up. Safe to run repeatedly.
set -uo pipefail

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # name port seconds
  local i
  for ((i = 0; i < $3 * 4; i++)); do
    up "$2" && return 0
    sleep 0.25
  done
  echo "services: $1 did not come up on 127.0.0.1:$2" >&2
  return 1
}

status=0

if ! up 5432; then
  echo "services: starting PostgreSQL"
  if command -v pg_ctlcluster >/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  fi
  wait_port PostgreSQL 5432 30 || status=1
fi

if ! up 5672; then
  echo "services: starting RabbitMQ"
  if command -v rabbitmq-server >/dev/null; then
    rabbitmq-server -detached || true
  fi
  wait_port RabbitMQ 5672 90 || status=1
fi
# The AMQP port opens before the broker accepts connections; wait until it answers.
if up 5672 && command -v rabbitmqctl >/dev/null; then
  for _ in $(seq 1 60); do
    rabbitmqctl -q await_startup >/dev/null 2>&1 && break
    sleep 1
  done
fi

if ! up 4222; then
  echo "services: starting NATS (JetStream)"
  if [ -x /usr/sbin/nats-server ]; then
    mkdir -p /var/lib/nats-server
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
      -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log || true
  fi
  wait_port NATS 4222 30 || status=1
fi

if [ "$status" = 0 ]; then
  echo "services: PostgreSQL, RabbitMQ and NATS are up"
fi
exit "$status"
