#!/usr/bin/env bash
# Cluster mode's cost on the cache-hit path: one imgate replica serving the same cached read,
# first without [cluster], then with [cluster] on a local redis-server, with the same wrk load.
# The target: in cluster mode at least 90% of the requests/s of the same replica without it.
#
#   bash benches/cluster.sh               # 10 s per run
#   DURATION=5 CONNS=32 bash benches/cluster.sh
#
# The caller has a quota (200,000/s), so the cluster row pays for what cluster mode adds to a
# hit: the client's permits leased from Redis (10,000 per lease at that rate) and spent locally.
# Installs wrk and redis-server from the distribution's packages when missing; everything
# listens on loopback and stops with the script. One run on a shared machine: compare the two
# rows of one run only, and re-run when the `other CPU` column (the share of the cores used by
# processes outside this script) is high.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
CORES=$(nproc)
THREADS=$((CORES < CONNS ? CORES : CONNS))
EMU=127.0.0.1:28281
GW=127.0.0.1:28280
ADMIN=127.0.0.1:29290
REDIS_PORT=28279
HOT_PATH="/app-id/a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6/users/bench-user/offline_msg_count"
AUTH="Authorization: Bearer bench-key"

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if ((${#missing[@]})); then
  echo "installing ${missing[*]}…" >&2
  apt-get update -qq >/dev/null && apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo build --release --locked -q
BIN=target/release/imgate

# shellcheck source=benches/common.sh
. benches/common.sh

start_emulator "$BIN" "$EMU"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
  >/dev/null & pids+=($!)
for _ in $(seq 100); do
  redis-cli -p "$REDIS_PORT" PING 2>/dev/null | grep -q PONG && break
  sleep 0.1
done

sed -e "s|http://127.0.0.1:8081|http://$EMU|" -e "s|127.0.0.1:8080|$GW|" -e "s|127.0.0.1:9090|$ADMIN|" \
  config/demo.toml > "$work/single.toml"
cat >> "$work/single.toml" <<'EOF'

[cache.offline_count]
ttl_ms = 60000

[[clients]]
name = "bench"
key = "bench-key"
rate_limit = { per_second = 200000, burst = 200000 }
EOF
cp "$work/single.toml" "$work/cluster.toml"
cat >> "$work/cluster.toml" <<EOF

[cluster]
redis_url = "redis://127.0.0.1:$REDIS_PORT/0"
EOF

# CPU jiffies of the whole machine, and of this script's processes: the running servers, plus
# the children it has waited for (wrk), which the shell's cutime/cstime count.
all_jiffies() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
own_jiffies() {
  local total pid
  total=$(awk '{ print $16 + $17 }' "/proc/$$/stat")
  for pid in "${pids[@]}"; do
    [ -r "/proc/$pid/stat" ] && total=$((total + $(awk '{ print $14 + $15 }' "/proc/$pid/stat")))
  done
  echo "$total"
}

run() {
  local mode=$1 out="$work/wrk-$1.txt" gw all0 own0 all1 own1 wrk_pid
  RUST_LOG=error "$BIN" serve --config "$work/$mode.toml" & gw=$!
  pids+=("$gw")
  wait_ok "http://$ADMIN/readyz"
  wait_ok "http://$GW$HOT_PATH" -H "$AUTH"
  if [ "$mode" = cluster ]; then
    # Ready comes before the first heartbeat: wait for shared mode.
    for _ in $(seq 50); do
      curl -s "http://$ADMIN/metrics" | grep -q '^imgate_cluster_redis_up 1' && break
      sleep 0.1
    done
    curl -s "http://$ADMIN/metrics" | grep -q '^imgate_cluster_redis_up 1' ||
      { echo "cluster.sh: the replica is not in shared mode" >&2; exit 1; }
  fi
  all0=$(all_jiffies) own0=$(own_jiffies)
  wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency -H "$AUTH" "http://$GW$HOT_PATH" > "$out" &
  wrk_pid=$!
  wait "$wrk_pid"
  all1=$(all_jiffies) own1=$(own_jiffies)
  local rps p50 p99 other
  rps=$(awk '/^Requests\/sec/ { printf "%.0f", $2 }' "$out")
  p50=$(awk '$1 == "50%" { print $2 }' "$out")
  p99=$(awk '$1 == "99%" { print $2 }' "$out")
  other=$(awk -v a=$((all1 - all0)) -v o=$((own1 - own0)) -v d="$DURATION" -v c="$CORES" \
    'BEGIN { hz = 100; x = (a - o) / (hz * d * c) * 100; if (x < 0) x = 0; printf "%.0f%%", x }')
  printf '%-8s %12s %10s %10s %10s\n' "$mode" "$rps" "$p50" "$p99" "$other"
  echo "$rps" > "$work/rps-$mode"
  kill "$gw" && wait "$gw" 2>/dev/null || true
}

echo "cache-hit path, one replica, $CONNS connections, ${DURATION}s per run, $CORES cores"
printf '%-8s %12s %10s %10s %10s\n' mode "requests/s" p50 p99 "other CPU"
run single
run cluster
awk -v s="$(cat "$work/rps-single")" -v c="$(cat "$work/rps-cluster")" 'BEGIN {
  r = c / s * 100
  printf "cluster / single: %.1f%% (target >= 90%%): %s\n", r, (r >= 90 ? "met" : "NOT met")
}'
