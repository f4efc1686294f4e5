#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser that takes outside bytes (crates/cairn-fuzz, harnesses
# in fuzz/), SECONDS per target (default 60). Installs the pinned cargo-fuzz into the cache dir;
# runs on the stable toolchain with RUSTC_BOOTSTRAP=1 (libFuzzer and ASan need nightly flags).
# New interesting inputs go to a working corpus in the cache (the committed seeds stay small);
# crashes are written to fuzz/artifacts/<target>/ and listed. Prints executions and crashes per
# target; exits 1 when any target crashed.
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
export CAIRN_CACHE_DIR="${CAIRN_CACHE_DIR:-$HOME/.cache/cairn}"
tools="$CAIRN_CACHE_DIR/cargo-fuzz-0.13.2"
if [ ! -x "$tools/bin/cargo-fuzz" ]; then
  echo "fuzz: installing cargo-fuzz 0.13.2 into $tools" >&2
  cargo install cargo-fuzz --version 0.13.2 --locked --root "$tools" >&2
fi
export PATH="$tools/bin:$PATH" RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="$CAIRN_CACHE_DIR/fuzz-target"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^cairn-fuzz-harness$')
fi
cargo fuzz build --release >&2
status=0
printf '%-16s %14s %10s %8s %s\n' target executions exec/s crashes corpus
for t in "${targets[@]}"; do
  work="$CAIRN_CACHE_DIR/fuzz-corpus/$t"
  mkdir -p "$work" "fuzz/artifacts/$t"
  log="$(mktemp)"
  set +e
  cargo fuzz run --release "$t" "$work" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -print_final_stats=1 -rss_limit_mb=2048 -timeout=10 >"$log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  crashes=$(find "fuzz/artifacts/$t" -type f | wc -l)
  printf '%-16s %14s %10s %8s %s\n' "$t" "${execs:-?}" "${rate:-?}" "$crashes" "$(find "$work" -type f | wc -l) inputs"
  if [ "$rc" -ne 0 ] || [ "$crashes" -gt 0 ]; then
    status=1
    grep -E "panicked|ERROR: |SUMMARY" "$log" | head -5 >&2 || true
    find "fuzz/artifacts/$t" -type f >&2
  fi
  rm -f "$log"
done
exit $status
