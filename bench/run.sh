#!/usr/bin/env bash
# make bench: nginx under wrk with and without tracers, scenarios run in
# alternation (A B C … A B C …) ROUNDS times, medians and min–max spread
# printed as a markdown table and written to docs/benchmarks.md, plus the
# event pipeline throughput of one session with one follower.
#
# Usage: bench/run.sh QTAPD QTAPCTL LOADGEN   (root; make bench builds them)
# Knobs: ROUNDS (5), DURATION (5 s per wrk run), CONNECTIONS (32),
# THREADS (wrk's, 1), MICRO (0: skip the criterion benchmarks, which
# measure this tree's code, when timing other binaries); the
# pipeline part's knobs are in bench/pipeline.sh (PIPELINE_DURATION sets
# its DURATION).
set -euo pipefail

qtapd=$(realpath "$1")
qtapctl=$(realpath "$2")
loadgen=$(realpath "$3")
rounds=${ROUNDS:-5}
duration=${DURATION:-5}
connections=${CONNECTIONS:-32}
threads=${THREADS:-1}
port=18181
# shellcheck source=bench/nginx.sh
source "$(dirname "$0")/nginx.sh"
work=$(mktemp -d /tmp/qtap-bench.XXXXXX)
chmod 755 "$work"
socket=$work/qtapd.sock
ctl=("$qtapctl" --socket "$socket")
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	nginx_stop "$work"
	sleep 0.5
	rm -rf "$work"
}
trap cleanup EXIT

# nginx: one worker, a small static response, keep-alive; the same over
# HTTPS (a throwaway self-signed certificate) for scenario 5.
tls_port=18443
mkdir -p "$work/html"
printf 'hello from nginx\n' >"$work/html/index.html"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
	-keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
nginx_start "$work" "  server { listen 127.0.0.1:$port; root $work/html; location / { }
           location = /ok { return 200 \"ok\\n\"; } }
  server { listen 127.0.0.1:$tls_port ssl; ssl_certificate $work/cert.pem; ssl_certificate_key $work/key.pem;
           root $work/html; location / { } }"
worker=$(pgrep -P "$(cat "$work/nginx.pid")" | head -1)

# A Go HTTPS server (net/http, crypto/tls) for scenarios 8: the same
# certificate and a 17-byte answer; GOMAXPROCS=1, as nginx's one worker.
go_port=18444
mkdir -p "$work/goserver"
cat >"$work/goserver/main.go" <<'GO'
package main

import (
	"net/http"
	"os"
)

func main() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("hello from go!!!\n"))
	})
	panic(http.ListenAndServeTLS(os.Args[1], os.Args[2], os.Args[3], nil))
}
GO
(cd "$work/goserver" && GOCACHE=$work/goserver/cache GO111MODULE=off go build -o qtap-bench-goserver main.go)
GOMAXPROCS=1 "$work/goserver/qtap-bench-goserver" "127.0.0.1:$go_port" "$work/cert.pem" "$work/key.pem" 2>/dev/null &
pids+=($!)
for _ in $(seq 50); do curl -sk "https://127.0.0.1:$go_port/" >/dev/null && break; sleep 0.1; done

start_qtapd() {
	"$qtapd" --socket "$socket" >/dev/null 2>"$work/qtapd.log" &
	qtapd_pid=$!
	pids+=("$qtapd_pid")
	for _ in $(seq 100); do [[ -S $socket ]] && "${ctl[@]}" status >/dev/null 2>&1 && return; sleep 0.1; done
	echo "qtapd did not start: $(cat "$work/qtapd.log")" >&2
	exit 1
}
stop_pid() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
# How long qtapd's detach of its tracepoints (after its start, and after
# the last session stops) takes here, with room to spare.
detach_wait=4
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# shellcheck source=bench/counters.sh
source "$(dirname "$0")/counters.sh"

