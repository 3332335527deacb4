#!/usr/bin/env bash
# `make run`: qtapd in --bpf-trace mode with $FILTER. Unless DEMO=0, a local
# HTTP server and a local HTTPS server (openssl s_server, with a throwaway
# self-signed certificate) each get a curl request every second so the first
# screen shows real traffic, plain and TLS. Ctrl-C stops everything.
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
	tls_port=18443
	openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
		-keyout "$root/key.pem" -out "$root/cert.pem" 2>/dev/null
	(cd "$root" && exec openssl s_server -WWW -quiet -accept "$tls_port" \
		-cert cert.pem -key key.pem >/dev/null 2>&1) &
	pids+=($!)
	(
		sleep 3
		while true; do
			curl -s -o /dev/null "http://127.0.0.1:$port/" || true
			curl -s -k -o /dev/null "https://127.0.0.1:$tls_port/index.html" || true
			sleep 1
		done
	) &
	pids+=($!)
	printf 'make run: curl http://127.0.0.1:%s/ and https://127.0.0.1:%s/ every second; Ctrl-C to stop\n' "$port" "$tls_port" >&2
fi

"${sudo[@]}" "$qtapd" --bpf-trace="$FILTER" --log-level=info --log-encoding="$ENCODING"
