#!/usr/bin/env bash
# Offline install test of the three packages: a clean Debian 12 (bookworm) root made by debootstrap
# (minbase + systemd), `dpkg -i` of target/debian/*.deb, keys and a loopback setup as an admin would make
# them, then the root booted with systemd-nspawn and each service checked active under its hardened unit,
# and a file sent through the outbox seen arriving in the inbox. Needs root, debootstrap,
# systemd-container and Debian's package mirror (the only network it uses). Run after
# packaging/build-debs.sh.
#   packaging/test-install.sh [ROOTFS_CACHE]     (default target/pkgtest/root, made once and reused)
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${1:-target/pkgtest/root}
if [ ! -x "$cache/usr/bin/systemctl" ]; then
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,init-system-helpers,procps \
    bookworm "$cache" http://deb.debian.org/debian
fi
root=target/pkgtest/run
rm -rf "$root"
cp -a "$cache" "$root"
cp target/debian/*.deb "$root/tmp/"
echo "== dpkg -i"
chroot "$root" sh -c 'dpkg -i /tmp/*.deb' 2>&1 | sed 's/^/   /'
chroot "$root" dpkg -s diode-recv diode-send diode-chat | grep -E '^(Package|Status):' | sed 's/^/   /'

echo "== provisioning: keys, loopback addresses, a minimal approval policy"
chroot "$root" sh -e -c '
  diode-recv keygen --dir /etc/diode/keys >/dev/null
  diode-send keygen --dir /etc/diode/keys >/dev/null
  diode-chat keygen --dir /etc/diode/keys >/dev/null
  chown diode-recv: /etc/diode/keys/receiver.key
  chown diode-send: /etc/diode/keys/sender.key
  chown diode-chat: /etc/diode/keys/adapter.key
  sed -i "s/^listen = .*/listen = \"127.0.0.1:47000\"/" /etc/diode/recv.toml
  sed -i "s/^target = .*/target = \"127.0.0.1:47000\"/; s/^rate = .*/rate = \"10Mbit\"/" /etc/diode/send.toml
  cat >>/etc/diode/adapter.toml <<EOT
[people.ada]
name = "Ada Lovelace"
slack = "U0ADA"
roles = ["release-manager"]
[environments.prod]
channel = "C0PROD"
approvers = ["release-manager"]
approvals = 1
rejecters = ["release-manager"]
deadline = "1h"
remind_every = "20m"
validity = "1h"
EOT
'
echo "== booting the root with systemd-nspawn"
machine=diode-pkgtest-$$
log=target/pkgtest/boot.log
# without systemd as the host's init: no machine registration, no scope unit, and a tmpfs where nspawn
# keeps its propagation mounts (it refuses to clean them off a disk file system)
mkdir -p /run/systemd/nspawn
mounted=0
if ! mountpoint -q /run/systemd/nspawn; then mount -t tmpfs tmpfs /run/systemd/nspawn; mounted=1; fi
systemd-nspawn --quiet --keep-unit --register=no --machine="$machine" -D "$root" --boot >"$log" 2>&1 &
nspawn=$!
trap 'kill $nspawn 2>/dev/null || true; wait $nspawn 2>/dev/null || true
      if [ $mounted = 1 ]; then umount /run/systemd/nspawn || true; fi' EXIT
leader=""
for _ in $(seq 60); do
  leader=$(pgrep -P "$nspawn" -x systemd || true)
  [ -n "$leader" ] && break
  sleep 1
done
[ -n "$leader" ] || { echo "the container did not boot"; cat "$log"; exit 1; }
inside() { nsenter -t "$leader" -m -u -i -n -p -- "$@"; }
for _ in $(seq 60); do
  state=$(inside systemctl is-system-running 2>/dev/null || true)
  case "$state" in running|degraded) break ;; esac
  sleep 1
done
echo "   system: $state"
sleep 3
fail=0
for s in diode-recv diode-send diode-chat; do
  st=$(inside systemctl is-active "$s" || true)
  echo "== $s: $st"
  inside systemctl show "$s" -p User -p ProtectSystem -p NoNewPrivileges -p PrivateDevices \
    -p RestrictAddressFamilies -p MainPID | sed 's/^/   /'
  if [ "$st" != active ]; then
    fail=1
    inside journalctl -u "$s" --no-pager -n 20 | sed 's/^/   /'
  fi
done
echo "== a file through the outbox"
inside sh -c 'echo "hello through the packaged diode" >/var/lib/diode-send/outbox/hello.txt'
for _ in $(seq 30); do
  inside test -f /var/lib/diode-recv/inbox/hello.txt && break
  sleep 1
done
if inside cat /var/lib/diode-recv/inbox/hello.txt; then echo "   arrived"; else echo "   did NOT arrive"; fail=1; fi
echo "== hardening score (systemd-analyze security, lower is better)"
for s in diode-recv diode-send diode-chat; do
  inside systemd-analyze security "$s" --no-pager 2>/dev/null | tail -n 1 | sed "s/^/   $s: /"
done
inside systemctl poweroff >/dev/null 2>&1 || true
exit $fail
