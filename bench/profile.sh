#!/usr/bin/env bash
# make profile: where the pipeline's user-space time goes, per event. A
# session selects qtap-loadgen (64-byte writes over loopback TCP at RATE
# writes/s); one follower runs `qtapctl trace follow --output json` to a
# file; `perf record -g` samples qtapd and the follower while the load
# runs. Prints each one's CPU and context switches per event received
# (from /proc) and its hottest symbols, self time, as perf reports them,
# and the kernel probes' run time per event (kernel.bpf_stats_enabled, on
# for the run).
#
# Usage: bench/profile.sh QTAPD QTAPCTL LOADGEN   (root)
# Knobs: DURATION (5 s), RATE (100000 writes/s; 0 = as fast as it can),
# TOP (20 symbols each), PERF_DATA (a path to keep the samples at, for
# `perf report -i PATH` with call graphs), PERF_CALL_GRAPH (perf's option,
# `-g`; release builds keep no frame pointers, so for callers build with
# CARGO_PROFILE_RELEASE_DEBUG=line-tables-only and use
# `--call-graph dwarf,16384`).
set -euo pipefail

qtapd=$(realpath "$1")
qtapctl=$(realpath "$2")
loadgen=$(realpath "$3")
duration=${DURATION:-5}
rate=${RATE:-100000}
top=${TOP:-20}
# shellcheck source=bench/daemon.sh
source "$(dirname "$0")/daemon.sh" profile
command -v perf >/dev/null || { echo "profile: perf is not installed (linux-perf)" >&2; exit 1; }

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Context switches of all a process's threads, voluntary (it slept: a
# wakeup) and not (it was preempted).
switches() {
	cat /proc/"$1"/task/*/status | awk '/^voluntary_ctxt/ {v += $2} /^nonvoluntary_ctxt/ {n += $2} END {print v, n}'
}

"$qtapd" --socket "$socket" >/dev/null 2>"$work/qtapd.log" &
qpid=$!
pids+=("$qpid")
for _ in $(seq 100); do "${ctl[@]}" status >/dev/null 2>&1 && break; sleep 0.1; done
id=$("${ctl[@]}" trace start --filter "exe.endsWith:/$(basename "$loadgen")")
"${ctl[@]}" trace follow "$id" --output json --summary "$work/follow.sum" >"$work/follow.json" 2>"$work/follow.err" &
fpid=$!
pids+=("$fpid")
sleep 1

stats_before=$(sysctl -n kernel.bpf_stats_enabled)
sysctl -qw kernel.bpf_stats_enabled=1
trap 'sysctl -qw kernel.bpf_stats_enabled="$stats_before"; cleanup' EXIT
read -r p0_ns p0_runs < <(probe_stats "$qpid")
q0=$(cpu_ticks "$qpid") f0=$(cpu_ticks "$fpid")
read -r qv0 qn0 < <(switches "$qpid")
read -r fv0 fn0 < <(switches "$fpid")
perf record -q -F 1999 ${PERF_CALL_GRAPH:--g} -p "$qpid,$fpid" -o "$work/perf.data" -- sleep "$((duration + 1))" 2>/dev/null &
perf_pid=$!
"$loadgen" "$duration" "$rate" >/dev/null
wait "$perf_pid"
q1=$(cpu_ticks "$qpid") f1=$(cpu_ticks "$fpid")
read -r qv1 qn1 < <(switches "$qpid")
read -r fv1 fn1 < <(switches "$fpid")
read -r p1_ns p1_runs < <(probe_stats "$qpid")
stopped=$(stop_session "$id")
wait "$fpid" 2>/dev/null || true
read -r received _ < <(follower_counts "$work/follow.sum")
hz=$(getconf CLK_TCK)

echo "## Profile: one JSON follower, loadgen at ${rate} writes/s for ${duration} s"
echo
echo "events offered, lost (session): $stopped; received by the follower: $received"
awk -v q=$((q1 - q0)) -v f=$((f1 - f0)) -v n="$received" -v hz="$hz" 'BEGIN {
	if (n == 0) { print "no events received"; exit 1 }
	printf "qtapd CPU per event: %.2f us; follower CPU per event: %.2f us (ticks over the load and drain)\n",
		q / hz / n * 1e6, f / hz / n * 1e6
}'
awk -v qv=$((qv1 - qv0)) -v qn=$((qn1 - qn0)) -v fv=$((fv1 - fv0)) -v fn=$((fn1 - fn0)) -v n="$received" 'BEGIN {
	printf "context switches per 1000 events, voluntary (it slept) + preempted: qtapd %.2f + %.2f, follower %.2f + %.2f\n",
		qv / n * 1000, qn / n * 1000, fv / n * 1000, fn / n * 1000
}'
awk -v ns=$((p1_ns - p0_ns)) -v runs=$((p1_runs - p0_runs)) -v n="$received" 'BEGIN {
	printf "kernel probes (bpf_stats, every program qtapd holds, all processes): %.0f ns per run, %.2f runs and %.2f us per event\n",
		ns / (runs ? runs : 1), runs / n, ns / n / 1e3
}'
for who in "qtapd $qpid" "follower $fpid"; do
	echo
	echo "### ${who% *}: hottest symbols (self time, all its threads)"
	echo '```'
	perf report -i "$work/perf.data" --pid "${who#* }" --no-children --sort dso,symbol \
		--stdio -g none -q --percentage relative --percent-limit 0.5 2>/dev/null |
		grep "%" | sed "s/ *- *- *$//; s/ *$//" | head -"$top"
	echo '```'
done
[[ -z ${PERF_DATA:-} ]] || cp "$work/perf.data" "$PERF_DATA"
