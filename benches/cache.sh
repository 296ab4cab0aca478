#!/usr/bin/env bash
# Cache-hit benchmark: the same cached read served by imgate, by nginx `proxy_cache`, by HAProxy's
# `cache` and by a bare hyper server answering a fixed body (the ceiling), side by side in one
# run, with one load generator (wrk) and one connection count. docs/architecture.md,
# "Performance targets": imgate's hit path should reach >= 1.5x nginx and >= 1x HAProxy in
# requests/s with a p99 no worse than either, and >= 85% of the ceiling.
#
#   bash benches/cache.sh                 # 10 s per run, about 2 minutes in all
#   DURATION=5 bash benches/cache.sh      # shorter (all rounds together well under the caches' 600 s)
#   CONNS=128 bash benches/cache.sh       # connections per run (default 64), same for every server
#   ROUNDS=3 bash benches/cache.sh        # every server 3 times, in alternating order; the
#                                         # ratios use each server's median (a noisy machine),
#                                         # and each round's own ratios follow them
#   IMGATE_BIN=target/pgo/imgate bash benches/cache.sh  # that imgate binary (the profile-guided
#                                         # build of deploy/pgo.sh) instead of the release build
#
# Installs wrk, nginx and haproxy from the distribution's packages when missing; runs nginx and
# HAProxy as foreground processes of this script with their configuration, cache and pid files
# in a temporary directory (no system service; started by root, nginx keeps its workers as root
# so that they can write that directory). Everything listens on loopback.
#
# The read: GET /app-id/<demo app>/users/{user}/offline_msg_count, in two scenarios:
#   (a) one hot key;
#   (b) 1,000 warm keys: wrk's Lua script picks one of 1,000 users per request; every server's
#       cache is warmed right before its run by requesting each key once (curl, keep-alive).
# The vendor is imgate's emulator with quotas off (benches/emulator.toml). The `vendor calls`
# column is the number of offline_msg_count requests the emulator received during the run: near
# 0 means the run measured the cache-hit path; about as many as requests means every request went
# to the vendor (the miss path). The `other CPU` column is the share of all cores that processes
# outside this script (a build, another test suite) used during the run; above 10% the script
# warns that the row is skewed.
#
# Equivalence: every server gets the same request (with `Authorization: Bearer demo-key`).
# imgate authenticates the caller before its cache lookup, so nginx and HAProxy check that same
# static key too (a cheap header comparison) before serving from their cache, replace it with the
# vendor app token towards the vendor, and keep a keep-alive pool to it. The ceiling checks
# nothing. nginx and HAProxy cache by host + URI, imgate by (app, user): one entry per key each.
#
# Cores: nothing is pinned. With 2 cores, pinning wrk to one core and the server to the other
# would leave each server a single core and measure a different machine; instead every server
# runs one worker per core (imgate and the ceiling: tokio's default; nginx: worker_processes;
# HAProxy: nbthread) and shares the cores with wrk (one thread per core) in the same way.
# Compare rows of one run, not runs on different machines.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-1}
CORES=$(nproc)
THREADS=$((CORES < CONNS ? CORES : CONNS))
KEYS=1000
EMU=127.0.0.1:28181
GW=127.0.0.1:28180
ADMIN=127.0.0.1:29190
GW_LOG=127.0.0.1:28185
ADMIN_LOG=127.0.0.1:29191
NGINX=127.0.0.1:28182
HAPROXY=127.0.0.1:28183
CEILING=127.0.0.1:28184
CLIENT_KEY=demo-key
AGORA_ID=a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6
AGORA_CERT=0f1e2d3c4b5a69788796a5b4c3d2e1f0
PREFIX="/app-id/$AGORA_ID/users"
HOT_PATH="$PREFIX/bench-user/offline_msg_count"

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || missing+=(nginx)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
if ((${#missing[@]})); then
  echo "installing ${missing[*]}…" >&2
  apt-get update -qq >/dev/null && apt-get install -y -qq "${missing[@]}" >/dev/null
fi
for addr in "$EMU" "$GW" "$ADMIN" "$GW_LOG" "$ADMIN_LOG" "$NGINX" "$HAPROXY" "$CEILING"; do
  if (exec 3<>"/dev/tcp/${addr%:*}/${addr#*:}") 2>/dev/null; then
    echo "cache.sh: $addr is already in use" >&2
    exit 1
  fi
done

# shellcheck source=benches/common.sh
. benches/common.sh

BIN=$(imgate_bin)
CEILING_BIN=$(ceiling_bin)

start_emulator "$BIN" "$EMU"
TOKEN=$("$BIN" token agora --app-id "$AGORA_ID" --app-certificate "$AGORA_CERT" --expire 3600)

# --- imgate: the demo configuration, pointed at the quota-free emulator, the client with a
# quota, and a TTL that outlives every run (nginx's and HAProxy's entries do not expire either).
hit_config "$EMU" "$GW" "$ADMIN" > "$work/gateway.toml"
RUST_LOG=warn "$BIN" serve --config "$work/gateway.toml" & pids+=($!)
wait_ok "http://$ADMIN/healthz"

# --- imgate as operators run it: the same configuration with a JSON access log line per request,
# written to a file (the `imgate+log` row).
sed -e "s|$GW|$GW_LOG|" -e "s|$ADMIN|$ADMIN_LOG|" "$work/gateway.toml" > "$work/gateway-log.toml"
RUST_LOG=info "$BIN" --log-format json serve --config "$work/gateway-log.toml" > "$work/access.log" & pids+=($!)
wait_ok "http://$ADMIN_LOG/healthz"

# --- nginx: proxy_cache in front of the emulator, unprivileged-style: its own prefix, no daemon.
ngx="$work/nginx"
mkdir -p "$ngx/cache" "$ngx/tmp"
# As root, nginx would switch its workers to `nobody`, who cannot write this temporary directory.
user_line=""
[ "$(id -u)" = 0 ] && user_line="user root;"
cat > "$ngx/nginx.conf" <<EOF
$user_line
worker_processes $CORES;
pid $ngx/nginx.pid;
error_log $ngx/error.log warn;
daemon off;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $ngx/tmp/body;
  proxy_temp_path $ngx/tmp/proxy;
  fastcgi_temp_path $ngx/tmp/fastcgi;
  uwsgi_temp_path $ngx/tmp/uwsgi;
  scgi_temp_path $ngx/tmp/scgi;
  # nginx closes a client connection after 1,000 requests by default: wrk would reconnect
  # every 1,000 requests where the other servers keep the connection.
  keepalive_requests 1000000;
  keepalive_timeout 65s;
  # A hit opens the entry's file; keeping the descriptors open is worth about +40% req/s here.
  open_file_cache max=10000 inactive=60s;
  proxy_cache_path $ngx/cache levels=1:2 keys_zone=vendor:10m max_size=256m inactive=10m use_temp_path=off;
  upstream vendor {
    server $EMU;
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen $NGINX reuseport;
    location / {
      if (\$http_authorization != "Bearer $CLIENT_KEY") { return 401; }
      proxy_pass http://vendor;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer $TOKEN";
      proxy_cache vendor;
      proxy_cache_lock on;
      proxy_cache_valid 200 600s;
      # The vendor's own caching headers (none from the emulator today) must not veto storing.
      proxy_ignore_headers Cache-Control Expires Set-Cookie Vary X-Accel-Expires;
      add_header X-Cache \$upstream_cache_status;
    }
  }
}
EOF
nginx -p "$ngx" -c "$ngx/nginx.conf" -e "$ngx/error.log" & pids+=($!)
wait_ok "http://$NGINX$HOT_PATH" -H "Authorization: Bearer $CLIENT_KEY"

# --- HAProxy: its cache in front of the emulator, in the foreground (-db).
# Two pitfalls: HAProxy neither uses nor fills its cache for a request that carries an
# Authorization header (checked by cache-use), so the caller's header is checked and removed
# before cache-use and the vendor token set after it; and it stores only responses with an
# explicit lifetime or a validator, which the vendor does not send, hence the Cache-Control.
cat > "$work/haproxy.cfg" <<EOF
global
  nbthread $CORES
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  timeout http-keep-alive 30s
cache vendor
  total-max-size 64
  max-age 600
listen gateway
  bind $HAPROXY
  http-request deny deny_status 401 unless { req.hdr(authorization) -m str "Bearer $CLIENT_KEY" }
  http-request del-header Authorization
  http-request cache-use vendor
  http-request set-header Authorization "Bearer $TOKEN"
  http-response set-header Cache-Control "max-age=600"
  http-response cache-store vendor
  server emulator $EMU
EOF
haproxy -db -f "$work/haproxy.cfg" & pids+=($!)
wait_ok "http://$HAPROXY$HOT_PATH" -H "Authorization: Bearer $CLIENT_KEY"

# --- The ceiling.
"$CEILING_BIN" "$CEILING" & pids+=($!)
wait_ok "http://$CEILING$HOT_PATH"

# Scenario (b): 1,000 requests prebuilt in init(), one picked at random per request.
cat > "$work/keys.lua" <<EOF
local n = $KEYS
local reqs = {}
function init(args)
  for i = 1, n do
    reqs[i] = wrk.format("GET", "$PREFIX/bench-user-" .. i .. "/offline_msg_count")
  end
end
function request()
  return reqs[math.random(n)]
end
EOF
for i in $(seq "$KEYS"); do
  printf 'url = "%s/bench-user-%d/offline_msg_count"\noutput = "/dev/null"\n' "$PREFIX" "$i"
done > "$work/keys.curl"

vendor_calls() {
  curl -s --max-time 2 "http://$EMU/__emulator/stats" | sed -n 's/.*"offline_msg_count":\([0-9]*\).*/\1/p'
}

# warm SCENARIO ADDR: request each key of the scenario once, all answers must be 200.
warm() {
  local scenario=$1 addr=$2 codes
  if [ "$scenario" = hot ]; then
    codes=$(curl -s -o /dev/null -w '%{http_code}\n' --max-time 5 -H "Authorization: Bearer $CLIENT_KEY" "http://$addr$HOT_PATH")
  else
    # One curl, one keep-alive connection, the relative URLs resolved against the server.
    codes=$(sed "s|url = \"|url = \"http://$addr|" "$work/keys.curl" |
      curl -s -K - -w '%{http_code}\n' --max-time 60 -H "Authorization: Bearer $CLIENT_KEY")
  fi
  if grep -qv '^200$' <<<"$codes"; then
    echo "cache.sh: warming $addr: not every answer was 200" >&2
    exit 1
  fi
}

# to_us 1.23ms → 1230 (wrk prints us, ms or s).
to_us() {
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000; else if (v ~ /s$/) print n * 1000000; else print n
  }'
}

# The machine is shared: other processes' CPU time during a run skews its row. other_ticks
# prints "pid ticks" (user + system, own and reaped children's) for every process outside this
# script's process group; other_cpu BEFORE AFTER turns two of them into the share of all cores
# those processes used during the run. Summing all of them before and after (not per process)
# keeps a child that ends during the run right: its ticks move into its parent's.
PGID=$(($(ps -o pgid= $$)))
TICKS=$(getconf CLK_TCK)
other_ticks() {
  local f line
  for f in /proc/[0-9]*/stat; do
    { read -r line < "$f"; } 2>/dev/null || continue
    # shellcheck disable=SC2086 # split the fields after the command name on purpose
    set -- ${line##*) }
    [ "$3" = "$PGID" ] || echo "${f//[^0-9]/} $((${12} + ${13} + ${14} + ${15}))"
  done
}
other_cpu() {
  awk -v ticks="$TICKS" -v secs="$DURATION" -v cores="$CORES" '
    NR == FNR { sum -= $2; next }
    { sum += $2 }
    END { printf "%d%%", (sum > 0 ? 100 * sum / ticks / secs / cores : 0) }' "$1" "$2"
}

# RPS and P99 hold the median over the rounds so far (the row of a single round is its own).
declare -A RPS P99 RPS_ALL P99_ALL CALLS OTHER

# median "A B C…" → the middle value (the mean of the two middle ones for an even count).
median() {
  tr ' ' '\n' <<<"$1" | awk 'NF' | sort -g | awk '{ v[NR] = $1 } END {
    if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
# run SCENARIO NAME ADDR: warm, then wrk for DURATION; prints one row.
run() {
  local scenario=$1 name=$2 addr=$3 out before after script=()
  [ "$scenario" = keys ] && script=(-s "$work/keys.lua")
  warm "$scenario" "$addr"
  before=$(vendor_calls)
  other_ticks > "$work/ticks.before"
  out=$(timeout $((DURATION + 30)) wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency "${script[@]}" \
    -H "Authorization: Bearer $CLIENT_KEY" "http://$addr$HOT_PATH")
  other_ticks > "$work/ticks.after"
  after=$(vendor_calls)
  OTHER[$scenario.$name]=$(other_cpu "$work/ticks.before" "$work/ticks.after")
  local rps p50 p99 bad errors
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  bad=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  errors=$(awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}' <<<"$out")
  RPS_ALL[$scenario.$name]+=" $rps"
  P99_ALL[$scenario.$name]+=" $(to_us "$p99")"
  RPS[$scenario.$name]=$(median "${RPS_ALL[$scenario.$name]}")
  P99[$scenario.$name]=$(median "${P99_ALL[$scenario.$name]}")
  if [ "$name" = ceiling ]; then CALLS[$scenario.$name]=-; else CALLS[$scenario.$name]=$((after - before)); fi
  printf '%-10s %12s %10s %10s %8s %8s %13s %10s\n' "$name" "$rps" "$p50" "$p99" "${bad:-0}" "${errors:-0}" \
    "${CALLS[$scenario.$name]}" "${OTHER[$scenario.$name]}"
}

# An awk function for judged and per_round: whether ratio r meets TARGET, >= (ge) or <= (le).
MEETS='function meets(r, cmp, target) { return (cmp == "ge" && r >= target) || (cmp == "le" && r <= target) }'

# judged A B ge|le TARGET → A/B with two decimals and whether it meets TARGET, judged before
# rounding: 0.997 prints as 1.00 but misses a target of 1.0.
judged() {
  awk -v a="$1" -v b="$2" -v cmp="$3" -v target="$4" "$MEETS"'
  BEGIN {
    if (b <= 0) { print "n/a"; exit }
    r = a / b
    met = meets(r, cmp, target)
    printf "%.2fx (target %s %s: %s)", r, cmp == "ge" ? ">=" : "<=", target, met ? "met" : "missed" }'
}

# per_round "A1 A2…" "B1 B2…" ge|le TARGET → each round's Ai/Bi and in how many rounds it is
# >= (ge) or <= (le) TARGET. The servers of one round ran minutes apart at most, so a round's
# ratio is less exposed to the machine's drift than a ratio of medians taken over all rounds.
per_round() {
  awk -v a="$1" -v b="$2" -v cmp="$3" -v target="$4" "$MEETS"'
  BEGIN {
    n = split(a, x, " "); split(b, y, " "); met = 0
    for (i = 1; i <= n; i++) {
      r = y[i] > 0 ? x[i] / y[i] : 0
      printf "%.2f ", r
      if (meets(r, cmp, target)) met++
    }
    printf "(met in %d of %d)", met, n }'
}

summary() {
  local s=$1 name calls note=()
  printf 'req/s  imgate/nginx %s   imgate/haproxy %s   imgate/ceiling %s\n' \
    "$(judged "${RPS[$s.imgate]}" "${RPS[$s.nginx]}" ge 1.5)" "$(judged "${RPS[$s.imgate]}" "${RPS[$s.haproxy]}" ge 1.0)" \
    "$(judged "${RPS[$s.imgate]}" "${RPS[$s.ceiling]}" ge 0.85)"
  printf 'p99    imgate/nginx %s   imgate/haproxy %s\n' \
    "$(judged "${P99[$s.imgate]}" "${P99[$s.nginx]}" le 1.0)" "$(judged "${P99[$s.imgate]}" "${P99[$s.haproxy]}" le 1.0)"
  printf 'logs   imgate+log/imgate %s\n' "$(judged "${RPS[$s.imgate+log]}" "${RPS[$s.imgate]}" ge 0.90)"
  if ((ROUNDS > 1)); then
    echo "round by round:"
    printf '  %-24s %s\n' "req/s imgate/haproxy" "$(per_round "${RPS_ALL[$s.imgate]}" "${RPS_ALL[$s.haproxy]}" ge 1.0)"
    printf '  %-24s %s\n' "req/s imgate/ceiling" "$(per_round "${RPS_ALL[$s.imgate]}" "${RPS_ALL[$s.ceiling]}" ge 0.85)"
    printf '  %-24s %s\n' "p99 imgate/haproxy" "$(per_round "${P99_ALL[$s.imgate]}" "${P99_ALL[$s.haproxy]}" le 1.0)"
    printf '  %-24s %s\n' "logs imgate+log/imgate" "$(per_round "${RPS_ALL[$s.imgate+log]}" "${RPS_ALL[$s.imgate]}" ge 0.9)"
  fi
  # A hit run sends the vendor at most a handful of calls (expiry, a coalescing race); far more
  # than the number of keys means the server forwarded the reads.
  for name in imgate imgate+log nginx haproxy; do
    calls=${CALLS[$s.$name]}
    if ((calls > KEYS)); then
      if [ "${name%+log}" = imgate ]; then
        note+=("imgate made $calls vendor calls: its row is the MISS path (no response cache yet, or [cache.offline_count] is off)")
      else
        note+=("WARNING: $name made $calls vendor calls: it did not serve from its cache")
      fi
    fi
  done
  for name in imgate imgate+log nginx haproxy ceiling; do
    if ((${OTHER[$s.$name]%\%} > 10)); then
      note+=("WARNING: other processes used ${OTHER[$s.$name]} of the CPU during the $name run: its row is skewed")
    fi
  done
  for n in "${note[@]}"; do echo "$n"; done
}

echo
echo "cache-hit path, $CONNS connections, wrk -t$THREADS, ${DURATION} s per run, $CORES cores, nothing pinned"
echo "imgate: $BIN"
for scenario in hot keys; do
  echo
  if [ "$scenario" = hot ]; then echo "(a) one hot key"; else echo "(b) $KEYS warm keys, one picked at random per request"; fi
  printf '%-10s %12s %10s %10s %8s %8s %13s %10s\n' server "req/s" p50 p99 non-2xx errors "vendor calls" "other CPU"
  order=("imgate $GW" "imgate+log $GW_LOG" "nginx $NGINX" "haproxy $HAPROXY" "ceiling $CEILING")
  for round in $(seq "$ROUNDS"); do
    ((ROUNDS > 1)) && echo "round $round"
    for entry in "${order[@]}"; do
      # shellcheck disable=SC2086 # "name addr"
      run "$scenario" $entry
    done
    # Every round in the opposite order: drift of the machine during a round evens out.
    for ((i = 0, j = ${#order[@]} - 1; i < j; i++, j--)); do
      entry=${order[i]}
      order[i]=${order[j]}
      order[j]=$entry
    done
  done
  if ((ROUNDS > 1)); then
    echo "median of $ROUNDS rounds"
    for name in imgate imgate+log nginx haproxy ceiling; do
      printf '%-10s %12s %10s %10sus\n' "$name" "${RPS[$scenario.$name]}" "" "${P99[$scenario.$name]}"
    done
  fi
  summary "$scenario"
done
echo
echo "access log of the imgate+log runs: $(wc -l < "$work/access.log") lines, $(du -h "$work/access.log" | cut -f1)"
