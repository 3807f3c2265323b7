#!/usr/bin/env bash
# An emulated one-way link (a "diode") for tests, made of two network namespaces joined by a veth pair:
#   <prefix>-s (sender side, 10.231.N.1)  ==veth==>  <prefix>-r (receiver side, 10.231.N.2)
# Static neighbour entries both ways (a real diode carries no ARP), IPv6 off (no neighbour discovery), and
# nftables (netdev family) on the receiver's veth:
#   ingress: counts every frame that arrives (before loss), then drops PCT% of them at random;
#   egress:  policy drop; counts every packet the receiver side tries to send towards the sender (UDP and
#            everything else separately). The receiver namespace's default route points at the veth, so any
#            attempt to send anywhere is counted here too.
# and an inet output chain in the receiver namespace that drops (and counts apart) the ICMP errors its kernel
# makes, e.g. port unreachable while no receiver listens: they are not the software under test transmitting,
# and a real diode could not carry them anyway.
# An optional tc tbf qdisc on the sender's veth limits the line rate.
# Everything lives inside the two namespaces: the host's interfaces, routes and firewall are untouched.
#
# As a library (the caller owns cleanup):
#   DIODE_NS=t1                                 # optional, default dd<pid of the shell>; a separate statement:
#   . hardware/diode-link.sh                    # a prefix (DIODE_NS=t1 . file) would not outlive the `.`
#   trap link_down EXIT
#   link_up 5                                   # 5% loss; names in $DIODE_NS_S $DIODE_NS_R, $DIODE_IP_S ...
#   ip netns exec "$DIODE_NS_R" diode-recv ... &  ip netns exec "$DIODE_NS_S" diode-send ... &
#   link_loss 100; sleep 1; link_loss 0         # cut the link for a second
#   link_drop udp dport 47041 @th,88,8 2        # also drop every frame matching an nftables expression
#   [ "$(link_reverse_packets)" = 0 ]           # the receiver side never transmitted
# As a command (state kept in /run/diode-link/<prefix>, so later commands find the link):
#   hardware/diode-link.sh up [PCT] | down | loss PCT | segment on|off | drop NFT-MATCH... | rate RATE|off | reverse | fwd | status
#                          | exec-s CMD... | exec-r CMD...
#   With DIODE_NS unset, `up` picks dd<pid> and prints it; the other commands use the only link that exists.
# Environment: DIODE_NS (prefix, [a-z][a-z0-9]{0,11}), DIODE_NET (third octet, 1-254, default derived from
# the prefix), DIODE_MTU (veth MTU, default 1500; e.g. 9000 for jumbo tests), DIODE_TBF_BURST (default 16kb),
# DIODE_TBF_LATENCY (default 10ms), DIODE_VETH_SEGMENT (default 1: the sender's veth segments GSO batches
# before the link as a NIC does, `ethtool -K <veth> tx-udp-segmentation off`; 0: the veth default, which
# passes a batch on whole).
# Needs root, iproute2, nftables and ethtool (installed by `link_up` if missing) and a kernel with the netdev egress
# hook (5.16+). No netem: loss is nftables `numgen random`; for bursts, reordering, duplication and bit
# flips put hardware/relay.py in the path.

DIODE_LINK_STATE_DIR=${DIODE_LINK_STATE_DIR:-/run/diode-link}
_link_ns_given=${DIODE_NS:-} _link_net_given=${DIODE_NET:-}

# _link_names : derive every name from DIODE_NS (DIODE_NET, if unset, from the first prefix seen: it only
# has to differ from nothing outside the two namespaces)
_link_names() {
  DIODE_NS=${DIODE_NS:-dd$$}
  DIODE_NS_S=$DIODE_NS-s DIODE_NS_R=$DIODE_NS-r
  DIODE_IF_S=$DIODE_NS-s DIODE_IF_R=$DIODE_NS-r
  if [ -z "${DIODE_NET:-}" ]; then
    local sum; sum=$(printf %s "$DIODE_NS" | cksum); sum=${sum%% *}
    DIODE_NET=$(( sum % 254 + 1 ))
  fi
  DIODE_IP_S=10.231.$DIODE_NET.1 DIODE_IP_R=10.231.$DIODE_NET.2
}
_link_names

_link_err() { echo "diode-link: $*" >&2; }
_link_nft() { ip netns exec "$DIODE_NS_R" nft "$@"; }

# _link_bp PCT : percent (0-100, up to two decimals) to basis points; 1 if it is not a percent
_link_bp() {
  awk -v p="${1:-}" 'BEGIN { if (p !~ /^[0-9]+(\.[0-9]+)?$/ || p + 0 > 100) exit 1; printf "%d\n", p * 100 + 0.5 }'
}

