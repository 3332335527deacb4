# Sourced by pipeline.sh, soak.sh, profile.sh and probes.sh: a scratch
# directory named for the harness ($1), qtapd's socket in it, qtapctl
# pointed at it (`ctl`), the processes to stop on exit (`pids`), and the
# typed counters of counters.sh.
work=$(mktemp -d "/tmp/qtap-$1.XXXXXX")
socket=$work/qtapd.sock
ctl=("$qtapctl" --socket "$socket")
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	sleep 0.3
	rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=bench/counters.sh
source "$(dirname "${BASH_SOURCE[0]}")/counters.sh"
