#!/usr/bin/env bash
# make soak: the long, bounded runs of issue #7, written to docs/soak.md.
#
# Part 1, fuzzing: each cargo-fuzz target (fuzz/fuzz_targets: filter,
# records, requests) for FUZZ_SECONDS, starting from the committed corpus
# (fuzz/corpus/<target>, which grows). A crash fails the run and leaves its
# reproducer in fuzz/artifacts/<target>; copied to fuzz/regressions/<target>
# it is replayed by `make test` from then on.
#
# Part 2, load: qtap-loadgen as fast as it can for SOAK_SECONDS, selected by
# a session with two JSON followers. qtapd's and the followers' RSS are
# sampled every SAMPLE_SECONDS (the curve goes in the report). Checked at
# the end: qtapd is alive; its RSS in the last third of the run is at most
# its peak in the first third plus 10 % and 8 MiB (flat, not growing);
# every syscall the generator made was decoded or counted lost in the
# kernel ring; each follower's received + reported queue losses equal the
# events the session offered it.
#
# Usage: bench/soak.sh QTAPD QTAPCTL LOADGEN   (root)
# Knobs: FUZZ_SECONDS (120), SOAK_SECONDS (600), SAMPLE_SECONDS (10).
set -euo pipefail

qtapd=$(realpath "$1")
qtapctl=$(realpath "$2")
loadgen=$(realpath "$3")
fuzz_seconds=${FUZZ_SECONDS:-120}
soak_seconds=${SOAK_SECONDS:-600}
sample_seconds=${SAMPLE_SECONDS:-10}
root=$(cd "$(dirname "$0")/.." && pwd)
report=$root/docs/soak.md
# shellcheck source=bench/daemon.sh
source "$(dirname "$0")/daemon.sh" soak
fail() {
	echo "soak: FAILED: $*" >&2
	exit 1
}

out=$work/report.md
{
	echo "# Soak runs (\`make soak\`)"
	echo
	echo "Written by \`bench/soak.sh\` on $(date -u +%Y-%m-%d), kernel $(uname -r), $(nproc) cores."
	echo
	echo "## Fuzzing, $fuzz_seconds s per target"
	echo
	echo "| target | runs | runs/s | coverage edges | corpus files | result |"
	echo "| --- | ---: | ---: | ---: | ---: | --- |"
} >"$out"

# --- Part 1: fuzzing ---------------------------------------------------------
cd "$root/fuzz"
cargo +nightly fuzz build -O >&2
for target in $(ls fuzz_targets | sed 's/\.rs$//'); do
	echo "soak: fuzzing $target for $fuzz_seconds s" >&2
	mkdir -p "corpus/$target"
	log=$work/fuzz-$target.log
	result=held
	if ! cargo +nightly fuzz run -O "$target" "corpus/$target" -- \
		-max_total_time="$fuzz_seconds" -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1; then
		result="**crashed**: see fuzz/artifacts/$target"
	fi
	runs=$(awk '/stat::number_of_executed_units/ {print $NF}' "$log")
	edges=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | awk '{print $2}')
	files=$(ls "corpus/$target" | wc -l)
	echo "| $target | $runs | $((runs / fuzz_seconds)) | $edges | $files | $result |" >>"$out"
	[[ $result == held ]] || {
		tail -40 "$log" >&2
		fail "fuzz target $target crashed; the reproducer is in fuzz/artifacts/$target"
	}
done
cd "$root"

# --- Part 2: load ------------------------------------------------------------
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

"$qtapd" --socket "$socket" >/dev/null 2>"$work/qtapd.log" &
qpid=$!
pids+=("$qpid")
for _ in $(seq 100); do "${ctl[@]}" status >/dev/null 2>&1 && break; sleep 0.1; done
id=$("${ctl[@]}" trace start --filter "exe.endsWith:/$(basename "$loadgen")")
fpids=()
for i in 1 2; do
	"${ctl[@]}" trace follow "$id" --output json --summary "$work/f$i.sum" >/dev/null 2>"$work/f$i.err" &
	fpids+=($!)
	pids+=($!)
