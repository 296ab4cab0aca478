# shellcheck shell=bash
# Shared by the benchmark scripts (sourced, not run): a temporary work directory, the processes
# started into `pids` (stopped, and the directory removed, when the script exits), the
# binaries to measure (imgate_bin, ceiling_bin) and wait_ok.

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# ceiling_bin: the bare hyper server of benches/ceiling.rs, built now; its path from cargo, not
# a glob over stale hashes.
ceiling_bin() {
  local bin
  bin=$(cargo build --release --locked -q --bench ceiling --message-format=json |
    sed -n 's/.*"executable":"\([^"]*ceiling[^"]*\)".*/\1/p' | tail -n1)
  [ -x "$bin" ] || { echo "$(basename "$0"): no ceiling executable built" >&2; return 1; }
  echo "$bin"
}

# imgate_bin: the imgate binary to measure, printed: $IMGATE_BIN as given (say deploy/pgo.sh's
# target/pgo/imgate, or a debug build), else the release build, built now.
imgate_bin() {
  if [ -n "${IMGATE_BIN:-}" ]; then
    echo "$IMGATE_BIN"
  else
    cargo build --release --locked -q >&2 && echo target/release/imgate
  fi
}

# wait_ok URL [CURL ARGS…]: until URL answers 200, at most 10 s.
wait_ok() {
  local url=$1
  shift
  for _ in $(seq 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$@" "$url" 2>/dev/null)" = 200 ] && return 0
    sleep 0.1
  done
  echo "$(basename "$0"): $url did not answer 200 within 10 s" >&2
  exit 1
}

# start_emulator BIN ADDR: imgate's vendor emulator with every quota off (benches/emulator.toml),
# so that runs measure imgate rather than the vendor's per-app limits; returns once it answers.
start_emulator() {
  RUST_LOG=warn "$1" emulator --config benches/emulator.toml --listen "$2" & pids+=($!)
  wait_ok "http://$2/__emulator/stats"
}

# hit_config EMU GW ADMIN: the demo configuration (config/demo.toml) in front of EMU, listening
# on GW and ADMIN, as the cache-hit benchmarks run it. The demo client has no quota; operators
# give every client one, so it gets a quota far above any offered load (every hit takes a
# permit, none is refused); the cache TTL outlives every run, so that hit runs see no expiry.
hit_config() {
  local config
  config=$(sed -e "s|http://127.0.0.1:8081|http://$1|" -e "s|127.0.0.1:8080|$2|" -e "s|127.0.0.1:9090|$3|" \
    -e 's|^key = "demo-key"$|&\nrate_limit = { per_second = 10000000, burst = 10000000 }|' config/demo.toml)
  grep -q 'per_second = 10000000' <<<"$config" || {
    echo "$(basename "$0"): no quota for the demo client in config/demo.toml" >&2
    exit 1
  }
  printf '%s\n\n[cache.offline_count]\nttl_ms = 600000\n' "$config"
}
