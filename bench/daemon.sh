# Sourced by pipeline.sh and soak.sh: a scratch directory named for the
# harness ($1), qtapd's socket in it, qtapctl pointed at it (`ctl`), the
# processes to stop on exit (`pids`), and `status_field KEY N`, the N-th
# word of the `qtapctl status` line that starts with KEY.
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

status_field() { # status_field 'records decoded' N
	"${ctl[@]}" status | awk -v k="$1" -v n="$2" 'index($0, k) == 1 {print $n}'
}
