#!/usr/bin/env bash
# The frame AEAD compared (issue 18, point 4; not a test): ChaCha20-Poly1305 seal and open in place, one
# thread, as proto/src/frame.rs does it, in ring (what the suite ships), aws-lc-rs, RustCrypto and the
# system OpenSSL (through the `openssl` crate, and called directly through openssl-sys) (benches/aead/, a
# crate outside the workspace), at the payload sizes of our frames: 256, 1408 (MTU 1500) and 8896
# (MTU 9000). Then `openssl speed -evp chacha20-poly1305 -bytes N` at the same sizes, for reference. Each is run RUNS times (default 5); the table gives the median of the runs' medians and
# the runs' range, in MB/s (10^6 payload bytes per CPU-second) and CPU-nanoseconds per frame.
# Usage: benches/aead.sh [RUNS] [SECONDS_PER_MEASUREMENT]   (results also in benches/aead/target/aead-runs/)
set -euo pipefail
cd "$(dirname "$0")/aead"
RUNS=${1:-5}; SECS=${2:-3}
# aws-lc-sys compiles AWS-LC's C and assembly with the system C compiler (its own `cc` builder since
# aws-lc-sys 0.2x: no cmake, clang, Go or NASM on x86-64 Linux); openssl-sys links libssl via pkg-config
need=()
command -v cc >/dev/null || need+=(gcc)
command -v pkg-config >/dev/null || need+=(pkg-config)
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
command -v openssl >/dev/null || need+=(openssl)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "== installing ${need[*]}"
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
  else
    echo "== missing ${need[*]} (install them, or run as root)" >&2; exit 1
  fi
fi
cargo bench -q --bench aead --no-run
OUT=target/aead-runs/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
{
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, avx512: $(grep -o 'avx512[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  echo "$(openssl version); $(rustc --version)"
  grep -E '^name = "(ring|aws-lc-rs|aws-lc-sys|chacha20poly1305|openssl)"' -A1 Cargo.lock | grep -o '"[^"]*"' | tr -d '"' | paste -sd' ' | sed 's/^/crates: /'
} | tee "$OUT/machine.txt"
SIZES="256 1408 8896"
for r in $(seq 1 "$RUNS"); do
  # what else ran: the load average and the busiest other processes, before each run
  { echo "run $r $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
    ps -eo pcpu,args --sort=-pcpu | awk 'NR>1 && $1>5 {print "  " substr($0,1,110)}' | head -4; } | tee -a "$OUT/load.txt"
  rm -rf target/criterion
  cargo bench -q --bench aead -- --warm-up-time 1 --measurement-time "$SECS" --noplot >"$OUT/criterion-$r.txt" 2>&1
  for d in target/criterion/*/*/new; do
    g=${d#target/criterion/}; g=${g%/new}   # e.g. aws-lc-rs_1408/seal
    lib=${g%%_*}; rest=${g#*_}; size=${rest%%/*}; op=${rest#*/}
    python3 -c 'import json,sys; print(sys.argv[1], sys.argv[2], sys.argv[3], json.load(open(sys.argv[4]))["median"]["point_estimate"])' \
      "$lib" "$op" "$size" "$d/estimates.json" >>"$OUT/results.txt"
  done
  # the reference: `openssl speed`, timed in user CPU seconds as it does by default. Its loop only
  # continues one message in N-byte pieces (EVP_EncryptUpdate, no nonce, associated data or tag per
  # piece): the bulk rate of OpenSSL's AVX-512 code, not the cost of a frame, which is the openssl-evp line
  for s in $SIZES; do
    for op in seal open; do
      flag=; [ $op = open ] && flag=-decrypt
      bps=$(openssl speed -mr $flag -evp chacha20-poly1305 -bytes "$s" -seconds "$SECS" 2>/dev/null | sed -n 's/^+F:[0-9]*:[^:]*:\([0-9.]*\)$/\1/p')
      python3 -c 'import sys; print("openssl-speed", sys.argv[1], sys.argv[2], int(sys.argv[2]) / float(sys.argv[3]) * 1e9)' "$op" "$s" "$bps" >>"$OUT/results.txt"
    done
  done
done
echo "== ChaCha20-Poly1305, one thread, median of $RUNS runs (range of the runs); MB/s = 10^6 payload bytes per CPU-second"
python3 - "$OUT/results.txt" <<'PY' | tee "$OUT/table.txt"
import sys, statistics, collections
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    lib, op, size, ns = line.split()
    runs[(lib, op, int(size))].append(float(ns))
order = ["ring", "aws-lc-rs", "rustcrypto", "openssl-crate", "openssl-evp", "openssl-speed"]
print(f"{'library':<14} {'op':<5} {'bytes':>5} {'MB/s':>7} {'(range)':<15} {'ns/frame':>8}")
for size in sorted({k[2] for k in runs}):
    for lib in order:
        for op in ("seal", "open"):
            v = runs.get((lib, op, size))
            if not v:
                continue
            ns = statistics.median(v)
            lo, hi = size * 1e3 / max(v), size * 1e3 / min(v)
            print(f"{lib:<14} {op:<5} {size:>5} {size * 1e3 / ns:>7.0f} ({lo:.0f}-{hi:.0f}){'':<{max(0, 13 - len(f'{lo:.0f}-{hi:.0f}'))}} {ns:>8.0f}")
PY
echo "(runs and load: $PWD/$OUT)"
