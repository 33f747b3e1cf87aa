#!/usr/bin/env bash
# natgate's resident memory against `max-memory`: starts `natgate run` (release, one worker) in
# the standard topology with only `[limits] max-memory` set, reads what natgate says it holds
# itself and the max-sessions it derived, fills the table with new UDP flows, and prints VmRSS
# at start, with the table filled, and after `ctl sessions --count` and `--limit 10`.
#
#   scripts/memory-fill.sh [MAX_MEMORY_BYTES [FLOWS]]   # as root; defaults 100663296 (96 MiB)
#                                                       # and 1 250 000 flows; about 40 s
#
# Namespaces only (built by the hold_topology example and deleted when this script ends, also
# on Ctrl-C or failure); the generator is bounded in count and time (at most 40 s); natgate is
# ended by its PID.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/topology.sh
[ "$(id -u)" = 0 ] || { echo "run as root (namespaces)" >&2; exit 1; }
MAX_MEMORY=${1:-100663296}
FLOWS=${2:-1250000}

cargo build --release -q -p natgate --bin natgate --example udpgen --example hold_topology
BIN=target/release
WORK=$(mktemp -d /tmp/natgate-memory-XXXXXX)
NG_PID=""
cleanup() {
  if [ -n "$NG_PID" ]; then kill "$NG_PID" 2>/dev/null || true; wait "$NG_PID" 2>/dev/null || true; fi
  topology_down
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

topology_up "$BIN/examples" 300 "$WORK"
GW=ng-gw-$S; SUB=ng-sub1-$S

cat >"$WORK/natgate.toml" <<TOML
[interfaces]
inside = "lan0-$S"
outside = "wan0-$S"
[pool]
addresses = ["198.51.100.0/28"]
[limits]
max-memory = $MAX_MEMORY
[control]
socket = "$WORK/control.sock"
TOML
timeout -k 5 300 "$BIN/natgate" run --config "$WORK/natgate.toml" --netns "$GW" >"$WORK/natgate.log" 2>&1 &
NG_PID=$!
for _ in $(seq 100); do grep -q "natgate itself holds" "$WORK/natgate.log" && break; sleep 0.1; done
sleep 0.5
# `timeout` execs nothing: natgate is its child.
NG=$(pgrep -P "$NG_PID" -x natgate)
rss() { awk '/^VmRSS/ { print $2 * 1024 }' "/proc/$NG/status"; }
ctl() { "$BIN/natgate" ctl --socket "$WORK/control.sock" "$@"; }

echo "max-memory: $MAX_MEMORY bytes"
grep -o "natgate itself holds [0-9]* bytes" "$WORK/natgate.log"
sed 's/\x1b\[[0-9;]*m//g' "$WORK/natgate.log" | grep -o "max_sessions=[0-9]*" | head -1
echo "RSS at start: $(rss) bytes"
ip netns exec "$SUB" "$BIN/examples/udpgen" 203.0.113.10 9 "$FLOWS" 40 new rate=60000 \
  count="$FLOWS" ports=1000 dports=10 | tail -1
sleep 1
echo "RSS with the table filled: $(rss) bytes ($(ctl sessions --count | tail -1))"
ctl sessions --limit 10 >/dev/null
echo "RSS after ctl sessions --count and --limit 10: $(rss) bytes"
