#!/usr/bin/env bash
# make bench, part 2: the event pipeline from kernel to followers. A load
# generator (qtap-loadgen: 64-byte writes over loopback TCP to a reader in
# the same process, or over a pipe) is selected by a session; N followers run
# `qtapctl trace follow --output json > /dev/null`. For each run: the
# syscalls the generator made, the records qtapd decoded, kernel ring
# losses, events each follower received and lost, whether every event of
# the session is accounted for (each follower's received + reported queue
# losses = the events the session had), and qtapd's CPU. After
# the load the session is stopped: followers get what is queued for them
# and the count of what they lost, and exit; the time that takes is the
# drain. Over TCP the generator itself is the ceiling at "max" (its
# syscalls and the kernel's TCP stack, on the cores it shares with qtapd
# and the followers); a pipe's calls cost a fraction of that, so the pipe
# rows load the pipeline past what it carries (the session then takes
# every fd, `fd:any`, not sockets only). The last rows have their one
# follower write the stream to a file as qtapd sends it (`--write`, the
# compact form) instead of rendering JSON.
#
# Usage: bench/pipeline.sh QTAPD QTAPCTL LOADGEN   (root)
# Knobs: DURATION (5 s), FOLLOWERS ("1 4 16"), RATES (writes/s with one
# follower, "50000 100000 200000 400000"), PIPE_RATES (writes/s with one
# follower over a pipe, 0 = as fast as it can: "500000 0"), WRITE_RATES
# (the same with a --write follower: "1000000 0"), QUEUE_LEN (65536).
# Prints a markdown section on stdout.
set -euo pipefail

qtapd=$(realpath "$1")
qtapctl=$(realpath "$2")
loadgen=$(realpath "$3")
duration=${DURATION:-5}
followers_list=${FOLLOWERS:-1 4 16}
rates=${RATES:-50000 100000 200000 400000}
pipe_rates=${PIPE_RATES-500000 0}
write_rates=${WRITE_RATES-1000000 0}
queue_len=${QUEUE_LEN:-65536}
# shellcheck source=bench/daemon.sh
source "$(dirname "$0")/daemon.sh" pipeline

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run FOLLOWERS RATE(0 = as fast as possible) [tcp|pipe [json|write]] ->
# one table row
run() {
	local nf=$1 rate=$2 transport=${3:-tcp} form=${4:-json} fds=
	[[ $transport == pipe ]] && fds=,fd:any
	"$qtapd" --socket "$socket" >/dev/null 2>"$work/qtapd.log" &
	local qpid=$!
	pids+=("$qpid")
	for _ in $(seq 100); do "${ctl[@]}" status >/dev/null 2>&1 && break; sleep 0.1; done
	local id
	id=$("${ctl[@]}" trace start --filter "exe.endsWith:/$(basename "$loadgen")$fds")
	local fpids=()
	for i in $(seq "$nf"); do
		local out=(--output json)
		[[ $form == write ]] && out=(--write "$work/f$i.qtaprec")
		rm -f "$work/f$i.sum"
		"${ctl[@]}" trace follow "$id" "${out[@]}" --queue-len "$queue_len" --summary "$work/f$i.sum" >/dev/null 2>"$work/f$i.err" &
		fpids+=($!)
	done
	sleep 1
	local rec0 ring0 cpu0 rec1 ring1 cpu1 out
	rec0=$(counter records)
	ring0=$(counter kernel_ring_full)
	cpu0=$(cpu_ticks "$qpid")
	out=$("$loadgen" "$duration" "$rate" "$transport")
	sleep 0.5 # the last records out of the ring
	rec1=$(counter records)
	ring1=$(counter kernel_ring_full)
	local t0 drain
	t0=$(date +%s.%N)
	# "OFFERED LOST", summed over the followers.
	local stopped
	stopped=$(stop_session "$id")
	# A follower that does not finish in a minute is stopped (and shows).
	local deadline=$((SECONDS + 60))
	for p in "${fpids[@]}"; do
		while kill -0 "$p" 2>/dev/null; do
			((SECONDS < deadline)) || kill -INT "$p" 2>/dev/null || true
			sleep 0.05
		done
		wait "$p" 2>/dev/null || true
	done
	drain=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
	cpu1=$(cpu_ticks "$qpid")
	kill "$qpid"
	wait "$qpid" 2>/dev/null || true
	rm -f "$work"/f*.qtaprec
	# Each follower's "EVENTS LOST LOST_IN_QUEUE SEQ_GAPS".
	local per
	per=$(for i in $(seq "$nf"); do follower_counts "$work/f$i.sum"; done)
	local writes reads secs
	writes=$(sed 's/.*writes=\([0-9]*\).*/\1/' <<<"$out")
	reads=$(sed 's/.*reads=\([0-9]*\).*/\1/' <<<"$out")
	secs=$(sed 's/.*seconds=\([0-9.]*\).*/\1/' <<<"$out")
	awk -v nf="$nf" -v rate="$rate" -v w="$writes" -v r="$reads" -v s="$secs" \
		-v rec=$((rec1 - rec0)) -v ring=$((ring1 - ring0)) -v cpu=$((cpu1 - cpu0)) \
		-v per="$per" -v drain="$drain" -v stopped="$stopped" -v over="$transport" -v form="$form" 'BEGIN {
		split(stopped, st, " "); offered = st[1]
		n = split(per, f, "\n"); ev = 0; lost = 0; accounted = 0; exact = "yes"
		for (i = 1; i <= n; i++) {
			split(f[i], x, " ")
			ev += x[1]; lost += x[2]; accounted += x[1] + x[3]
			# A loss followed by a later event is a gap in seq.
			if (x[4] > x[3]) exact = "no: more seq gaps than reported losses"
		}
		if (accounted != offered) exact = sprintf("no: %d received + queue-lost vs %d offered", accounted, offered)
		target = rate > 0 ? sprintf("%d/s", rate) : "max"
		if (over != "tcp") target = target ", " over
		if (form != "json") target = target ", --" form
		printf "| %d | %s | %.0f | %.0f | %d | %.0f | %.0f | %.1f | %s | %.0f%% |\n",
			nf, target, (w + r) / s, rec / s, ring, ev / nf, lost / nf, drain, exact, cpu / (s + drain)
	}'
}

echo "| followers | load | syscalls/s made | records/s decoded | kernel ring lost | events received per follower | lost per follower | drain s | every event accounted | qtapd CPU |"
echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"
for rate in $rates; do
	echo "bench: pipeline, 1 follower, $rate writes/s" >&2
	run 1 "$rate"
done
for nf in $followers_list; do
	echo "bench: pipeline, $nf followers, max rate" >&2
	run "$nf" 0
done
for rate in $pipe_rates; do
	echo "bench: pipeline, 1 follower, $rate writes/s over a pipe" >&2
	run 1 "$rate" pipe
done
for rate in $write_rates; do
	echo "bench: pipeline, 1 follower writing a file, $rate writes/s over a pipe" >&2
	run 1 "$rate" pipe write
done
