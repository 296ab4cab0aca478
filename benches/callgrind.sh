#!/usr/bin/env bash
# Instructions per cache hit, counted by valgrind's callgrind: repeatable to a few instructions
# for the same binary and request, however busy the machine is (wall-clock runs on a shared VM
# vary by 15 % and more). What one change to the hit path saves shows here when wrk cannot
# tell it from noise.
#
#   bash benches/callgrind.sh            # imgate as benches/cache.sh runs it (quota on, no log)
#   LOG=1 bash benches/callgrind.sh      # with the JSON access log written to a file
#   KEEP=/tmp/cg bash benches/callgrind.sh  # also keeps both profiles there, to compare
#                                         # functions (callgrind_annotate --inclusive=yes)
#   CEILING=1 bash benches/callgrind.sh  # the same for the ceiling (benches/ceiling.rs)
#   IMGATE_BIN=target/pgo/imgate bash benches/callgrind.sh  # that binary (deploy/pgo.sh), no build
#
# imgate runs under callgrind twice, answering 500 and then 2,500 cached reads of one hot key
# on one keep-alive connection (curl); the difference divided by 2,000 is the cost of one hit,
# without start-up and shutdown. The figure is the connection task (imgate's connection future,
# inclusive: parsing, the request path, writing the answer); with LOG=1 also the log writer
# thread's share; with CEILING=1 the bare hyper server's whole process, which answers the same
# request with a fixed body. (imgate's whole process is not a useful figure: its start-up
# calibrates a clock for a varying number of rounds.)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
command -v valgrind >/dev/null 2>&1 || {
  echo "installing valgrind…" >&2
  apt-get update -qq >/dev/null && apt-get install -y -qq valgrind >/dev/null
}
command -v callgrind_annotate >/dev/null 2>&1 || { echo "callgrind.sh: callgrind_annotate missing" >&2; exit 1; }
EMU=127.0.0.1:28281
GW=127.0.0.1:28280
ADMIN=127.0.0.1:29290
AGORA_ID=a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6
URL="http://$GW/app-id/$AGORA_ID/users/bench-user/offline_msg_count"

# shellcheck source=benches/common.sh
. benches/common.sh

BIN=$(imgate_bin)
if [ -n "${CEILING:-}" ]; then
  CEILING_BIN=$(ceiling_bin)
fi

start_emulator "$BIN" "$EMU"
# The configuration of benches/cache.sh.
hit_config "$EMU" "$GW" "$ADMIN" > "$work/gateway.toml"

# run N: the server under callgrind answering N hits; the profile goes to $work/callgrind.N.
run() {
  local n=$1 out="$work/callgrind.$1" log_args=() level=warn ready="http://$ADMIN/healthz" stop=INT
  if [ -n "${LOG:-}" ]; then log_args=(--log-format json); level=info; fi
  if [ -n "${CEILING:-}" ]; then
    # It has no signal handling of its own: SIGTERM ends it, and callgrind still writes.
    valgrind --tool=callgrind --callgrind-out-file="$out" "$CEILING_BIN" "$GW" > "$work/imgate.log" 2>&1 &
    ready=$URL stop=TERM
  else
    RUST_LOG=$level valgrind --tool=callgrind --callgrind-out-file="$out" \
      "$BIN" "${log_args[@]}" serve --config "$work/gateway.toml" > "$work/imgate.log" 2>&1 &
  fi
  local pid=$!
  # Under callgrind start-up takes seconds.
  for _ in $(seq 300); do
    curl -s -o /dev/null --max-time 1 "$ready" && break
    sleep 0.2
  done
  curl -s -o /dev/null -H 'Authorization: Bearer demo-key' "$URL"
  : > "$work/urls"
  for _ in $(seq "$n"); do printf 'url = "%s"\noutput = "/dev/null"\n' "$URL" >> "$work/urls"; done
  curl -s -H 'Authorization: Bearer demo-key' -K "$work/urls"
  kill -"$stop" "$pid"
  wait "$pid" || true
}

# cost FILE PATTERN: the inclusive instructions of the first function matching PATTERN.
cost() {
  callgrind_annotate --inclusive=yes --threshold=100 "$1" 2>/dev/null |
    grep -m1 -E "$2" | awk '{gsub(",", "", $1); print $1}'
}

run 500
run 2500
if [ -n "${KEEP:-}" ]; then
  mkdir -p "$KEEP"
  cp "$work"/callgrind.500 "$work"/callgrind.2500 "$KEEP"/
fi
per_hit() {
  local many few
  many=$(cost "$work/callgrind.2500" "$1")
  few=$(cost "$work/callgrind.500" "$1")
  if [ -n "$many" ] && [ -n "$few" ]; then echo $(((many - few) / 2000)); else echo "n/a"; fi
}
if [ -n "${CEILING:-}" ]; then
  # The whole process: the connection task's inclusive figure is not reliable on its
  # work-stealing runtime, and its start-up does the same work every time.
  total() { sed -n 's/^totals: //p' "$1"; }
  echo "instructions per request of the ceiling:"
  echo "  whole process      $((($(total "$work/callgrind.2500") - $(total "$work/callgrind.500")) / 2000))"
  exit 0
fi
echo "instructions per cache hit${LOG:+ (JSON access log on)}:"
# The task `server::serve` spawns per connection: `Conn::run` and the permit it holds (a
# profile-guided build inlines `Conn::run` into it).
echo "  connection task    $(per_hit 'imgate::server::serve::\{\{closure\}\}::\{\{closure\}\}::\{\{closure\}\} \[')"
if [ -n "${LOG:-}" ]; then
  # The writer thread's whole loop.
  echo "  log writer thread  $(per_hit 'imgate::logging::Queue::write_until_stopped \[')"
fi