# One wrk run: prints "req_per_s p50_ms p99_ms". With a rate: as many
# connections as that needs at a 10 ms pause between a response and the
# next request (wrk's delay(); closed-loop, the substitute for wrk2's
# fixed-rate load, which Debian lacks).
load() {
	local rate=${1:-0} args=(-c"$connections")
	if ((rate > 0)); then
		args=(-c"$((rate / 100))" -s "$work/pace.lua")
	fi
	wrk -t"$threads" "${args[@]}" -d"${duration}s" --latency "${url:-http://127.0.0.1:$port/}" >"$work/wrk.out"
	local rps p50 p99
	rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.out")
	p50=$(awk '$1 == "50%" {print $2}' "$work/wrk.out")
	p99=$(awk '$1 == "99%" {print $2}' "$work/wrk.out")
	echo "$rps $(to_ms "$p50") $(to_ms "$p99")"
}
to_ms() { # wrk prints 1.23ms / 456.00us / 1.10s
	awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /[^m]s$/) n *= 1000; printf "%.3f", n }'
}

echo 'function delay() return 10 end' >"$work/pace.lua"

# A session selecting nginx (with more modules given as $1; another
# program's name as $2), and a JSON follower writing to a file: sets id,
# follower_pid, and records_from, the kernel records read before the
# follower was there. A session without a follower makes no events, so a
# record read then (a background call of the server, such as the Go
# runtime's) is one no follower could be offered. Taken as soon as qtapd
# lists the follower: a record read between its attach and this count
# (tens of ms) would be offered and not counted.
follow_nginx() {
	id=$("${ctl[@]}" trace start --filter "mod:socket,${1:-}exe.contains:${2:-nginx}")
	rm -f "$work/follow.sum"
	"${ctl[@]}" trace follow "$id" --output json --queue-len 65536 --summary "$work/follow.sum" >"$work/follow.json" 2>"$work/follow.err" &
	follower_pid=$!
	for _ in $(seq 100); do (($(followers "$id") > 0)) && break; sleep 0.05; done
	records_from=$(counter records)
	sleep 0.5
}

# After a follower scenario's load: stops the session, waits for the
# follower to finish its stream, and checks that it received every event
# the session offered it. Appends "offered received lost kernel_lost ok"
# to accounting[$1]; ok is 0 when the follower received fewer events than
# were offered without being told of the difference (a ratio bought by
# losing events), then the run fails at the end.
account() {
	local s=$1 records offered lost received told kernel
	sleep 0.3 # the last records out of the ring (drained every 5 ms)
	records=$(($(counter records) - records_from))
	kernel=$(kernel_lost)
	read -r offered lost < <(stop_session "$id")
	wait "$follower_pid" 2>/dev/null || true
	local queue_told
	read -r received told queue_told _ < <(follower_counts "$work/follow.sum")
	local ok=1
	# A mod:socket/openssl session selecting nginx alone turns each kernel
	# record into one event: what the kernel produced is what is offered.
	((records == offered && received + queue_told == offered && queue_told == lost)) || ok=0
	echo "bench: $s: kernel records $records, offered $offered, received $received, told lost $told, kernel lost $kernel" >&2
	accounting[$s]+="$records $offered $received $lost $kernel $ok;"
}

url_static="http://127.0.0.1:$port/"
url_ok="http://127.0.0.1:$port/ok"
# The libssl nginx maps (wrk maps it too): scenario 5c's uprobes.
libssl=$(ldd /usr/sbin/nginx | awk '/libssl/ {print $3}')
scenarios=(baseline idle other quiet nginx ok_base ok_quiet ok_nginx https_base https https_other go_base go_tls strace)
if command -v bpftrace >/dev/null; then
	[[ -n $libssl ]] && scenarios+=(https_count)
	scenarios+=(bpftrace bpfcount)
fi
fixed_rates=(1000 10000)
for r in "${fixed_rates[@]}"; do scenarios+=("base@$r" "qtap@$r"); done
declare -A rps p50 p99 extra accounting