# _link_need CMD PACKAGE : install PACKAGE with apt-get when CMD is missing
_link_need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  command -v apt-get >/dev/null 2>&1 || { _link_err "$1 is missing and apt-get is not available"; return 1; }
  _link_err "installing $2"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null 2>&1; } ||
    { _link_err "cannot install $2 (apt-get install -y $2)"; return 1; }
  command -v "$1" >/dev/null 2>&1
}

_link_mac() { ip -n "$1" -o link show "$2" | sed -n 's/.*link\/ether \([0-9a-f:]*\).*/\1/p'; }

# link_up [LOSS_PCT] : build the link (default 0% loss). On failure it tears down what it made and returns 1.
link_up() {
  local loss=${1:-0} bp mac_s mac_r n mtu=${DIODE_MTU:-1500}
  _link_names
  [ "$(id -u)" = 0 ] || { _link_err "needs root (network namespaces, nftables)"; return 1; }
  [[ $DIODE_NS =~ ^[a-z][a-z0-9]{0,11}$ ]] || { _link_err "DIODE_NS=$DIODE_NS: use [a-z][a-z0-9]{0,11}"; return 1; }
  [[ $DIODE_NET =~ ^[0-9]+$ ]] && [ "$DIODE_NET" -ge 1 ] && [ "$DIODE_NET" -le 254 ] ||
    { _link_err "DIODE_NET=$DIODE_NET: use 1-254"; return 1; }
  bp=$(_link_bp "$loss") || { _link_err "loss '$loss': use a percent 0-100"; return 1; }
  _link_need nft nftables || return 1
  _link_need ethtool ethtool || return 1
  if ip netns list | grep -qE "^($DIODE_NS_S|$DIODE_NS_R)( |\$)"; then
    _link_err "namespaces $DIODE_NS_S / $DIODE_NS_R already exist (link_down first, or another DIODE_NS)"; return 1
  fi
  ip netns add "$DIODE_NS_S" || { _link_err "cannot make network namespace $DIODE_NS_S"; return 1; }
  ip netns add "$DIODE_NS_R" || { _link_err "cannot make network namespace $DIODE_NS_R"; link_down; return 1; }
  { mkdir -p "$DIODE_LINK_STATE_DIR" &&
    printf 'DIODE_NS=%s\nDIODE_NET=%s\n' "$DIODE_NS" "$DIODE_NET" >"$DIODE_LINK_STATE_DIR/$DIODE_NS"; } 2>/dev/null || true
  for n in "$DIODE_NS_S" "$DIODE_NS_R"; do
    # before the veth exists, so it never gets an IPv6 address (and sends no neighbour discovery)
    ip netns exec "$n" sysctl -qw net.ipv6.conf.default.disable_ipv6=1 net.ipv6.conf.all.disable_ipv6=1 \
      >/dev/null 2>&1 || true
    ip -n "$n" link set lo up || { _link_err "cannot set lo up in $n"; link_down; return 1; }
  done
  # made directly inside the namespaces: the pair never appears among the host's interfaces
  ip link add "$DIODE_IF_S" netns "$DIODE_NS_S" mtu "$mtu" type veth peer name "$DIODE_IF_R" netns "$DIODE_NS_R" mtu "$mtu" ||
    { _link_err "cannot make the veth pair"; link_down; return 1; }
  ip -n "$DIODE_NS_S" addr add "$DIODE_IP_S/24" dev "$DIODE_IF_S" &&
    ip -n "$DIODE_NS_R" addr add "$DIODE_IP_R/24" dev "$DIODE_IF_R" &&
    ip -n "$DIODE_NS_S" link set "$DIODE_IF_S" up &&
    ip -n "$DIODE_NS_R" link set "$DIODE_IF_R" up || { _link_err "cannot address the veth pair"; link_down; return 1; }
  # like a NIC: a GSO batch is cut into datagrams before it crosses, so loss stays per datagram (a veth
  # passes batches on whole otherwise). DIODE_VETH_SEGMENT=0 keeps the veth's default, for the test that
  # the sender then sends one datagram per call.
  if [ "${DIODE_VETH_SEGMENT:-1}" = 1 ]; then
    ip netns exec "$DIODE_NS_S" ethtool -K "$DIODE_IF_S" tx-udp-segmentation off >/dev/null 2>&1 ||
      { _link_err "cannot turn tx-udp-segmentation off on the sender's veth"; link_down; return 1; }
  fi
  mac_s=$(_link_mac "$DIODE_NS_S" "$DIODE_IF_S") mac_r=$(_link_mac "$DIODE_NS_R" "$DIODE_IF_R")
  ip -n "$DIODE_NS_S" neigh replace "$DIODE_IP_R" lladdr "$mac_r" dev "$DIODE_IF_S" nud permanent &&
    ip -n "$DIODE_NS_R" neigh replace "$DIODE_IP_S" lladdr "$mac_s" dev "$DIODE_IF_R" nud permanent &&
    ip -n "$DIODE_NS_R" route add default via "$DIODE_IP_S" dev "$DIODE_IF_R" ||
    { _link_err "cannot set static neighbours"; link_down; return 1; }
  _link_nft -f - <<NFT || { _link_err "nftables setup failed (kernel without the netdev egress hook?)"; link_down; return 1; }
table netdev diode {
  counter arrived { }
  counter lost { }
  counter reverse_udp { }
  counter reverse_other { }
  chain seen {
    type filter hook ingress device "$DIODE_IF_R" priority -10; policy accept;
    counter name arrived
  }
  chain ing {
    type filter hook ingress device "$DIODE_IF_R" priority 0; policy accept;
  }
  chain eg {
    type filter hook egress device "$DIODE_IF_R" priority 0; policy drop;
    meta l4proto udp counter name reverse_udp drop
    counter name reverse_other drop
  }
}
table inet diode_host {
  counter kernel_errors { }
  chain out {
    type filter hook output priority 0; policy accept;
    icmp type { destination-unreachable, time-exceeded, parameter-problem } counter name kernel_errors drop
  }
}
NFT
  link_loss "$loss" || { link_down; return 1; }
}

