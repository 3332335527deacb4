#!/usr/bin/env bash
# make probes: what the kernel side costs a traced program, apart from
# qtapd's user space and any follower. qtap-loadgen runs as fast as it can
# in ping-pong (one thread writes 64 bytes on a loopback TCP connection
# and reads them at the other end, in turn: the threaded load's contention
# for the socket's lock makes its rate swing by half between runs), in
# alternation: untraced (qtapd running, no session), with a session
# selecting another program (each of its calls runs qtap's programs, which
# look the process up and return; a data call has only its exit program),
# and with a session selecting it and no follower (the whole probe path
# and ring record; qtapd keeps its fd state but makes no events). Prints
# the round trips/s of each and their ratios to untraced, and the
# programs' own run time per run (kernel.bpf_stats_enabled, on for one
# more selected run only: counting slows them).
#
# Usage: bench/probes.sh QTAPD QTAPCTL LOADGEN   (root)
# Knobs: ROUNDS (3), DURATION (3 s).
set -euo pipefail

qtapd=$(realpath "$1")
qtapctl=$(realpath "$2")
loadgen=$(realpath "$3")
rounds=${ROUNDS:-3}
duration=${DURATION:-3}
# shellcheck source=bench/daemon.sh
source "$(dirname "$0")/daemon.sh" probes

writes_per_s() {
	"$loadgen" "$duration" ping-pong | sed -n 's/^writes=\([0-9]*\) .*/\1/p' | awk -v d="$duration" '{printf "%d", $1 / d}'
}

"$qtapd" --socket "$socket" >/dev/null 2>"$work/qtapd.log" &
qpid=$!
pids+=("$qpid")
for _ in $(seq 100); do "${ctl[@]}" status >/dev/null 2>&1 && break; sleep 0.1; done
stats_before=$(sysctl -n kernel.bpf_stats_enabled)
trap 'sysctl -qw kernel.bpf_stats_enabled="$stats_before"; cleanup' EXIT

declare -A rows
for _ in $(seq "$rounds"); do
	# qtapd detaches its tracepoints on a thread after its start and
	# after the last session stops (about 3 s here): untraced is after.
	sleep 4
	rows[untraced]+="$(writes_per_s) "
	id=$("${ctl[@]}" trace start --filter "exe.endsWith:/no-such-program")
	rows[other]+="$(writes_per_s) "
	"${ctl[@]}" trace stop "$id" >/dev/null
	id=$("${ctl[@]}" trace start --filter "exe.endsWith:/$(basename "$loadgen")")
	rows[selected]+="$(writes_per_s) "
	"${ctl[@]}" trace stop "$id" >/dev/null
done
# One more selected run, with the programs' run time counted (counting
# slows them, so the rows above are without it).
id=$("${ctl[@]}" trace start --filter "exe.endsWith:/$(basename "$loadgen")")
sysctl -qw kernel.bpf_stats_enabled=1
read -r ns0 runs0 < <(probe_stats "$qpid")
counted=$(writes_per_s)
read -r ns1 runs1 < <(probe_stats "$qpid")
sysctl -qw kernel.bpf_stats_enabled="$stats_before"
"${ctl[@]}" trace stop "$id" >/dev/null

median() { tr ' ' '\n' | grep . | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
base=$(echo "${rows[untraced]}" | median)
echo "qtap-loadgen writes/s, ${rounds} rounds of ${duration} s in alternation (medians):"
echo
echo "| scenario | writes/s | × untraced | all rounds |"
echo "| --- | ---: | ---: | --- |"
for row in "untraced:no session" "other:session selecting another program" "selected:session selecting loadgen, no follower"; do
	key=${row%%:*}
	m=$(echo "${rows[$key]}" | median)
	awk -v m="$m" -v b="$base" -v name="${row#*:}" -v all="${rows[$key]}" \
		'BEGIN {printf "| %s | %d | %.2f | %s|\n", name, m, m / b, all}'
done
echo
awk -v ns=$((ns1 - ns0)) -v runs=$((runs1 - runs0)) -v writes="$counted" -v d="$duration" 'BEGIN {
	printf "qtap programs, a selected run with kernel.bpf_stats_enabled: %.0f ns per run, %.1f runs per write (%d writes/s while counted)\n",
		ns / (runs ? runs : 1), runs / (writes * d), writes
}'