# nginx's syscalls as bpftrace probes (enter and exit of each).
nginx_calls="read write writev recvfrom"
bpftrace_probes() {
	local c out=()
	for c in $nginx_calls; do out+=("tracepoint:syscalls:sys_$1_$c"); done
	local IFS=,
	echo "${out[*]}"
}

# One load under a bpftrace script (given 3 s to attach). bpftrace is
# stopped as its manual says, with SIGINT; it once ignored a SIGTERM here
# and hung the run, so after 5 s it is killed.
under_bpftrace() {
	bpftrace -e "$1" >"$work/bpftrace.out" 2>&1 &
	local tracer=$!
	sleep 3
	load
	kill -INT "$tracer" 2>/dev/null || true
	for _ in $(seq 50); do kill -0 "$tracer" 2>/dev/null || break; sleep 0.1; done
	kill -KILL "$tracer" 2>/dev/null || true
	wait "$tracer" 2>/dev/null || true
}

run_scenario() {
	local s=$1 aux=() result url=$url_static
	[[ $s == ok_* ]] && url=$url_ok
	case $s in
	baseline | ok_base) result=$(load) ;;
	idle)
		start_qtapd
		# qtapd attaches every tracepoint at start (so a kernel that
		# refuses one fails it there), then detaches them on a thread,
		# which takes about 3 s; idle is what comes after.
		sleep "$detach_wait"
		result=$(load)
		stop_pid "$qtapd_pid"
		;;
	other)
		start_qtapd
		"${ctl[@]}" trace start --filter 'exe.contains:qtap-bench-nothing' >/dev/null
		result=$(load)
		stop_pid "$qtapd_pid"
		;;
	quiet | ok_quiet)
		start_qtapd
		"${ctl[@]}" trace start --filter 'mod:socket,exe.contains:nginx' >/dev/null
		sleep 0.5
		result=$(load)
		stop_pid "$qtapd_pid"
		;;
	https_base) result=$(url="https://127.0.0.1:$tls_port/" load) ;;
	https)
		start_qtapd
		follow_nginx "mod:openssl,"
		result=$(url="https://127.0.0.1:$tls_port/" load)
		account "$s"
		stop_pid "$qtapd_pid"
		;;
	https_other)
		# The system's libssl is probed for every process that maps it
		# while any session takes TLS records, whoever it selects.
		start_qtapd
		"${ctl[@]}" trace start --filter 'mod:socket,mod:openssl,exe.contains:qtap-bench-nothing' >/dev/null
		sleep 1
		result=$(url="https://127.0.0.1:$tls_port/" load)
		stop_pid "$qtapd_pid"
		;;
	https_count) result=$(url="https://127.0.0.1:$tls_port/" under_bpftrace "uprobe:$libssl:SSL_read,uprobe:$libssl:SSL_write { @[probe] = count(); }") ;;
	go_base) result=$(url="https://127.0.0.1:$go_port/" load) ;;
	go_tls)
		start_qtapd
		follow_nginx "mod:gotls," qtap-bench-goserver
		result=$(url="https://127.0.0.1:$go_port/" load)
		account "$s"
		stop_pid "$qtapd_pid"
		;;
	base@*) result=$(load "${s#*@}") ;;
	qtap@*)
		start_qtapd
		follow_nginx
		local t0
		t0=$(($(cpu_ticks "$qtapd_pid") + $(cpu_ticks "$follower_pid")))
		result=$(load "${s#*@}")
		extra[$s]+="$(($(cpu_ticks "$qtapd_pid") + $(cpu_ticks "$follower_pid") - t0)) "
		account "$s"
		stop_pid "$qtapd_pid"
		;;
	nginx | ok_nginx)
		start_qtapd
		follow_nginx
		local before after
		before=$(cpu_ticks "$qtapd_pid")
		result=$(load)
		after=$(cpu_ticks "$qtapd_pid")
		local rss
		rss=$(awk '/VmHWM/ {print $2}' "/proc/$qtapd_pid/status")
		account "$s"
		local records
		records=$(counter records)
		extra[$s]+="records=$records cpu_ticks=$((after - before)) peak_rss_kib=$rss;"
		stop_pid "$qtapd_pid"
		;;
	strace)
		strace -f -qq -e trace=network,read,write,writev,close -p "$worker" -o "$work/strace.out" &
		aux+=($!)
		sleep 0.5
		result=$(load)
		stop_pid "${aux[0]}"
		;;
	bpftrace) result=$(under_bpftrace "$(bpftrace_probes exit) /pid == $worker/ { printf(\"%s %d\\n\", probe, args->ret); }") ;;
	bpfcount) result=$(under_bpftrace "$(bpftrace_probes enter),$(bpftrace_probes exit) /pid == $worker/ { @[probe] = count(); }") ;;
	esac
	read -r r a b <<<"$result"
	rps[$s]+="$r "
	p50[$s]+="$a "
	p99[$s]+="$b "
}

