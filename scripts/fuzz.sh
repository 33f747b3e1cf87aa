#!/usr/bin/env bash
# Fuzzes every target in fuzz/ with libFuzzer for SECONDS each: `cargo fuzz` (nightly) builds
# them as a release build with debug assertions and the sanitizer's coverage, each starts from
# its seed corpus (fuzz/corpus/TARGET, when there is one) in a scratch copy, and as many run at
# once as there are CPUs, at nice 19. Prints a Markdown table: runs, CPU seconds, coverage,
# corpus, crashes. A crash leaves its input in the target's artifacts directory (named in the
# table) to be turned into a regression test.
#
#   scripts/fuzz.sh [SECONDS]        # default 3600; needs `cargo install cargo-fuzz` and a
#                                    # nightly toolchain (`rustup toolchain install nightly`)
#   SEED=/tmp/natgate-fuzz-XXXXXX scripts/fuzz.sh   # go on from an earlier run's corpora
#   TARGETS="stun_message wire_parse" scripts/fuzz.sh   # only these targets
#
# Runs that go on from an earlier run's corpora add up: libFuzzer's coverage and corpus carry
# over, so two half-hour runs explore what one hour does (how continuous fuzzing works).
#
# Bounded: each target stops after SECONDS (libFuzzer's -max_total_time, and `timeout` 60 s
# later); the work directory is kept for the corpora and artifacts, and its path printed.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-3600}
JOBS=${JOBS:-$(nproc)}
command -v cargo-fuzz >/dev/null || { echo "needs cargo-fuzz: cargo install cargo-fuzz" >&2; exit 1; }

(cd fuzz && cargo +nightly fuzz build -O)
BIN=fuzz/target/x86_64-unknown-linux-gnu/release
WORK=$(mktemp -d /tmp/natgate-fuzz-XXXXXX)
if [ -n "${TARGETS:-}" ]; then
  read -ra TARGETS <<<"$TARGETS"
else
  mapfile -t TARGETS < <(cd fuzz && cargo +nightly fuzz list)
fi
echo "fuzzing ${TARGETS[*]} for $SECONDS_EACH s each, $JOBS at a time, in $WORK" >&2

run() {
  local t=$1 dir=$WORK/$1
  mkdir -p "$dir/corpus" "$dir/artifacts"
  [ -d "fuzz/corpus/$t" ] && cp fuzz/corpus/"$t"/* "$dir/corpus/"
  [ -n "${SEED:-}" ] && [ -d "$SEED/$t/corpus" ] && cp "$SEED/$t/corpus"/* "$dir/corpus/"
  cp "$BIN/$t" "$dir/bin"
  # /usr/bin/time reports the CPU the target really had (the machine may be shared).
  (cd "$dir" && nice -n 19 /usr/bin/time -f "cpu %U %S" timeout -k 5 $((SECONDS_EACH + 60)) \
    ./bin corpus -max_total_time="$SECONDS_EACH" -print_final_stats=1 -rss_limit_mb=2048 \
    -artifact_prefix=artifacts/ >log 2>&1) || true
}
for t in "${TARGETS[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  run "$t" &
done
wait

echo "| target | runs | CPU s (user + sys) | coverage (edges) | features | corpus | crashes |"
echo "|---|---:|---:|---:|---:|---:|---|"
for t in "${TARGETS[@]}"; do
  log=$WORK/$t/log
  runs=$(awk '/stat::number_of_executed_units/ { print $2 }' "$log")
  cpu=$(awk '/^cpu / { printf "%.0f", $2 + $3 }' "$log")
  last=$(grep -E '^#[0-9]+' "$log" | tail -1)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9]*[a-zA-Z]*\).*/\1/p' <<<"$last")
  crashes=$(find "$WORK/$t/artifacts" -type f | wc -l)
  [ "$crashes" = 0 ] && crashes=none || crashes="$crashes in $WORK/$t/artifacts"
  echo "| $t | ${runs:-?} | ${cpu:-?} | ${cov:-?} | ${ft:-?} | ${corp:-?} | $crashes |"
done
