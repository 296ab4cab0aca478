#!/usr/bin/env bash
# Runs imgate's fuzz targets with cargo-fuzz (libFuzzer), each for N minutes, one after another
# (or the ones named), at the lowest CPU priority.
#
#   bash fuzz/run.sh                 # every target, 10 minutes each
#   bash fuzz/run.sh 2 route token   # these two, 2 minutes each
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). On a stable toolchain it sets RUSTC_BOOTSTRAP=1
# for the nightly flags cargo-fuzz passes, and fuzzes without a sanitizer (SANITIZER=address to
# use one; that needs a nightly toolchain). Each target starts from its seeds (fuzz/seeds/<t>,
# checked in) and grows its own corpus in fuzz/corpus/<t> (not checked in); a crash is written
# to fuzz/artifacts/<t>/: copy it into the seeds once fixed, so tests/fuzz_corpus.rs replays it.
set -euo pipefail
cd "$(dirname "$0")"
MINUTES=${1:-10}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(route bodies token config)
export RUSTC_BOOTSTRAP=1
SANITIZER=${SANITIZER:-none}
# cargo fuzz has no --locked: fetching with it first fails if Cargo.lock is out of date (a
# dependency the root crate gained and this lock lacks) instead of resolving anew.
cargo fetch --locked
nice -n 19 cargo fuzz build --sanitizer "$SANITIZER"
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t"
  echo "== $t: $MINUTES min"
  nice -n 19 cargo fuzz run --sanitizer "$SANITIZER" "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time=$((MINUTES * 60)) -max_len=4096 -print_final_stats=1
done
