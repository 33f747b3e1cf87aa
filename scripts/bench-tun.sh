#!/usr/bin/env bash
# TUN data plane vs the kernel's NAT (nftables SNAT to the same pool), same topology, same run.
#
#   scripts/bench-tun.sh (as root)           # ~2 minutes; writes a Markdown table to stdout
#
# Everything happens in network namespaces this script creates (the standard topology, built by
# the hold_topology example) and is torn down on exit, also on Ctrl-C or failure. Every loop is
# bounded in count and time. Generator (udpgen, raw socket + sendmmsg) on CPU 0; the gateway on
# CPU 1: natgate pinned with taskset, and RPS sends the gateway's lan0 receive processing to
# CPU 1 (for both data planes), while the upstream router's receive processing goes back to
# CPU 0. Gateway CPU = busy time of CPU 1 (user + system + softirq) / packets delivered to wan1.
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "run as root (namespaces)"; exit 1; }
command -v nft >/dev/null && command -v iperf3 >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables iperf3 >/dev/null
}
[ "$(nproc)" -ge 2 ] || { echo "needs 2 CPUs"; exit 1; }

cargo build --release -q -p natgate --bin natgate --example udpgen --example hold_topology
BIN=target/release
WARM=${WARM:-3}     # seconds before sampling
MEAS=${MEAS:-5}     # seconds sampled

FIFO=$(mktemp -u /tmp/natgate-bench-XXXXXX)
mkfifo "$FIFO"
exec 7<>"$FIFO"     # our write end; closing it tears the topology down
"$BIN/examples/hold_topology" 600 <"$FIFO" >"$FIFO.sfx" 7>&- &
TOPO_PID=$!
GW_PID=""
cleanup() {
  [ -n "$GW_PID" ] && kill "$GW_PID" 2>/dev/null && wait "$GW_PID" 2>/dev/null || true
  exec 7>&- || true           # closing stdin tears the topology down
  wait "$TOPO_PID" 2>/dev/null || true
  rm -f "$FIFO" "$FIFO.sfx" "$FIFO.toml"
}
trap cleanup EXIT INT TERM
for _ in $(seq 100); do [ -s "$FIFO.sfx" ] && break; sleep 0.1; done
S=$(cat "$FIFO.sfx")
GW=ng-gw-$S; SUB=ng-sub1-$S; UP=ng-up-$S; WAN=ng-wan1-$S

# Receive processing: gateway lan0 on CPU 1, upstream on CPU 0.
ip netns exec "$GW" sh -c "echo 2 > /sys/class/net/lan0-$S/queues/rx-0/rps_cpus"
ip netns exec "$UP" sh -c "echo 1 > /sys/class/net/down-$S/queues/rx-0/rps_cpus"
ip netns exec "$GW" sh -c "echo 1 > /sys/class/net/wan0-$S/queues/rx-0/rps_cpus"
# wan1 drops the load silently (no ICMP port unreachable flowing back).
ip netns exec "$WAN" nft -f - <<NFT
table inet sink {
  chain input {
    type filter hook input priority 0;
    udp dport 9 drop
  }
}
NFT
# The generator's spoofed subscribers 100.64.1.0/24.. are on-link for the gateway already.

cpu1_busy() { awk '$1=="cpu1"{print $2+$3+$4+$7+$8}' /proc/stat; }
# natgate's own user and system time (ticks), to split engine from kernel work.
gw_times() { if [ -n "$GW_PID" ]; then awk '{print $14, $15}' "/proc/$GW_PID/stat"; else echo "0 0"; fi; }
wan_rx() { ip netns exec "$WAN" cat /sys/class/net/eth0-$S/statistics/rx_packets; }

