#!/usr/bin/env bash
# A/B of qtap builds on scenario 7 of `make bench` (nginx, one worker, a
# `return 200` location; wrk -t1 -c32; a session selecting nginx and one
# JSON follower writing to a file): rounds alternate baseline (no qtapd)
# and each build, so every ratio comes from one sitting. A round counts
# only when it is accounted: the kernel records read for nginx, the events
# the session offered and the events the follower received are equal,
# with nothing lost at any stage. The table gives medians over counted
# rounds, and per event the CPU of qtapd and of the follower. The speed
# of this machine drifts from round to round, so besides the ratio of the
# medians it gives the median of each round's ratio to the baseline run
# just before it, which the drift moves less.
#
# Usage: bench/ab.sh NAME=DIR [NAME=DIR ...]   (root; each DIR holds a
#        qtapd and a qtapctl, e.g. target/release)
# Knobs: ROUNDS (6), DURATION (3 s per wrk run), CONNECTIONS (32),
# FOLLOWER (1; 0: the session has no follower, which measures the kernel
# probes and qtapd alone, and a round counts when the kernel lost nothing),
# RATE (0: as fast as nginx answers; N: about N req/s, as make bench's
# fixed-rate rows load it, RATE/100 connections each pausing 10 ms),
# SELECT (the session's process terms: "exe.endsWith:/nginx"; make bench
# uses "exe.contains:nginx"), WRK_ARGS (more of wrk's options, e.g.
# --latency as make bench gives it).
set -euo pipefail

