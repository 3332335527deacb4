# Sourced by the bench scripts: qtapd's counters as typed values, read
# from `qtapctl status --output json` and `qtapctl trace stop --output
# json`, and a follower's from its `--summary` file, never from the lines
# printed for people. Needs `ctl` (qtapctl
# with its --socket).

# counter NAME: one of the daemon's counters (records, kernel_ring_full,
# pending_full, conns_full, procs_full, tls_full, malformed,
# follower_queue_full).
counter() {
	"${ctl[@]}" status --output json |
		python3 -c 'import json, sys; print(json.load(sys.stdin)["counters"][sys.argv[1]])' "$1"
}

# kernel_lost: what the kernel could not record (ring full, tables full).
kernel_lost() {
	"${ctl[@]}" status --output json | python3 -c '
import json, sys
c = json.load(sys.stdin)["counters"]
print(sum(c[k] for k in ("kernel_ring_full", "pending_full", "conns_full", "procs_full", "tls_full")))'
}

# stop_session ID: stops the session and prints "OFFERED LOST": the events
# it offered its followers (summed over them) and those lost in their
# queues.
stop_session() {
	"${ctl[@]}" trace stop "$1" --output json | python3 -c '
import json, sys
s = json.load(sys.stdin)
print(s["events_delivered"] + s["events_lost"], s["events_lost"])'
}

# probe_stats PID: the run time and runs of every BPF program qtapd (PID)
# holds, summed ("NS RUNS"; they count while kernel.bpf_stats_enabled is
# 1).
probe_stats() {
	cat /proc/"$1"/fdinfo/* 2>/dev/null |
		awk '/^run_time_ns:/ {ns += $2} /^run_cnt:/ {n += $2} END {printf "%d %d\n", ns, n}'
}

# followers ID: the followers session ID has now.
followers() {
	"${ctl[@]}" trace list --output json | python3 -c '
import json, sys
print(sum(s["followers"] for s in map(json.loads, sys.stdin) if s["id"] == sys.argv[1]))' "$1"
}

# follower_counts FILE: what a follower run with `--summary FILE` received
# ("EVENTS LOST LOST_IN_QUEUE SEQ_GAPS"); all 0 when it wrote none.
follower_counts() {
	python3 -c '
import json, sys
try:
    s = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    s = {}
print(*(s.get(k, 0) for k in ("events", "lost", "lost_in_queue", "seq_gaps")))' "$1"
}
