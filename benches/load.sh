#!/usr/bin/env bash
# Load benchmark: the same calls made directly to the vendor emulator and through imgate, side
# by side in one run, with wrk (installed from the distribution's packages when missing).
#
#   bash benches/load.sh                 # 10 s per scenario, about 1 minute in all
#   DURATION=5 bash benches/load.sh      # shorter
#   IMGATE_BIN=target/pgo/imgate bash benches/load.sh  # that binary instead of the release build
#
# Prints requests/s, p50 and p99 per scenario. Everything runs on loopback; wrk, the emulator
# and the gateway share this machine's cores, so compare rows of one run, not across machines.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
EMU=127.0.0.1:28081
GW=127.0.0.1:28080
ADMIN=127.0.0.1:29090
AGORA_ID=a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6
AGORA_CERT=0f1e2d3c4b5a69788796a5b4c3d2e1f0

if ! command -v wrk >/dev/null 2>&1; then
  echo "installing wrk…" >&2
  apt-get update -qq >/dev/null && apt-get install -y -qq wrk >/dev/null
fi
# shellcheck source=benches/common.sh
. benches/common.sh
BIN=$(imgate_bin)
start_emulator "$BIN" "$EMU"

# The gateway: the demo configuration, pointed at the quota-free emulator.
sed -e "s|http://127.0.0.1:8081|http://$EMU|" -e "s|127.0.0.1:8080|$GW|" -e "s|127.0.0.1:9090|$ADMIN|" \
  config/demo.toml > "$work/gateway.toml"
# The miss path: imgate's cache off for this read, so every call goes to the vendor, and the
# vendor quota as unlimited as the benchmark's emulator (imgate would otherwise, rightly, hold
# the calls to the vendor's 100/s).
sed -i '/^app_certificate = /a vendor_quotas = { offline_msg_count = 10000000 }' "$work/gateway.toml"
printf '\n[cache.offline_count]\nttl_ms = 0\n' >> "$work/gateway.toml"
RUST_LOG=warn "$BIN" serve --config "$work/gateway.toml" & pids+=($!)
wait_ok "http://$ADMIN/readyz"

TOKEN=$("$BIN" token agora --app-id "$AGORA_ID" --app-certificate "$AGORA_CERT" --expire 3600)
PATH_COUNT="/app-id/$AGORA_ID/users/bench-user/offline_msg_count"

# run NAME URL AUTH CONNECTIONS
run() {
  local name=$1 url=$2 auth=$3 conns=$4 out
  out=$(wrk -t2 -c"$conns" -d"${DURATION}s" --latency -H "Authorization: Bearer $auth" "$url")
  local rps p50 p99 bad
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  bad=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  printf '%-44s %6s %12s %10s %10s %8s\n' "$name" "$conns" "$rps" "$p50" "$p99" "${bad:-0}"
}

printf '%-44s %6s %12s %10s %10s %8s\n' scenario conns "req/s" p50 p99 non-2xx
for conns in 4 64; do
  run "offline_msg_count direct to the emulator" "http://$EMU$PATH_COUNT" "$TOKEN" "$conns"
  run "offline_msg_count through imgate (miss path)" "http://$GW$PATH_COUNT" demo-key "$conns"
done
