#!/usr/bin/env bash
# Soak: imgate under a mixed load for N minutes while the vendor emulator's faults (errors,
# connection resets, latency, revoked tokens) switch on and off; the gateway's resident memory
# and open file descriptors are sampled every second, and the drift is reported at the end.
#
#   nice -n 19 bash benches/soak.sh                       # 30 minutes
#   MINUTES=5 bash benches/soak.sh                        # shorter
#   IMGATE_BIN=target/debug/imgate bash benches/soak.sh   # an existing binary, no release build
#
# Knobs: CONNS (8) connections, SOAK_DELAY_MS (20) pause between a connection's requests (so at
# most CONNS*1000/SOAK_DELAY_MS requests/s), SOAK_USERS (2000) distinct users, PHASE_SECS (30)
# per fault phase, WARMUP_SECS (180: past the longest cache entry lifetime, 120 s) left out of
# the drift. The samples (t, phase, RSS KiB, fds) go to target/soak/samples.csv. Everything runs on loopback and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${MINUTES:-30}
CONNS=${CONNS:-8}
PHASE_SECS=${PHASE_SECS:-30}
WARMUP_SECS=${WARMUP_SECS:-180}
EMU=127.0.0.1:${SOAK_EMU_PORT:-28281}
GW=127.0.0.1:${SOAK_PORT:-28280}
ADMIN=127.0.0.1:${SOAK_ADMIN_PORT:-29290}
OUT=target/soak
SECS=$((MINUTES * 60))

if ! command -v wrk >/dev/null 2>&1; then
  echo "installing wrk…" >&2
  apt-get update -qq >/dev/null && apt-get install -y -qq wrk >/dev/null
fi
# shellcheck source=benches/common.sh
. benches/common.sh
BIN=$(imgate_bin)

mkdir -p "$OUT"

sed -e "s|http://127.0.0.1:8081|http://$EMU|" -e "s|127.0.0.1:8080|$GW|" -e "s|127.0.0.1:9090|$ADMIN|" \
  config/demo.toml > "$work/gateway.toml"
# Entry lifetimes short enough for the cache to reach its steady size within the warm-up, so
# that what grows after it is a leak and not the cache filling: by default a `delivered` status
# (final) is kept an hour, and the mix reads a new one about 20 times a second, so a 30-minute
# soak would watch them pile up by design (bounded by the hour and by max_entries).
cat >> "$work/gateway.toml" <<'EOF'

[cache.offline_status]
delivered_ttl_ms = 60000
EOF
# The emulator with its quotas on, as the vendor has them (unlike the hit benchmarks').
RUST_LOG=error "$BIN" emulator --listen "$EMU" 2>"$OUT/emulator.log" & pids+=($!)
RUST_LOG=error "$BIN" serve --config "$work/gateway.toml" 2>"$OUT/gateway.log" & gw=$!
pids+=("$gw")
wait_ok "http://$EMU/__emulator/faults"
wait_ok "http://$ADMIN/readyz"

# The fault phases, in turn; "revoke" revokes every token the emulator issued (imgate renews).
phases=(calm errors calm resets calm latency calm mixed revoke)
fault_body() {
  case $1 in
    errors) echo '{"error_rate":0.3,"error_status":503}' ;;
    resets) echo '{"reset_rate":0.2}' ;;
    latency) echo '{"latency_ms":300}' ;;
    mixed) echo '{"error_rate":0.1,"reset_rate":0.1,"latency_ms":100}' ;;
    *) echo '{}' ;;
  esac
}
set_phase() {
  curl -sf -X PUT "http://$EMU/__emulator/faults" -d "$(fault_body "$1")" >/dev/null
  if [ "$1" = revoke ]; then
    curl -sf -X POST "http://$EMU/__emulator/revoke-tokens" >/dev/null
  fi
}

SOAK_DELAY_MS=${SOAK_DELAY_MS:-20} SOAK_USERS=${SOAK_USERS:-2000} \
  wrk -t2 -c"$CONNS" -d"${SECS}s" --timeout 5s -s benches/soak.lua "http://$GW" >"$OUT/wrk.txt" 2>&1 &
load=$!
pids+=("$load")

echo "t,phase,rss_kib,fds" >"$OUT/samples.csv"
# Seconds since the start by the clock (a loaded machine stretches each turn of the loop).
start=$(date +%s)
turn=-1
while t=$(($(date +%s) - start)); [ "$t" -lt "$SECS" ]; do
  if [ $((t / PHASE_SECS)) -ne "$turn" ]; then
    turn=$((t / PHASE_SECS))
    phase=${phases[$((turn % ${#phases[@]}))]}
    set_phase "$phase" || echo "could not set phase $phase at ${t}s" >&2
  fi
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$gw/status" 2>/dev/null) || { echo "imgate died at ${t}s" >&2; exit 1; }
  fds=$(find "/proc/$gw/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
  echo "$t,$phase,$rss,$fds" >>"$OUT/samples.csv"
  sleep 1
done
set_phase calm
wait "$load" || true

# Still serving after the soak: an honest read must be answered 200 within 10 s. Not at once:
# after a fault phase of vendor 503s imgate holds the endpoint's vendor calls off for up to 5 s
# (its adaptive pause), answering 429 imgate_vendor_quota meanwhile, by design.
for _ in $(seq 20); do
  final=$(curl -s -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer demo-key' \
    "http://$GW/demo-org/demo-app/users/soak-final/offline_msg_count")
  [ "$final" = 200 ] && break
  sleep 0.5
done

echo "== soak: ${MINUTES} min, $CONNS connections, fault phases of ${PHASE_SECS}s: ${phases[*]}"
grep -E '^ +[0-9]+ requests in|Requests/sec|^statuses:|^socket errors:' "$OUT/wrk.txt" || cat "$OUT/wrk.txt"
echo "gateway log lines (errors): $(wc -l <"$OUT/gateway.log"); after the soak, an honest read: $final"
echo "cache entries at the end: $(curl -s "http://$ADMIN/metrics" | awk '/^imgate_cache_entries/ {printf "%s ", $0}')"
# Drift: the mean of the first minute after the warm-up against the mean of the last minute,
# and the least-squares slope over everything after the warm-up.
awk -F, -v warm="$WARMUP_SECS" -v end="$SECS" '
  NR == 1 || $1 < warm { next }
  {
    n++; x = $1 / 60; sx += x; sxx += x * x
    for (c = 3; c <= 4; c++) {
      v = $c; sy[c] += v; sxy[c] += x * v
      if (n == 1 || v > max[c]) max[c] = v
      if (n == 1 || v < min[c]) min[c] = v
      if ($1 < warm + 60) { first[c] += v; nf[c]++ }
      if ($1 >= end - 60) { last[c] += v; nl[c]++ }
    }
  }
  END {
    split("- - rss_kib fds", name, " ")
    for (c = 3; c <= 4; c++) {
      if (!nf[c] || !nl[c]) { print "too short for a drift: raise MINUTES"; exit 1 }
      a = first[c] / nf[c]; b = last[c] / nl[c]
      slope = (n * sxy[c] - sx * sy[c]) / (n * sxx - sx * sx)
      printf "%-8s first minute %10.0f  last minute %10.0f  drift %+9.0f (%+.1f%%)  min %8d  max %8d  slope %+.1f/min\n",
        name[c], a, b, b - a, a ? 100 * (b - a) / a : 0, min[c], max[c], slope
    }
  }' "$OUT/samples.csv"
[ "$final" = 200 ]