# link_loss PCT : drop PCT% (0-100, up to two decimals) of the frames that reach the receiver, from now on
# link_segment on|off : whether the sender's veth cuts GSO batches into datagrams before the link (as a
# NIC does; `on`, the default of link_up) or passes them on whole (`off`, the veth's own default)
link_segment() {
  local v
  case "${1:-}" in on) v=off ;; off) v=on ;; *) _link_err "segment '${1:-}': use on or off"; return 1 ;; esac
  _link_names
  ip netns exec "$DIODE_NS_S" ethtool -K "$DIODE_IF_S" tx-udp-segmentation "$v" >/dev/null
}

link_loss() {
  local bp
  bp=$(_link_bp "${1:-}") || { _link_err "loss '${1:-}': use a percent 0-100"; return 1; }
  _link_nft flush chain netdev diode ing || return 1
  if [ "$bp" -ge 10000 ]; then _link_nft add rule netdev diode ing counter name lost drop
  elif [ "$bp" -gt 0 ]; then _link_nft add rule netdev diode ing numgen random mod 10000 "<" "$bp" counter name lost drop
  fi
}

# link_drop NFT-MATCH... : from now on also drop (counted as lost) every arriving frame that matches an
# nftables expression, e.g. a raw payload match `@th,288,32 0x11000000` to cut chosen frames exactly.
# Rules add up; link_loss clears them all.
link_drop() {
  [ $# -gt 0 ] || { _link_err "link_drop NFT-MATCH..."; return 1; }
  _link_nft add rule netdev diode ing "$@" counter name lost drop
}

# link_rate RATE|off : tc tbf on the sender's veth, e.g. 200mbit (tc units: kbit/mbit/gbit are bits per
# second, as in send.toml; tc's "bps" means bytes). Frames are measured with their 14-byte Ethernet header.
link_rate() {
  case ${1:-} in
    "") _link_err "link_rate RATE|off"; return 1 ;;
    off) tc -n "$DIODE_NS_S" qdisc del dev "$DIODE_IF_S" root 2>/dev/null || true; return 0 ;;
  esac
  tc -n "$DIODE_NS_S" qdisc replace dev "$DIODE_IF_S" root tbf rate "$1" \
    burst "${DIODE_TBF_BURST:-16kb}" latency "${DIODE_TBF_LATENCY:-10ms}"
}

_link_counter() { # NAME FIELD(packets|bytes)
  _link_nft list counter netdev diode "$1" 2>/dev/null | sed -n "s/.*$2 \([0-9]*\).*/\1/p"
}
# link_reverse_packets : packets the receiver side tried to send towards the sender (all dropped): must be 0
link_reverse_packets() {
  local u o
  u=$(_link_counter reverse_udp packets) o=$(_link_counter reverse_other packets)
  [ -n "$u" ] && [ -n "$o" ] || { _link_err "no link $DIODE_NS"; return 1; }
  echo $(( u + o ))
}
link_reverse_udp() { _link_counter reverse_udp packets; }
# link_kernel_errors : ICMP errors (port unreachable while no receiver listens) that the receiver's kernel
# made and the output hook dropped before they reached the veth; not counted by link_reverse_packets
link_kernel_errors() { _link_nft list counter inet diode_host kernel_errors 2>/dev/null | sed -n 's/.*packets \([0-9]*\).*/\1/p'; }
# link_fwd_bytes / link_fwd_packets : IP bytes / frames that reached the receiver's veth, counted before loss
link_fwd_bytes() { _link_counter arrived bytes; }
link_fwd_packets() { _link_counter arrived packets; }
# link_lost_packets : frames dropped by link_loss
link_lost_packets() { _link_counter lost packets; }

