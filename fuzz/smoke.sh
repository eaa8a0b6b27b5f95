#!/usr/bin/env bash
# Fuzz smoke test: builds every cargo-fuzz target once, then runs each for a short time, seeded
# from fuzz/seeds/<target>. Exits non-zero if any target crashes (a panic, a failed invariant,
# a sanitizer report, a timeout or an out-of-memory).
#
#   fuzz/smoke.sh                      # every target, 20 s each
#   FUZZ_SECONDS=300 fuzz/smoke.sh     # longer
#   fuzz/smoke.sh policy duration      # only these targets
#
# This toolchain is stable: cargo-fuzz's nightly flags are enabled with RUSTC_BOOTSTRAP=1.
# The fuzz crate builds jit-core (the pure parsers: a few small dependencies) with sanitizer
# flags, about a minute cold on 2 cores; set CARGO_TARGET_DIR outside the clone to keep it warm, e.g.
#   CARGO_TARGET_DIR=$HOME/.cache/jit-fuzz-target fuzz/smoke.sh
# Use a directory of its own, not the one of the normal build: the flags differ, so the two
# would keep rebuilding each other's dependencies.
#
# The corpus grows in fuzz/corpus/<target> (git-ignored; seeds are read from fuzz/seeds/ and
# never written to). Crashing inputs land in fuzz/artifacts/<target>/; replay one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/crash-…
set -euo pipefail
cd "$(dirname "$0")/.."

export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
FUZZ_SECONDS="${FUZZ_SECONDS:-20}"
# libFuzzer's per-input limits: an input taking longer than this (seconds) or more memory
# than this (MB) counts as a failure.
FUZZ_TIMEOUT="${FUZZ_TIMEOUT:-10}"
FUZZ_RSS_MB="${FUZZ_RSS_MB:-2048}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  cargo install cargo-fuzz --locked --version '0.13.*'
fi
cargo fuzz --version

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

echo "==> building ${#targets[@]} fuzz target(s) (CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-fuzz/target})"
start=$(date +%s)
cargo fuzz build
echo "built in $(($(date +%s) - start)) s"

failed=()
for target in "${targets[@]}"; do
  echo
  echo "==> fuzzing ${target} for ${FUZZ_SECONDS} s"
  mkdir -p "fuzz/corpus/${target}" "fuzz/seeds/${target}"
  # The first corpus directory is where new inputs are written; the seeds are read only.
  if cargo fuzz run "$target" "fuzz/corpus/${target}" "fuzz/seeds/${target}" -- \
    -max_total_time="$FUZZ_SECONDS" -timeout="$FUZZ_TIMEOUT" -rss_limit_mb="$FUZZ_RSS_MB" \
    -print_final_stats=1; then
    echo "==> ${target}: no crash"
  else
    echo "==> ${target}: FAILED (see fuzz/artifacts/${target}/)"
    failed+=("$target")
  fi
done

echo
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz smoke FAILED: ${failed[*]}"
  exit 1
fi
echo "fuzz smoke passed: ${targets[*]} (${FUZZ_SECONDS} s each)"
