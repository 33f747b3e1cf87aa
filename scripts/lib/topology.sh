# The standard topology (docs: /work/shared/TOPOLOGY.md) for the scripts that drive traffic
# through it: built by the hold_topology example, deleted when the script ends, also on Ctrl-C,
# failure or SIGKILL. Source it, then `topology_up EXAMPLES_DIR SECONDS WORK` and call
# `topology_down` from the EXIT trap.
#
# The topology lives as long as a FIFO has a writer. The one writer is a tail that also ends
# when the sourcing script does, even by SIGKILL (--pid); the script itself never opens the FIFO,
# so no other process can inherit a write end and keep the topology alive. hold_topology is never
# signalled: it must see its stdin close to delete what it built. (Background processes started
# without job control ignore SIGINT, so a Ctrl-C does not reach it either.)

# topology_up EXAMPLES_DIR SECONDS WORK: builds it for at most SECONDS; sets S (its suffix),
# HOLD_PID and TOPO_PID.
topology_up() {
  local ex=$1 secs=$2 work=$3
  mkfifo "$work/fifo"
  tail -f --pid="$$" /dev/null >"$work/fifo" &
  HOLD_PID=$!
  "$ex/hold_topology" "$secs" <"$work/fifo" >"$work/suffix" &
  TOPO_PID=$!
  for _ in $(seq 100); do [ -s "$work/suffix" ] && break; sleep 0.1; done
  [ -s "$work/suffix" ] || { echo "topology not built" >&2; exit 1; }
  S=$(cat "$work/suffix")
}

# topology_down: ends the FIFO's only writer, so hold_topology deletes the namespaces, and waits
# for it. The writer cannot have ended before the script (tail --pid waits for it), so its PID
# is still the script's child.
topology_down() {
  if [ -n "${HOLD_PID:-}" ]; then kill "$HOLD_PID" 2>/dev/null || true; wait "$HOLD_PID" 2>/dev/null || true; fi
  [ -z "${TOPO_PID:-}" ] || wait "$TOPO_PID" 2>/dev/null || true
}
