#!/usr/bin/env bash
# Inside a test kernel (or natively): notes the kernel release and how
# many programs qtapd attaches for a session, then runs test binaries.
# Usage: vm-tests.sh OUT 'LIBTEST-ARGS' BINARY FILTER [BINARY FILTER ...]
# (FILTER `-`: the whole binary), or vm-tests.sh OUT with those arguments
# in OUT/args, one per line (a VM's: its kernel command line, which
# carries the command, holds 2048 bytes). Writes OUT/kernel, OUT/attached, one
# `passed failed binary filter` line per binary to OUT/results, each
# binary's output to OUT/<n>.out, and OUT/done at the end.
set -uo pipefail
out=$1
if (($# == 1)); then
	mapfile -t args <"$out/args"
	set -- "$out" "${args[@]}"
fi
extra=$2
shift 2
root=$(cd "$(dirname "$0")/.." && pwd)
export QTAPD_BIN=$root/target/release/qtapd QTAPCTL_BIN=$root/target/release/qtapctl CI=true
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH
uname -r >"$out/kernel"

# Programs attached while one session runs (qtapd's status line).
sock=/run/qtap-kernels/qtapd.sock
"$QTAPD_BIN" --socket "$sock" >"$out/qtapd.log" 2>&1 &
qtapd=$!
for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.2; done
"$QTAPCTL_BIN" --socket "$sock" trace start --filter 'exe:/nonexistent' >/dev/null 2>>"$out/qtapd.log"
"$QTAPCTL_BIN" --socket "$sock" status 2>>"$out/qtapd.log" |
	awk '/^programs attached/ { print $3 }' >"$out/attached"
[[ -s $out/attached ]] || echo "none (qtapd: $(tail -1 "$out/qtapd.log"))" >"$out/attached"
kill "$qtapd" 2>/dev/null
wait "$qtapd" 2>/dev/null

: >"$out/results"
n=0
while (($# >= 2)); do
	bin=$1 filter=$2
	shift 2
	n=$((n + 1))
	args=(--test-threads=1)
	[[ $filter != - ]] && args+=("$filter")
	# shellcheck disable=SC2086 # $extra holds several --skip arguments
	timeout 1800 "$bin" "${args[@]}" $extra >"$out/$n.out" 2>&1
	summary=$(grep -E '^test result:' "$out/$n.out" | tail -1)
	passed=$(sed -nE 's/.* ([0-9]+) passed.*/\1/p' <<<"$summary")
	failed=$(sed -nE 's/.* ([0-9]+) failed.*/\1/p' <<<"$summary")
	# No summary: the binary crashed or timed out; count it as a failure.
	echo "${passed:-0} ${failed:-1} $(basename "$bin") $filter" >>"$out/results"
done
touch "$out/done"
