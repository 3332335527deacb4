#!/usr/bin/env bash
# `make run`: qtapd in --bpf-trace mode with $FILTER. Unless DEMO=0, a local
# HTTP server gets a curl request every second so the first screen shows
# real traffic. Ctrl-C stops everything.
set -euo pipefail

qtapd=$1
sudo=()
((EUID == 0)) || sudo=(sudo)

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

if [[ ${DEMO:-1} != 0 ]]; then
	port=18080
	root=$(mktemp -d)
	echo '<h1>hello from qtap</h1>' >"$root/index.html"
	python3 -m http.server "$port" --bind 127.0.0.1 --directory "$root" >/dev/null 2>&1 &
	pids+=($!)
	(
		sleep 3
		while true; do
			curl -s -o /dev/null "http://127.0.0.1:$port/" || true
			sleep 1
		done
	) &
	pids+=($!)
	printf 'make run: curl http://127.0.0.1:%s/ every second; Ctrl-C to stop\n' "$port" >&2
fi

"${sudo[@]}" "$qtapd" --bpf-trace="$FILTER" --log-level=info --log-encoding="$ENCODING"