done
sleep 1
rec0=$(counter records)
ring0=$(counter kernel_ring_full)
echo "soak: load for $soak_seconds s" >&2
"$loadgen" "$soak_seconds" >"$work/loadgen.out" &
lpid=$!
pids+=("$lpid")
curve=$work/curve
start=$SECONDS
while kill -0 "$lpid" 2>/dev/null; do
	kill -0 "$qpid" 2>/dev/null || fail "qtapd died during the load (log: $(tail -5 "$work/qtapd.log"))"
	echo "$((SECONDS - start)) $(rss_kib "$qpid") $(rss_kib "${fpids[0]}") $(rss_kib "${fpids[1]}")" >>"$curve"
	sleep "$sample_seconds"
done
wait "$lpid"
sleep 0.5 # the last records out of the ring
rec1=$(counter records)
ring1=$(counter kernel_ring_full)
stopped=$(stop_session "$id")
for p in "${fpids[@]}"; do
	for _ in $(seq 1200); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
	wait "$p" 2>/dev/null || fail "a follower did not end with the session"
done
kill -0 "$qpid" 2>/dev/null || fail "qtapd died"
kill "$qpid"
wait "$qpid" || fail "qtapd exited with an error: $(tail -5 "$work/qtapd.log")"

gen=$(cat "$work/loadgen.out")
made=$(($(sed 's/.*writes=\([0-9]*\).*/\1/' <<<"$gen") + $(sed 's/.*reads=\([0-9]*\).*/\1/' <<<"$gen")))
decoded=$((rec1 - rec0))
ring_lost=$((ring1 - ring0))
# "OFFERED LOST", summed over both followers.
offered=$(awk '{print $1}' <<<"$stopped")

{
	echo
	echo "## Load, $soak_seconds s at the generator's full speed, two JSON followers"
	echo
	echo "| | count |"
	echo "| --- | ---: |"
	echo "| socket syscalls the generator made | $made |"
	echo "| records qtapd decoded | $decoded |"
	echo "| records lost in the kernel ring (counted) | $ring_lost |"
	echo "| events the session offered its followers (both) | $offered |"
	for i in 1 2; do
		read -r ev lost queue gaps < <(follower_counts "$work/f$i.sum")
		echo "| follower $i: events received / lost in its queue / seq gaps | $ev / $queue / $gaps |"
		echo "$ev $queue $gaps" >>"$work/followers"
	done
	echo
	echo "RSS in MiB every $sample_seconds s (qtapd, follower 1, follower 2):"
	echo
	echo "| s | qtapd | follower 1 | follower 2 |"
	echo "| ---: | ---: | ---: | ---: |"
	awk '{printf "| %d | %.1f | %.1f | %.1f |\n", $1, $2 / 1024, $3 / 1024, $4 / 1024}' "$curve"
} >>"$out"

# The checks.
((decoded + ring_lost >= made)) ||
	fail "$made syscalls made but only $decoded decoded + $ring_lost counted lost"
sum=$(awk '{s += $1 + $2} END {print s}' "$work/followers")
((sum == offered)) || fail "followers received + reported lost $sum, the session offered $offered"
awk '$3 > $2 {exit 1}' "$work/followers" || fail "a follower saw more seq gaps than reported losses"
read -r first last < <(awk -v n="$(wc -l <"$curve")" '
	NR > 1 && NR <= n / 3 && $2 > f {f = $2}
	NR > 2 * n / 3 && $2 > l {l = $2}
	END {print f + 0, l + 0}' "$curve")
((last <= first + first / 10 + 8192)) ||
	fail "qtapd's RSS grew: peak $first KiB in the first third, $last KiB in the last"
{
	echo
	echo "Checked: every syscall made was decoded or counted lost; each follower's"
	echo "received + reported losses = what the session offered it; qtapd's RSS peak"
	echo "in the last third ($((last / 1024)) MiB) within 10 % + 8 MiB of the first third's ($((first / 1024)) MiB)."
} >>"$out"
cp "$out" "$report"
echo "soak: passed; wrote $report" >&2
