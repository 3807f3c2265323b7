#!/usr/bin/env bash
# The long fuzz runs recorded in docs/fuzzing.md: each target in turn for SECS seconds (default 600) at
# nice 19, from its seeds plus the corpus kept from earlier runs (fuzz/corpus/<target>, not committed),
# with AddressSanitizer (stable toolchain + RUSTC_BOOTSTRAP=1, see docs/fuzzing.md). One line per target
# in fuzz/long-run.log: executions, seconds, edges covered of those instrumented, features, corpus,
# peak RSS, the 1-minute load when it started, and the exit status (a crash leaves its input in
# fuzz/artifacts/<target>/).
#   [LOAD_WAIT=SECS] fuzz/long-run.sh [SECS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
shift || true
targets=${*:-frame announce object_meta envelope state_files slack teams}
bin=target/x86_64-unknown-linux-gnu/release
RUSTC_BOOTSTRAP=1 CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} nice -n 10 cargo fuzz build -O
for t in $targets; do
  # wait up to LOAD_WAIT seconds (default 300) for the machine to be less than fully busy
  for _ in $(seq $((${LOAD_WAIT:-300} / 5))); do
    awk '{exit !($1 < 2.0)}' /proc/loadavg && break
    sleep 5
  done
  load=$(cut -d' ' -f1 /proc/loadavg)
  mkdir -p "corpus/$t" "artifacts/$t"
  log=target/long-$t.log
  rc=0
  nice -n 19 "$bin/$t" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/" "corpus/$t" "seeds/$t" >"$log" 2>&1 || rc=$?
  total=$(sed -n 's/.*Loaded 1 modules *(\([0-9]*\) inline 8-bit counters.*/\1/p' "$log" | head -1)
  last=$(grep -E '^#[0-9]+' "$log" | tail -1)
  printf '%s %s runs=%s secs=%s cov=%s/%s ft=%s corp=%s rss=%s load=%s rc=%s\n' \
    "$(date -u +%FT%TZ)" "$t" \
    "$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")" \
    "$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log")" \
    "$(grep -oE 'cov: [0-9]+' <<<"$last" | cut -d' ' -f2)" "$total" \
    "$(grep -oE 'ft: [0-9]+' <<<"$last" | cut -d' ' -f2)" \
    "$(grep -oE 'corp: [0-9]+/[0-9]+[a-zA-Z]*' <<<"$last" | cut -d' ' -f2)" \
    "$(sed -n 's/^stat::peak_rss_mb: *//p' "$log")MB" "$load" "$rc" | tee -a long-run.log
done
