#!/usr/bin/env bash
# Regenerates link/startup-symbols.txt: the functions the release `jit serve` runs from process
# start to idle (start-up, the first /readyz, three seconds of idling), recorded with
# valgrind's callgrind while `jit bench footprint` starts it. build.rs hands the list to the
# linker (lld's --symbol-ordering-file), which lays these functions out together at the start
# of .text, so the pages an idle jit maps are mostly code it runs. Symbols that no longer exist
# are skipped by the linker; regenerate after a dependency upgrade or a large change, and
# compare `jit bench footprint` before and after (README, Performance).
#
# Needs valgrind and python3. Takes about a minute after the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --release
binary="$(realpath "$target/release/jit")"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
# Under callgrind the figures of this run mean nothing; only the recorded functions are used.
JIT_BENCH_SERVE_WRAPPER="valgrind --tool=callgrind --demangle=no --compress-strings=no --dump-instr=no --callgrind-out-file=$out/cg.%p" \
  "$binary" bench footprint --starts 2 --idle 3 >/dev/null
python3 - "$binary" "$out"/cg.* > link/startup-symbols.txt <<'PY'
import sys

binary, files = sys.argv[1], sys.argv[2:]
seen = set()
for path in files:
    obj = None
    for line in open(path, errors="replace"):
        if line.startswith("ob="):
            obj = line[3:].strip()
        elif line.startswith("fn=") and obj == binary:
            name = line[3:].strip()
            if not name.startswith("0x") and " " not in name:
                seen.add(name)
# Sorted: the layout only needs them together, and a regenerated list then diffs by what changed.
for name in sorted(seen):
    print(name)
PY
echo "link/startup-symbols.txt: $(wc -l < link/startup-symbols.txt) functions"
