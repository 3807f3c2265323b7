#!/usr/bin/env bash
# Builds the three Debian packages, diode-recv, diode-send and diode-chat, into target/debian/, for an
# offline install (`dpkg -i`, then `systemctl start` once keys are in place: docs in each package's
# /etc/diode/*.toml). What each package holds is in its Cargo.toml, [package.metadata.deb].
#
# The binaries are the release profile, built for x86-64-v3 as every release is (.cargo/config.toml; for an
# older CPU: RUSTFLAGS="-C target-cpu=x86-64" packaging/build-debs.sh). Bash completions come from each
# binary's own `completions bash` subcommand when it has one, else from its --help
# (packaging/completions/from-help.sh); the man page from its `manpage` subcommand (clap_mangen) when it
# has one, else the hand-written one in packaging/man/.
#
# Needs cargo-deb (installed here with `cargo install --locked cargo-deb` if missing) and dpkg-deb.
set -euo pipefail
cd "$(dirname "$0")/.."
bins=(diode-recv diode-send diode-chat)
if ! command -v cargo-deb >/dev/null; then
  echo "== installing cargo-deb"
  cargo install --locked cargo-deb
fi
echo "== building release binaries"
cargo build --release --locked $(printf -- '-p %s ' "${bins[@]}")
mkdir -p target/completions target/man
for b in "${bins[@]}"; do
  if ! target/release/$b completions bash >target/completions/$b.bash 2>/dev/null; then
    packaging/completions/from-help.sh target/release/$b >target/completions/$b.bash
  fi
  bash -n target/completions/$b.bash
  if ! target/release/$b manpage >target/man/$b.1 2>/dev/null; then
    cp packaging/man/$b.1 target/man/$b.1
  fi
done
for b in "${bins[@]}"; do
  echo "== packaging $b"
  cargo deb --no-build -p "$b"
done
ls -l target/debian/*.deb
