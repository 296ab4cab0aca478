# Shared by the benchmark scripts (sourced, not run): a temporary work directory, the processes
# started into `pids` (stopped, and the directory removed, when the script exits), and wait_ok.

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

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
