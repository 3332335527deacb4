#!/usr/bin/env bash
# make probe-profile: where a traced program's time goes inside qtap's
# kernel programs. nginx (one worker, a `return 200` location, as in
# scenario 7 of make bench) runs under wrk with a session selecting it
# and no follower, while `perf record -a -g` samples the machine. Of the
# worker's samples, prints the share spent under `syscall_exit_work` (the
# syscall exit tracepoints: the kernel's tracepoint and perf plumbing,
# qtap's programs and the helpers they call) and the functions those
# samples were in (self time), so a change to the programs can be weighed
# against the plumbing no program can shed. Run it on two builds to
# compare them.
#
# Usage: bench/probe-profile.sh QTAPD QTAPCTL   (root)
# Knobs: DURATION (3 s of wrk), TOP (25 functions), PERF_DATA (a path to
# keep the samples at).
set -euo pipefail

qtapd=$(realpath "$1")
qtapctl=$(realpath "$2")
duration=${DURATION:-3}
top=${TOP:-25}
# shellcheck source=bench/daemon.sh
source "$(dirname "$0")/daemon.sh" probe-profile
# shellcheck source=bench/nginx.sh
source "$(dirname "$0")/nginx.sh"
chmod 755 "$work"
trap 'nginx_stop "$work"; cleanup' EXIT
port=18192
nginx_start "$work" "  server { listen 127.0.0.1:$port; location = /ok { return 200 \"ok\\n\"; } }"

"$qtapd" --socket "$socket" >/dev/null 2>"$work/qtapd.log" &
pids+=($!)
for _ in $(seq 100); do "${ctl[@]}" status >/dev/null 2>&1 && break; sleep 0.1; done
# qtapd detaches the tracepoints no session needs on a thread after its
# start (about 3 s here).
sleep 4
"${ctl[@]}" trace start --filter "mod:socket,exe.endsWith:/nginx" >/dev/null
sleep 0.5
data=${PERF_DATA:-$work/perf.data}
perf record -q -a -g -o "$data" -- wrk -t1 -c32 -d"${duration}s" "http://127.0.0.1:$port/ok" |
	awk '/Requests\/sec/ {print "nginx under the session: " $2 " req/s"}'

# perf script prints each sample as a header line, then its stack, leaf
# first, one frame a line ("ADDRESS SYMBOL+OFFSET (DSO)"), then a blank.
# Prints "SAMPLES HITS", then "COUNT<tab>FUNCTION" per function.
perf script -i "$data" --comm nginx 2>/dev/null | awk '
	function flush() {
		if (n == 0) return
		samples++
		if (under) {
			hits++
			leaf = frame[1]
			# A program is named bpf_prog_<tag>_<name>: keep the name.
			sub(/^bpf_prog_[0-9a-f]+_/, "bpf program ", leaf)
			self[leaf]++
		}
		n = 0
		under = 0
	}
	/^$/ || /^[^ \t]/ { flush(); next }
	{
		sym = $2
		sub(/\+0x[0-9a-f]+$/, "", sym)
		frame[++n] = sym
		if (sym == "syscall_exit_work") under = 1
	}
	END {
		flush()
		print samples + 0, hits + 0
		for (s in self) printf "%d\t%s\n", self[s], s
	}' >"$work/counts.txt"
read -r samples hits <"$work/counts.txt"
((samples > 0)) || {
	echo "probe-profile: no samples of nginx" >&2
	exit 1
}
awk -v s="$samples" -v h="$hits" 'BEGIN {printf "nginx worker: %d samples, %d (%.1f %%) under syscall_exit_work\n\n", s, h, 100 * h / s}'
echo "| function (self time, under syscall_exit_work) | samples | share of those |"
echo "| --- | ---: | ---: |"
tail -n +2 "$work/counts.txt" | sort -rn | head -"$top" |
	awk -F'\t' -v h="$hits" '{printf "| %s | %d | %.1f %% |\n", $2, $1, 100 * $1 / h}'
