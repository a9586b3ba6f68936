#!/usr/bin/env bash
# est-bench keep-alive enrollments on one SQLite server, one PostgreSQL
# server, three servers sharing that PostgreSQL (three est-bench processes,
# figures summed) and, with PREFILL=N, one PostgreSQL server over a registry
# pre-filled with N certificates. Prints est-bench's tables and a summary.
#
#   cargo build --release -p est-server -p est-bench
#   bench/registry-bench.sh                      # CONC=32 SECONDS=5 by default
#   PREFILL=1000000 bench/registry-bench.sh      # adds the full-registry run
#
# PostgreSQL is a private cluster (initdb + pg_ctl in a temp dir on
# 127.0.0.1; as root it runs as the `postgres` user), removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
CONC=${CONC:-32}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
PREFILL=${PREFILL:-0}
PREFILL_BIN=${PREFILL_BIN:-$BIN/prefill}
WORK=$(mktemp -d /tmp/est-registry-bench.XXXXXX)
PGBIN=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort | tail -1)")
PGPORT=${PGPORT:-55439}
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  as_pg "$PGBIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/pg" && chmod 0777 "$WORK" && chown postgres "$WORK/pg" 2>/dev/null || true
as_pg "$PGBIN/initdb" -D "$WORK/pg" -U postgres -A trust >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w \
  -o "-c listen_addresses=127.0.0.1 -c port=$PGPORT -c unix_socket_directories='' -c max_connections=200" start >/dev/null
PGURL="postgres://postgres@127.0.0.1:$PGPORT"
as_pg "$PGBIN/createdb" -h 127.0.0.1 -p "$PGPORT" -U postgres est
as_pg "$PGBIN/createdb" -h 127.0.0.1 -p "$PGPORT" -U postgres full

# A data dir with the dev config, the per-address cap raised for the
# one-address generator, and optionally a PostgreSQL registry.
datadir() { # name [database]
  local dir="$WORK/$1"
  timeout 10 "$BIN/est-server" serve --dev --data-dir "$dir" --listen 127.0.0.1:0 >/dev/null 2>&1 || true
  sed -i 's/^max_connections_per_address = .*/max_connections_per_address = 4096/' "$dir/est-server.toml"
  if [ -n "${2:-}" ]; then
    sed -i "s|^path = \"registry.sqlite\"|kind = \"postgres\"\nurl = \"$PGURL/$2\"\npool_size = 16|" "$dir/est-server.toml"
  fi
  echo "$dir"
}
serve() { # dir port
  "$BIN/est-server" serve --dev --data-dir "$1" --listen "127.0.0.1:$2" >"$1/serve.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    grep -q "EST server listening" "$1/serve.log" 2>/dev/null && return 0
    sleep 0.1
  done
  cat "$1/serve.log"; exit 1
}
bench() { # port dir conc pid
  "$BIN/est-bench" --server "localhost:$1" --trust "$2/ca.pem" --server-pid "$4" \
    --concurrency "$3" --seconds "$SECONDS_PER_RUN" --modes keepalive
}
rate() { awk '$1 == "keepalive" { print $3; exit }'; }

declare -A result
run_one() { # label dir port
  serve "$2" "$3"
  local out; out=$(bench "$3" "$2" "$CONC" "${pids[-1]}")
  echo "== $1"; echo "$out"
  result[$1]=$(echo "$out" | rate)
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
}

run_one sqlite "$(datadir sqlite)" 18621
PG1=$(datadir pg1 est)
run_one postgres "$PG1" 18622

# Three servers on the same database and CA; three generators at CONC/3 each.
for n in 2 3; do
  d=$(datadir "pg$n" est)
  rm -rf "$d/ca" "$d/tls"; cp -r "$PG1/ca" "$PG1/tls" "$d/"; cp "$PG1/ca.pem" "$d/ca.pem"
done
for n in 1 2 3; do serve "$WORK/pg$n" $((18630 + n)); done
server_pids=("${pids[@]: -3}")
per=$(( (CONC + 2) / 3 ))
bench_pids=()
for n in 1 2 3; do
  bench $((18630 + n)) "$WORK/pg$n" "$per" "${server_pids[$((n - 1))]}" >"$WORK/fleet$n.out" &
  bench_pids+=($!)
done
wait "${bench_pids[@]}"
total=0
for n in 1 2 3; do
  echo "== fleet server $n (concurrency $per)"; cat "$WORK/fleet$n.out"
  r=$(rate <"$WORK/fleet$n.out"); total=$(( total + ${r%.*} ))
done
result[fleet3]=$total
for pid in "${server_pids[@]}"; do kill "$pid" 2>/dev/null || true; done

if [ "$PREFILL" -gt 0 ]; then
  start=$(date +%s)
  "$PREFILL_BIN" --postgres "$PGURL/full" --count "$PREFILL"
  echo "prefill of $PREFILL certificates: $(( $(date +%s) - start )) s"
  run_one "postgres-$PREFILL" "$(datadir full full)" 18640
fi

echo
echo "== summary (keep-alive, enrollments/s, concurrency $CONC, ${SECONDS_PER_RUN}s)"
for k in sqlite postgres fleet3 "postgres-$PREFILL"; do
  [ -n "${result[$k]:-}" ] && echo "$k: ${result[$k]}"
done
awk -v s="${result[sqlite]}" -v p="${result[postgres]}" 'BEGIN { printf "postgres / sqlite: %.0f%%\n", 100 * p / s }'
if [ -n "${result[postgres-$PREFILL]:-}" ]; then
  awk -v e="${result[postgres]}" -v f="${result[postgres-$PREFILL]}" 'BEGIN { printf "full / empty postgres: %.0f%%\n", 100 * f / e }'
fi