(($# > 0)) || {
	echo "usage: $0 NAME=DIR [NAME=DIR ...]" >&2
	exit 2
}
rounds=${ROUNDS:-6}
duration=${DURATION:-3}
connections=${CONNECTIONS:-32}
follower=${FOLLOWER:-1}
rate=${RATE:-0}
port=18191
names=()
declare -A dir
for arg in "$@"; do
	name=${arg%%=*}
	dir[$name]=$(realpath "${arg#*=}")
	[[ -x ${dir[$name]}/qtapd && -x ${dir[$name]}/qtapctl ]] || {
		echo "ab: $arg: no qtapd and qtapctl there" >&2
		exit 2
	}
	names+=("$name")
done
qtapctl=${dir[${names[0]}]}/qtapctl # daemon.sh's `ctl`; each round sets its own
# shellcheck source=bench/daemon.sh
source "$(dirname "$0")/daemon.sh" ab
# shellcheck source=bench/nginx.sh
source "$(dirname "$0")/nginx.sh"
chmod 755 "$work"
qtapd_pid=
stop_all() {
	[[ -n $qtapd_pid ]] && kill "$qtapd_pid" 2>/dev/null || true
	nginx_stop "$work"
	cleanup
}
trap stop_all EXIT

nginx_start "$work" "  server { listen 127.0.0.1:$port; location = /ok { return 200 \"ok\\n\"; } }"
url=http://127.0.0.1:$port/ok

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Context switches of all of a process's threads (each a wakeup or a
# preemption).
switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {n += $2} END {print n + 0}'; }
hz=$(getconf CLK_TCK)
echo 'function delay() return 10 end' >"$work/pace.lua"
load=(-c"$connections")
((rate == 0)) || load=(-c"$((rate / 100))" -s "$work/pace.lua")
read -ra wrk_args <<<"${WRK_ARGS:-}"
rps() { wrk -t1 "${load[@]}" -d"${duration}s" "${wrk_args[@]}" "$url" | awk '/Requests\/sec/ {print $2}'; }

# One round of build $1: prints "REQ_PER_S EVENTS QTAPD_US FOLLOWER_US
# CPU_PERCENT OK SWITCHES", CPU_PERCENT being qtapd's and the follower's
# together over the wrk run, in % of one core, SWITCHES qtapd's context
# switches per 1000 events.
round() {
	local d=${dir[$1]}
	ctl=("$d/qtapctl" --socket "$socket")
	"$d/qtapd" --socket "$socket" >/dev/null 2>"$work/qtapd.log" &
	qtapd_pid=$!
	for _ in $(seq 100); do [[ -S $socket ]] && "${ctl[@]}" status >/dev/null 2>&1 && break; sleep 0.1; done
	local id fpid=$$ from
	id=$("${ctl[@]}" trace start --filter "mod:socket,${SELECT:-exe.endsWith:/nginx}")
	if ((follower)); then
		rm -f "$work/follow.sum"
		"${ctl[@]}" trace follow "$id" --output json --queue-len 65536 --summary "$work/follow.sum" >"$work/follow.json" 2>"$work/follow.err" &
		fpid=$!
		for _ in $(seq 100); do (($(followers "$id") > 0)) && break; sleep 0.05; done
	fi
	from=$(counter records)
	sleep 0.5
	local q0 f0 r q1 f1 s0 s1
	q0=$(cpu_ticks "$qtapd_pid")
	f0=$(cpu_ticks "$fpid")
	s0=$(switches "$qtapd_pid")
	r=$(rps)
	q1=$(cpu_ticks "$qtapd_pid")
	f1=$(cpu_ticks "$fpid")
	s1=$(switches "$qtapd_pid")
	((follower)) || f1=$f0
	sleep 0.3 # the last records out of the ring
	local records kernel offered lost received=0 told=0 queue_told
	records=$(($(counter records) - from))
	kernel=$(kernel_lost)
	read -r offered lost < <(stop_session "$id")
	if ((follower)); then
		wait "$fpid" 2>/dev/null || true
		read -r received told queue_told _ < <(follower_counts "$work/follow.sum")
	else
		offered=$records received=$records
	fi
	kill "$qtapd_pid"
	wait "$qtapd_pid" 2>/dev/null || true
	qtapd_pid=
	local ok=0
	((records == offered && received == offered && told == 0 && lost == 0 && kernel == 0)) && ok=1
	local figures
	figures=$(awk -v r="$r" -v n="$offered" -v q=$((q1 - q0)) -v f=$((f1 - f0)) -v hz="$hz" -v ok="$ok" -v d="$duration" -v s=$((s1 - s0)) \
		'BEGIN { printf "%s %d %.3f %.3f %.1f %d %.1f\n", r, n, n ? q / hz * 1e6 / n : 0, n ? f / hz * 1e6 / n : 0, (q + f) / hz / d * 100, ok, n ? s * 1000 / n : 0 }')
	read -r _ _ q f _ _ sw <<<"$figures"
	echo "ab: $1: $r req/s; kernel records $records, offered $offered, received $received, lost $lost (told $told, kernel $kernel); CPU per event: qtapd $q µs, follower $f µs; qtapd switches per 1k events $sw" >&2
	echo "$figures"
}

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR) print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
declare -A req ratio qtapd_us follower_us cpu_pct switches_k counted
base=()
for ((i = 1; i <= rounds; i++)); do
	b=$(rps)
	echo "ab: round $i: baseline $b req/s" >&2
	base+=("$b")
	for name in "${names[@]}"; do
		read -r r n q f c ok sw < <(round "$name")
		if ((ok)); then
			req[$name]+="$r "
			ratio[$name]+="$(awk -v r="$r" -v b="$b" 'BEGIN {print r / b}') "
			qtapd_us[$name]+="$q "
			follower_us[$name]+="$f "
			cpu_pct[$name]+="$c "
			switches_k[$name]+="$sw "
			counted[$name]=$((${counted[$name]:-0} + 1))
		fi
	done
done

base_median=$(echo "${base[*]}" | median)
echo
echo "| build | rounds accounted | req/s median | × baseline (medians) | × its round's baseline (median) | qtapd CPU per event (µs) | follower CPU per event (µs) | qtapd + follower CPU (% of one core) | qtapd context switches per 1k events |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
printf "| baseline | — | %.0f | 1.00 | 1.00 | — | — | — | — |\n" "$base_median"
failed=0
for name in "${names[@]}"; do
	c=${counted[$name]:-0}
	if ((c == 0)); then
		echo "| $name | 0 of $rounds | — | — | — | — | — | — | — |"
		failed=1
		continue
	fi
	m=$(echo "${req[$name]}" | median)
	printf "| %s | %d of %d | %.0f | %.2f | %.2f | %.2f | %.2f | %.1f | %.1f |\n" "$name" "$c" "$rounds" "$m" \
		"$(awk -v m="$m" -v b="$base_median" 'BEGIN {print m / b}')" \
		"$(echo "${ratio[$name]}" | median)" \
		"$(echo "${qtapd_us[$name]}" | median)" "$(echo "${follower_us[$name]}" | median)" \
		"$(echo "${cpu_pct[$name]}" | median)" "$(echo "${switches_k[$name]}" | median)"
	((c == rounds)) || failed=1
done
((failed == 0)) || echo "ab: some rounds were not accounted (see above); their figures are left out" >&2
exit "$failed"
