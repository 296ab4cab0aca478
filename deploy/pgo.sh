#!/usr/bin/env bash
# Profile-guided build of imgate: the release build, laid out and inlined by what the request
# path actually runs. On 2 cores it executes about 20 % fewer instructions per cache hit than
# `cargo build --release` (benches/callgrind.sh) and serves a few per cent more hits per second
# (docs/performance.md, "Profile-guided build"). The behaviour is the same code's: only the
# compiler's choices differ.
#
#   bash deploy/pgo.sh                  # → target/pgo/imgate (about 15 minutes on 2 cores)
#   TRAIN_SECONDS=10 bash deploy/pgo.sh # longer training loads (default 5 s each)
#
# Three steps:
#   1. an instrumented release build (target/pgo/instrumented) that counts every branch it takes;
#   2. training: it runs as the vendor emulator and as two gateways (access log off, and on in
#      JSON as operators run it) in front of it, with the demo configuration, a quota for the
#      client and a long cache TTL, while wrk sends what a gateway mostly serves: cache hits on
#      one hot key and on 1,000 keys, for both vendors, then misses (new users: the vendor
#      calls, within the app's vendor quota) and refused callers;
#   3. the release build again with those counts (target/pgo/optimized), copied to
#      target/pgo/imgate.
# The profile decides only what is fast: code the training never ran (rare errors, TLS, cluster
# mode) is still compiled and correct, only laid out as cold.
#
# Needs rustup's llvm-tools (for llvm-profdata; added with rustup when missing), wrk and curl
# (wrk installed from the distribution's packages when missing). Listens on loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
TRAIN_SECONDS=${TRAIN_SECONDS:-5}
OUT=$PWD/target/pgo
PROFILES=$OUT/profiles
HOST=$(rustc -vV | sed -n 's/^host: //p')
PROFDATA=$(rustc --print sysroot)/lib/rustlib/$HOST/bin/llvm-profdata
EMU=127.0.0.1:28681
GW=127.0.0.1:28680
ADMIN=127.0.0.1:29690
GW_LOG=127.0.0.1:28685
ADMIN_LOG=127.0.0.1:29691
AGORA_PREFIX=/app-id/a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6/users
EASEMOB_PREFIX=/demo-org/demo-app/users

if [ ! -x "$PROFDATA" ]; then
  echo "installing rustup's llvm-tools (llvm-profdata)…" >&2
  rustup component add llvm-tools >/dev/null
fi
command -v wrk >/dev/null 2>&1 || {
  echo "installing wrk…" >&2
  apt-get update -qq >/dev/null && apt-get install -y -qq wrk >/dev/null
}
for addr in "$EMU" "$GW" "$ADMIN" "$GW_LOG" "$ADMIN_LOG"; do
  if (exec 3<>"/dev/tcp/${addr%:*}/${addr#*:}") 2>/dev/null; then
    echo "pgo.sh: $addr is already in use" >&2
    exit 1
  fi
done

# build DIR FLAG: the release build of the imgate binary with FLAG. `--target` keeps the flag
# off build scripts and proc macros (an instrumented build script would add its own counts).
build() {
  RUSTFLAGS="${RUSTFLAGS:-} $2" cargo build --release --locked -q --bin imgate \
    --target "$HOST" --target-dir "$OUT/$1"
}

echo "1/3 instrumented build…" >&2
rm -rf "$PROFILES"
build instrumented "-Cprofile-generate=$PROFILES"
BIN=$OUT/instrumented/$HOST/release/imgate

echo "2/3 training…" >&2
# shellcheck source=benches/common.sh
. benches/common.sh
start_emulator "$BIN" "$EMU"
# The configuration of benches/cache.sh: the demo, a quota for the client, a long TTL.
hit_config "$EMU" "$GW" "$ADMIN" > "$work/gateway.toml"
sed -e "s|$GW|$GW_LOG|" -e "s|$ADMIN|$ADMIN_LOG|" "$work/gateway.toml" > "$work/gateway-log.toml"
RUST_LOG=warn "$BIN" serve --config "$work/gateway.toml" & pids+=($!)
RUST_LOG=info "$BIN" --log-format json serve --config "$work/gateway-log.toml" > /dev/null & pids+=($!)
wait_ok "http://$ADMIN/readyz"
wait_ok "http://$ADMIN_LOG/readyz"

# Lua for wrk: 1,000 users of PREFIX picked at random, or a new user per request (a miss).
keys_lua() {
  cat <<EOF
local reqs = {}
function init(args)
  for i = 1, 1000 do reqs[i] = wrk.format("GET", "$1/pgo-" .. i .. "/offline_msg_count") end
end
function request() return reqs[math.random(1000)] end
EOF
}
cat > "$work/misses.lua" <<EOF
function request()
  return wrk.format("GET", "$AGORA_PREFIX/new-" .. math.random(1e9) .. "/offline_msg_count")
end
EOF
load() { wrk -t2 -c64 -d"${TRAIN_SECONDS}s" -H 'Authorization: Bearer demo-key' "$@" > /dev/null; }
for gw in "$GW" "$GW_LOG"; do
  for prefix in "$AGORA_PREFIX" "$EASEMOB_PREFIX"; do
    # A profile of error answers would make the errors the fast path: the read must succeed.
    wait_ok "http://$gw$prefix/hot/offline_msg_count" -H 'Authorization: Bearer demo-key'
    load "http://$gw$prefix/hot/offline_msg_count"
    keys_lua "$prefix" > "$work/keys.lua"
    # The first pass fills the cache within the vendor quota, the second one hits.
    load -s "$work/keys.lua" "http://$gw/"
    load -s "$work/keys.lua" "http://$gw/"
  done
  load -s "$work/misses.lua" "http://$gw/"
  wrk -t1 -c4 -d1s -H 'Authorization: Bearer wrong-key' "http://$gw$AGORA_PREFIX/hot/offline_msg_count" > /dev/null
done
curl -s -o /dev/null "http://$ADMIN/metrics"
curl -s -o /dev/null "http://$ADMIN_LOG/metrics"
# The counts are written when the processes exit.
for pid in "${pids[@]}"; do kill "$pid"; done
wait
pids=()
"$PROFDATA" merge -o "$OUT/imgate.profdata" "$PROFILES"

echo "3/3 optimised build…" >&2
build optimized "-Cprofile-use=$OUT/imgate.profdata"
cp "$OUT/optimized/$HOST/release/imgate" "$OUT/imgate"
echo "$OUT/imgate"
