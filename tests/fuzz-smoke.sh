#!/usr/bin/env bash
# Fuzz smoke, part of tests/run.sh: builds the fuzz targets of fuzz/ with libFuzzer's coverage
# instrumentation and runs each for a few seconds, starting from its seed corpus (fuzz/seeds/<target>).
# Prints one line per target, `fuzz <target>: ok (...)` or `fuzz <target>: FAILED (...)`, and exits 1 if
# any failed; a crashing input is kept in fuzz/artifacts/<target>/ and named.
#
# Only the stable toolchain is needed: the RUSTFLAGS are those `cargo fuzz build --sanitizer none`
# passes (all stable), so neither cargo-fuzz nor RUSTC_BOOTSTRAP is. Long runs: docs/fuzzing.md.
#   DIODE_FUZZ_SECS   seconds per target (default 3)
#   DIODE_FUZZ_CHAT   1: also the slack and teams targets, which build the adapter's whole HTTP/TLS/SQLite
#                     stack instrumented (about 7 more CPU-minutes; docs/fuzzing.md). Default 0: the
#                     nine protocol targets.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${DIODE_FUZZ_SECS:-3}
triple=x86_64-unknown-linux-gnu
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cllvm-args=-simplifycfg-branch-fold-threshold=0"
# debug assertions and overflow checks on, as cargo fuzz builds; no debug info (it only costs link time)
export CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS=true CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true \
  CARGO_PROFILE_RELEASE_DEBUG=0
# a target folder of its own: the instrumented build must not replace the workspace's artifacts
export CARGO_TARGET_DIR=target/smoke
t0=$SECONDS
features=--no-default-features
if [ "${DIODE_FUZZ_CHAT:-0}" = 1 ]; then features=; fi
cargo build -q --release --locked --bins --target "$triple" $features
echo "fuzz build: $((SECONDS - t0)) s"
bin=target/smoke/$triple/release
# every [[bin]] of fuzz/Cargo.toml but `seeds`; those that need the chat feature only when it is built
targets=$(awk -v chat="${DIODE_FUZZ_CHAT:-0}" '
  /^\[\[bin\]\]/ { if (name != "") print name, req; name = ""; req = 0; inbin = 1; next }
  /^\[/ { if (name != "") print name, req; name = ""; inbin = 0; next }
  inbin && /^name = / { gsub(/"/, "", $3); name = $3 }
  inbin && /^required-features/ { req = 1 }
  END { if (name != "") print name, req }' Cargo.toml |
  awk -v chat="${DIODE_FUZZ_CHAT:-0}" '$1 != "seeds" && ($2 == 0 || chat == 1) { print $1 }')
failed=0
for t in $targets; do
  work=$(mktemp -d)
  mkdir -p "artifacts/$t"
  if "$bin/$t" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
      -artifact_prefix="artifacts/$t/" "$work" "seeds/$t" >"$work.log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work.log")
    cov=$(grep -oE 'cov: [0-9]+' "$work.log" | tail -1)
    echo "fuzz $t: ok ($runs runs in $secs s, $cov)"
  else
    failed=1
    echo "fuzz $t: FAILED ($(ls "artifacts/$t" | head -3 | tr '\n' ' '))"
    grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$work.log" | head -8
  fi
  rm -rf "$work" "$work.log"
done
exit $failed