# link_exec_s CMD... / link_exec_r CMD... : run a command on the sender / receiver side
link_exec_s() { ip netns exec "$DIODE_NS_S" "$@"; }
link_exec_r() { ip netns exec "$DIODE_NS_R" "$@"; }

# link_down : stop every process still inside the two namespaces (TERM, then KILL after 2 s), delete the
# namespaces (the veth pair, nftables and tc go with them). Safe to call twice, after a failed link_up,
# and under `set -e`.
link_down() {
  local n p i left
  for n in "$DIODE_NS_S" "$DIODE_NS_R"; do
    for p in $(ip netns pids "$n" 2>/dev/null || true); do kill -TERM "$p" 2>/dev/null || true; done
  done
  for i in $(seq 1 20); do
    left=""
    for n in "$DIODE_NS_S" "$DIODE_NS_R"; do left+=$(ip netns pids "$n" 2>/dev/null || true); done
    [ -z "$left" ] && break
    sleep 0.1
  done
  for n in "$DIODE_NS_S" "$DIODE_NS_R"; do
    for p in $(ip netns pids "$n" 2>/dev/null || true); do kill -KILL "$p" 2>/dev/null || true; done
    ip netns del "$n" 2>/dev/null || true
  done
  # only if something moved it out of the namespaces; normally it died with them
  ip link del "$DIODE_IF_S" 2>/dev/null || true
  rm -f "$DIODE_LINK_STATE_DIR/$DIODE_NS" 2>/dev/null || true
  return 0
}

link_status() {
  echo "link $DIODE_NS: $DIODE_NS_S $DIODE_IP_S ($DIODE_IF_S) -> $DIODE_NS_R $DIODE_IP_R ($DIODE_IF_R)"
  echo "fwd $(link_fwd_packets) frames $(link_fwd_bytes) bytes, lost $(link_lost_packets), reverse $(link_reverse_packets) (udp $(link_reverse_udp)), kernel ICMP errors dropped $(link_kernel_errors)"
  _link_nft list chain netdev diode ing 2>/dev/null | grep -o 'numgen.*\|counter name "lost" drop' | sed 's/^/loss rule: /' || true
  tc -n "$DIODE_NS_S" qdisc show dev "$DIODE_IF_S" 2>/dev/null | grep tbf || true
  return 0
}

# ---- command mode ----
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -u
  cmd=${1:-}; shift || true
  if [ -z "$_link_ns_given" ] && [ "$cmd" != up ] && [ -n "$cmd" ]; then
    links=$(ls "$DIODE_LINK_STATE_DIR" 2>/dev/null)
    case $(printf '%s\n' $links | grep -c .) in
      1) DIODE_NS=$links ;;
      0) _link_err "no link is up (DIODE_NS unset)"; exit 1 ;;
      *) _link_err "several links are up, set DIODE_NS to one of:" $links; exit 1 ;;
    esac
  fi
  DIODE_NET=$_link_net_given
  [ -z "$DIODE_NET" ] && [ -f "$DIODE_LINK_STATE_DIR/$DIODE_NS" ] &&
    DIODE_NET=$(sed -n 's/^DIODE_NET=//p' "$DIODE_LINK_STATE_DIR/$DIODE_NS")
  _link_names
  case $cmd in
    up) link_up "${1:-0}" && echo "DIODE_NS=$DIODE_NS sender=$DIODE_NS_S/$DIODE_IP_S receiver=$DIODE_NS_R/$DIODE_IP_R" ;;
    down) link_down ;;
    loss) link_loss "${1:-}" ;;
    segment) link_segment "${1:-}" ;;
    drop) link_drop "$@" ;;
    rate) link_rate "${1:-}" ;;
    reverse) link_reverse_packets ;;
    fwd) link_fwd_bytes ;;
    status) link_status ;;
    exec-s) link_exec_s "$@" ;;
    exec-r) link_exec_r "$@" ;;
    *) sed -n 's/^#   hardware\/diode-link.sh/usage: hardware\/diode-link.sh/p; s/^#                          |/                             |/p' "$0" >&2; exit 2 ;;
  esac
fi