for round in $(seq "$rounds"); do
	for s in "${scenarios[@]}"; do
		echo "bench: round $round/$rounds: $s" >&2
		run_scenario "$s"
	done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
minmax() { tr ' ' '\n' | grep -v '^$' | sort -g | awk 'NR == 1 {lo=$1} {hi=$1} END {printf "%s–%s", lo, hi}'; }
# per_round S AGAINST: the median over rounds of S's req/s over AGAINST's
# in the same round, which a drift between rounds moves less than the
# ratio of the two medians does.
per_round() {
	paste -d' ' <(echo "${rps[$1]}" | tr ' ' '\n' | grep -v '^$') <(echo "${rps[$2]}" | tr ' ' '\n' | grep -v '^$') |
		awk '{print $1 / $2}' | median
}

declare -A label=(
	[baseline]="1. baseline (no qtapd)"
	[idle]="2. qtapd running, no session"
	[other]="3. session selecting another program"
	[quiet]="4q. session selecting nginx, no follower"
	[nginx]="4. session selecting nginx, one json follower"
	[ok_base]="7a. \`return 200\` baseline (no qtapd); the × columns of 7a–7 are against it"
	[ok_quiet]="7q. \`return 200\`, session selecting nginx, no follower"
	[ok_nginx]="7. \`return 200\`, session selecting nginx, one json follower"
	[https_base]="5a. HTTPS baseline (no qtapd); the × columns of 5a–5c are against it"
	[https]="5. HTTPS, session with mod:socket,mod:openssl selecting nginx, one json follower"
	[https_other]="5o. HTTPS, session with mod:socket,mod:openssl selecting another program, no follower"
	[https_count]="5c. bpftrace counting calls of SSL_read and SSL_write in the libssl nginx and wrk map (the cost of these uprobes alone)"
	[go_base]="8a. HTTPS Go server (net/http, GOMAXPROCS=1; no qtapd); the × columns of 8a and 8 are against it"
	[go_tls]="8. HTTPS Go server, session with mod:socket,mod:gotls selecting it, one json follower"
	[strace]="6a. strace -f -p <worker> to a file"
	[bpftrace]="6b. bpftrace printing each exit of nginx's $nginx_calls"
	[bpfcount]="6c. bpftrace counting enter and exit of nginx's $nginx_calls in a map (the cost of probes alone)"
)
# Per follower scenario, summed over rounds: the kernel's records for
# nginx, the events the session offered its follower, what the follower
# received, queue and kernel losses, and whether every round accounted
# for every event.
events_of() {
	echo "${accounting[$1]:-}" | tr ';' '\n' | grep -v '^$' | awk '
		{ rec += $1; o += $2; r += $3; l += $4; k += $5; if (!$6) bad++ }
		END { if (NR) printf "%d | %d | %d | %d | %d | %s", rec, o, r, l, k, bad ? "**NO**" : (l + k ? "yes, losses told" : "yes, none lost"); else printf "| | | | |" }'
}
failed=0
for s in "${!accounting[@]}"; do
	[[ ${accounting[$s]} == *" 0;"* ]] && failed=1
	true
