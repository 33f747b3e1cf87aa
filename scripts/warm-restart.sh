#!/usr/bin/env bash
# A warm restart under load: starts `natgate run` (release, one worker, `[state] snapshot`) in
# the standard topology, fills it with SESSIONS UDP sessions (ten per mapping), then restarts
# it as systemd would (SIGTERM, wait, start) while a probe flow sends a datagram every
# millisecond and times the answers (established, so the fast path carries it when attached). Prints the snapshot's size, how long saving and restoring
# took (natgate's own log), the longest silence the probe saw, and the sessions before and
# after.
#
#   scripts/warm-restart.sh [SESSIONS]   # as root; default 1 000 000; about a minute
#
# Namespaces only (built by the hold_topology example and deleted when this script ends, also
# on Ctrl-C or failure); the generator and the probe are bounded in count and time; natgate is
# ended by its PID.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/topology.sh
[ "$(id -u)" = 0 ] || { echo "run as root (namespaces)" >&2; exit 1; }
SESSIONS=${1:-1000000}

cargo build --release -q -p natgate --bin natgate --example udpgen --example hold_topology
BIN=target/release
WORK=$(mktemp -d /tmp/natgate-warm-XXXXXX)
NG_PID=""
PROBE_PIDS=()
stop_natgate() {
  if [ -n "$NG_PID" ]; then kill "$NG_PID" 2>/dev/null || true; wait "$NG_PID" 2>/dev/null || true; fi
  NG_PID=""
}
cleanup() {
  stop_natgate
  for p in "${PROBE_PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  topology_down
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

topology_up "$BIN/examples" 300 "$WORK"
GW=ng-gw-$S; SUB=ng-sub1-$S; WAN=ng-wan1-$S

cat >"$WORK/natgate.toml" <<TOML
[interfaces]
inside = "lan0-$S"
outside = "wan0-$S"
[pool]
addresses = ["198.51.100.0/28"]
[limits]
max-sessions = $((SESSIONS + SESSIONS / 10 + 1000))
max-mappings = $((SESSIONS / 10 + 1000))
[state]
snapshot = "$WORK/natgate.snapshot"
[control]
socket = "$WORK/control.sock"
TOML
start_natgate() {
  timeout -k 5 300 "$BIN/natgate" run --config "$WORK/natgate.toml" --netns "$GW" >>"$WORK/natgate.log" 2>&1 &
  NG_PID=$!
}
running() { sed 's/\x1b\[[0-9;]*m//g' "$WORK/natgate.log" | grep -c "natgate running" || true; }
ctl() { "$BIN/natgate" ctl --socket "$WORK/control.sock" "$@"; }
log_field() { sed 's/\x1b\[[0-9;]*m//g' "$WORK/natgate.log" | grep "$1" | tail -1 | grep -o " $2=[0-9]*" | cut -d= -f2; }

start_natgate
for _ in $(seq 150); do [ "$(running)" -ge 1 ] && break; sleep 0.1; done
# Ten remote ports per internal endpoint: SESSIONS sessions on SESSIONS/10 mappings.
ip netns exec "$SUB" "$BIN/examples/udpgen" 203.0.113.10 9 "$SESSIONS" 60 new rate=25000 \
  count="$SESSIONS" ports=1000 dports=10 | tail -1
sleep 1
BEFORE=$(ctl sessions --count | tail -1)
echo "before: $BEFORE"
ctl drops

# The probe: an echo in wan1, a sender in sub1 that notes the longest time between answers.
ip netns exec "$WAN" timeout 120 python3 -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("203.0.113.10", 7007))
while True:
    d, a = s.recvfrom(64); s.sendto(d, a)
' &
PROBE_PIDS+=($!)
ip netns exec "$SUB" timeout 120 python3 -c '
import socket, threading, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.2)
end = time.monotonic() + 110
def send():
    while time.monotonic() < end:
        s.sendto(b"gap", ("203.0.113.10", 7007)); time.sleep(0.001)
threading.Thread(target=send, daemon=True).start()
last, longest = None, 0.0
while time.monotonic() < end:
    try:
        s.recvfrom(64)
    except socket.timeout:
        continue
    now = time.monotonic()
    if last is not None and now - last > longest:
        longest = now - last
        print("%.0f" % (longest * 1000), flush=True)
    last = now
' >"$WORK/gap" &
PROBE_PIDS+=($!)
sleep 2

T0=$(date +%s%N)
kill -TERM "$(pgrep -P "$NG_PID" -x natgate)"
wait "$NG_PID" 2>/dev/null || true
NG_PID=""
T1=$(date +%s%N)
start_natgate
for _ in $(seq 600); do [ "$(running)" -ge 2 ] && break; sleep 0.05; done
T2=$(date +%s%N)
sleep 3
AFTER=$(ctl sessions --count | tail -1)
BYTES=$(log_field "saved the snapshot" bytes)
SAVED=$(log_field "saved the snapshot" sessions)

echo "saved sessions:        $SAVED"
echo "snapshot:              $BYTES bytes ($(awk -v b="$BYTES" -v n="$SAVED" 'BEGIN { printf "%.1f", b / n }') bytes per session)"
echo "save (encode + write): $(log_field "saved the snapshot" ms) ms"
echo "stop (SIGTERM to exit): $(( (T1 - T0) / 1000000 )) ms"
echo "restore:               $(log_field "restored the snapshot" ms) ms"
echo "start to running:      $(( (T2 - T1) / 1000000 )) ms"
echo "longest probe silence: $(tail -1 "$WORK/gap") ms"
echo "after: $AFTER"