# measure FLOWS [new] -> "pps ns_per_packet"
measure() {
  local flows=$1 mode=${2:-}
  ip netns exec "$SUB" taskset -c 0 "$BIN/examples/udpgen" 203.0.113.10 9 "$flows" $((WARM + MEAS + 1)) $mode >/dev/null &
  local gen=$!
  sleep "$WARM"
  local r0 c0 r1 c1 u0 s0 u1 s1
  r0=$(wan_rx); c0=$(cpu1_busy); read -r u0 s0 <<<"$(gw_times)"
  sleep "$MEAS"
  r1=$(wan_rx); c1=$(cpu1_busy); read -r u1 s1 <<<"$(gw_times)"
  wait "$gen" || true
  local hz; hz=$(getconf CLK_TCK)
  if [ -n "$GW_PID" ]; then
    echo "  natgate $flows $mode: process user $((u1 - u0)) ticks, system $((s1 - s0)) ticks, CPU1 busy $((c1 - c0)) ticks" >&2
  fi
  awk -v r=$((r1 - r0)) -v c=$((c1 - c0)) -v s="$MEAS" -v hz="$hz" \
    'BEGIN { pps = r / s; ns = (r > 0) ? c / hz * 1e9 / r : 0; printf "%.0f %.0f\n", pps, ns }'
}

iperf() {
  ip netns exec "$WAN" timeout 20 iperf3 -s -1 -B 203.0.113.10 >/dev/null 2>&1 &
  local srv=$!
  sleep 0.5
  ip netns exec "$SUB" taskset -c 0 timeout 20 iperf3 -c 203.0.113.10 -t "$MEAS" -J 2>/dev/null |
    awk -F: '/"sum_received"/{f=1} f && /"bits_per_second"/{gsub(/[ ,]/,"",$2); printf "%.2f\n", $2/1e9; exit}'
  wait "$srv" 2>/dev/null || true
}

results=()
run_all() {
  local name=$1
  local a b c t
  a=$(measure 1000); b=$(measure 1000000); c=$(measure 1 new); t=$(iperf)
  results+=("$name|$a|$b|$c|$t")
}

# --- natgate ---
cat > "$FIFO.toml" <<TOML
[interfaces]
inside = "lan0-$S"
outside = "wan0-$S"
[pool]
addresses = ["198.51.100.0/28"]
[limits]
max-sessions = 4194304
max-mappings = 4194304
[control]
enabled = false
TOML
ip netns exec "$GW" true
taskset -c 1 "$BIN/natgate" run --config "$FIFO.toml" --netns "$GW" 2>/dev/null &
GW_PID=$!
for _ in $(seq 100); do ip -n "$GW" link show natgate-in >/dev/null 2>&1 && break; sleep 0.1; done
run_all "natgate (TUN, 1 queue)"
kill "$GW_PID"; wait "$GW_PID" 2>/dev/null || true; GW_PID=""

# --- kernel NAT ---
ip netns exec "$GW" sysctl -qw net.ipv4.ip_forward=1
ip netns exec "$GW" nft -f - <<NFT
table ip nat {
  chain post {
    type nat hook postrouting priority 100;
    oifname "wan0-$S" snat to 198.51.100.0-198.51.100.15
  }
}
NFT
run_all "kernel (nftables SNAT to the pool)"
CT_MAX=$(ip netns exec "$GW" cat /proc/sys/net/netfilter/nf_conntrack_max 2>/dev/null || echo "?")

echo "| data plane | pps, 1 000 flows | gateway ns/pkt | pps, 1 000 000 flows | gateway ns/pkt | new flows/s | gateway ns/flow | iperf3 TCP Gbit/s |"
echo "|---|---|---|---|---|---|---|---|"
for r in "${results[@]}"; do
  IFS='|' read -r name a b c t <<<"$r"
  read -r a1 a2 <<<"$a"; read -r b1 b2 <<<"$b"; read -r c1 c2 <<<"$c"
  echo "| $name | $a1 | $a2 | $b1 | $b2 | $c1 | $c2 | $t |"
done
echo
echo "64-byte IPv4 packets (20 + 8 + 36), ${MEAS} s sampled after ${WARM} s warm-up; kernel nf_conntrack_max = $CT_MAX; $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)."