done
table=$(
	echo "| scenario | req/s (median) | min–max | × baseline | × its round's baseline | p50 ms (× base) | p99 ms (× base) | kernel records | events offered | received | lost in queue | lost in kernel | every event accounted |"
	echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
	for s in "${scenarios[@]}"; do
		[[ $s == *@* ]] && continue
		r=$(echo "${rps[$s]}" | median)
		a=$(echo "${p50[$s]}" | median)
		b=$(echo "${p99[$s]}" | median)
		against=baseline
		[[ $s == https* ]] && against=https_base
		[[ $s == ok_* ]] && against=ok_base
		[[ $s == go_* ]] && against=go_base
		awk -v l="${label[$s]}" -v r="$r" -v mm="$(echo "${rps[$s]}" | minmax)" \
			-v base="$(echo "${rps[$against]}" | median)" -v a="$a" -v b="$b" \
			-v ba="$(echo "${p50[$against]}" | median)" -v bb="$(echo "${p99[$against]}" | median)" \
			-v ev="$(events_of "$s")" -v pr="$(per_round "$s" "$against")" \
			'BEGIN { printf "| %s | %.0f | %s | %.2f | %.2f | %.3f (%.2f) | %.3f (%.2f) | %s |\n", l, r, mm, r / base, pr, a, a / ba, b, b / bb, ev }'
	done
)

# Fixed rates: the traced run against the untraced one at the same rate,
# and qtapd's plus the follower's CPU as a share of one core.
fixed=$(
	echo "| target req/s | untraced req/s | traced req/s | p50 ms untraced → traced | p99 ms untraced → traced | qtapd + follower CPU (% of one core) |"
	echo "| ---: | ---: | ---: | ---: | ---: | ---: |"
	for r in "${fixed_rates[@]}"; do
		b="base@$r" q="qtap@$r"
		cpu=$(echo "${extra[$q]}" | median)
		awk -v r="$r" -v br="$(echo "${rps[$b]}" | median)" -v qr="$(echo "${rps[$q]}" | median)" \
			-v b50="$(echo "${p50[$b]}" | median)" -v q50="$(echo "${p50[$q]}" | median)" \
			-v b99="$(echo "${p99[$b]}" | median)" -v q99="$(echo "${p99[$q]}" | median)" \
			-v cpu="$cpu" -v d="$duration" \
			'BEGIN { printf "| %d | %.0f | %.0f | %.3f → %.3f | %.3f → %.3f | %.1f%% |\n", r, br, qr, b50, q50, b99, q99, cpu / d }'
	done
)

# qtapd's own cost in scenario 4, per 1k events: CPU ticks are 10 ms.
cost_of() {
	echo "${extra[$1]}" | tr ';' '\n' | grep -v '^$' | awk -v name="$2" '
	{ for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] += kv[2] } n++ }
	END { printf "qtapd in scenario %s (sum over %d rounds): %d kernel records decoded, %.2f ms CPU (user+sys) per 1k records, peak RSS %d KiB (mean)", name, n, v["records"], v["cpu_ticks"] * 10 / (v["records"] / 1000), v["peak_rss_kib"] / n }'
}
cost="$(cost_of nginx 4); $(cost_of ok_nginx 7)"

