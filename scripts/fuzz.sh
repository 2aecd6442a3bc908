#!/usr/bin/env bash
# Fuzzes reference and definition parsing with cargo-fuzz (libFuzzer).
#   scripts/fuzz.sh [SECONDS]      default 60 s per target
# Needs cargo-fuzz (`cargo install cargo-fuzz`); on a stable toolchain the
# sanitizer flags are enabled with RUSTC_BOOTSTRAP=1. Crashes land in
# fuzz/artifacts/<target>/; turn each into a test before fixing it.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
for target in reference definition; do
  mkdir -p "target/corpus/$target"
  cp -n corpus/$target/* "target/corpus/$target/" 2>/dev/null || true
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "target/corpus/$target" -- -max_total_time="$seconds" -max_len=4096
done
