# Sourced by run.sh and ab.sh: the benchmarks' nginx. `nginx_start DIR
# SERVERS` writes DIR/nginx.conf (one worker running as root, no access
# log, keep-alive without a request limit, temporary files in DIR) with
# the `server` blocks SERVERS, starts it, and waits for it; `nginx_stop
# DIR` stops it. Its pid file is DIR/nginx.pid.
nginx_start() {
	mkdir -p "$1/logs"
	cat >"$1/nginx.conf" <<CONF
daemon on; master_process on; worker_processes 1; user root;
pid $1/nginx.pid; error_log $1/logs/error.log;
events { worker_connections 1024; }
http {
  access_log off; keepalive_requests 1000000;
  client_body_temp_path $1; proxy_temp_path $1; fastcgi_temp_path $1; uwsgi_temp_path $1; scgi_temp_path $1;
$2
}
CONF
	/usr/sbin/nginx -p "$1/" -c "$1/nginx.conf"
	sleep 0.5
}

nginx_stop() {
	[[ -f $1/nginx.pid ]] && kill -QUIT "$(cat "$1/nginx.pid")" 2>/dev/null || true
}