# Criterion micro-benchmarks of the per-event hot path (qtapd/benches,
# qtapctl/benches): one row per benchmark, the median estimate.
micro="(not run: MICRO=0)"
((${MICRO:-1})) && echo "bench: criterion micro-benchmarks" >&2 && micro=$(
	echo "| per event | median time | events/s on one core |"
	echo "| --- | ---: | ---: |"
	(cd "$(dirname "$0")/.." && cargo bench --locked -p qtapd -p qtapctl \
		--bench hot_path --bench render -- --warm-up-time 1 --measurement-time 3 2>/dev/null) |
		awk '/^per event\// { sub(/^per event\//, ""); name = $0; sub(/ +time:.*/, "", name); taken = 0 }
			/time:/ && !taken { taken = 1; sub(/.*time: +\[/, ""); split($0, t, " "); v = t[3]; u = t[4]
				ns = v * (u == "µs" ? 1000 : u == "ms" ? 1e6 : 1)
				printf "| %s | %s %s | %.0f |\n", name, v, u, 1e9 / ns }'
)

machine="$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), kernel $(uname -r), nginx $(/usr/sbin/nginx -v 2>&1 | sed 's/.*\///')"
report=$(
	cat <<MD
# qtap benchmarks

Machine: $machine. Measured $(date -u +%Y-%m-%d).
Reproduce: \`sudo make bench\` (ROUNDS=$rounds, DURATION=${duration}s, wrk -t$threads -c$connections, keep-alive, one nginx worker, a 17-byte static file; scenarios 7 a \`return 200\` location, no file I/O).
Scenarios run in alternation, $rounds rounds; figures are medians, min–max is the spread of req/s. "× baseline" divides two medians; "× its round's baseline" is the median of each round's ratio to that round's baseline, which a drift of the machine between rounds moves less.

$table

$cost.

The TLS rows are bound by uprobes, not by qtap's pipeline. A uprobe on a
file fires in every process that maps it: while any session takes TLS
records, each \`SSL_read\` and \`SSL_write\` of every process using the
system's libssl traps into the kernel, wrk's as well as nginx's, whoever
the session selects (5o). Debian's libssl begins both functions with
\`sub \$0x18,%rsp\`, an instruction the kernel cannot emulate, so each
trap also single-steps it out of line; 5c is that price paid alone, by a
program that counts the calls and does nothing else.

## Fixed rate

wrk with a 10 ms pause between a response and the next request on each of
rate/100 connections (closed-loop: the substitute for wrk2, which Debian
lacks), untraced and traced (scenario 4's session and follower) in the
same rounds; medians over $rounds rounds.

$fixed

## Per-event costs (criterion)

$micro

## Event pipeline

$(DURATION=${PIPELINE_DURATION:-5} "$(dirname "$0")/pipeline.sh" "$qtapd" "$qtapctl" "$loadgen")

Reproduce: \`sudo make bench\`. qtap-loadgen (tests/src/bin) makes 64-byte
writes over loopback TCP to a reader in the same process, at a fixed rate or
as fast as it can; it shares the two cores with qtapd and the followers.
Over TCP, "max" is the generator's own ceiling (qtapd's CPU says how much
of a core the pipeline used); the rows marked "pipe" write over a pipe,
whose calls cost a fraction of TCP's, with the session taking every fd
(\`fd:any\`): they load the pipeline past what it carries. The rows marked
"--write" have their follower write the stream to a file as qtapd sends it
(\`qtapctl trace follow --write\`, the compact form) instead of printing
JSON to /dev/null.
"Every event accounted": each follower's events received plus the queue
losses qtapd reported to it equal the events the session offered it.

## Kernel probes

$("$(dirname "$0")/probes.sh" "$qtapd" "$qtapctl" "$loadgen")

Reproduce: \`sudo make bench\` (bench/probes.sh). The same loadgen in
ping-pong (one thread writes 64 bytes on a loopback connection and reads
them at the other end, in turn), as fast as it can, with no follower:
what the kernel side costs the traced program itself. "Another program"
is the price every process pays while any session runs (each of its
calls in the traced families runs qtap's programs, which look the
process up and return: an exit program for a data call, an enter and an
exit for the others); "selected" adds the whole probe path and its ring
records.

$(cat "$(dirname "$0")/history.md")
MD
)
echo "$report"
echo "$report" >"$(dirname "$0")/../docs/benchmarks.md"
if ((failed)); then
	echo "bench: a follower received fewer events than were offered to it without being told (see the table)" >&2
	exit 1
fi
