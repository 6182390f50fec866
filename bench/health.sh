#!/usr/bin/env bash
# /readyz throughput and latency under wrk (64 connections), against nginx returning a static 200
# on the same machine in the same run; then the same with a dependency check that never answers.
# Also the guard's resident memory under that load. Loopback only.
# usage: bench/health.sh [SECONDS]      needs: wrk nginx curl bc (Debian packages)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
for tool in wrk nginx; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing: apt-get install -y wrk nginx-light" >&2; exit 1; }
done
cargo build --release --locked --bin agent-guard >&2
work=$(mktemp -d)
cleanup() { [[ -n "${ng:-}" ]] && kill "$ng" 2>/dev/null; [[ -n "${guard:-}" ]] && kill "$guard" 2>/dev/null; [[ -n "${hang:-}" ]] && kill "$hang" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# nginx: a static 200 on /readyz, as many workers as cores (its default).
ng_port=$(free_port)
mkdir -p "$work/nginx"
cat > "$work/nginx.conf" <<NGINX
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/nginx; proxy_temp_path $work/nginx; fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx; scgi_temp_path $work/nginx;
  server { listen 127.0.0.1:$ng_port; location / { return 200 "ok\n"; } }
}
NGINX
nginx -c "$work/nginx.conf" -g 'daemon off;' &
ng=$!

# A dependency that accepts connections and never answers.
hang_port=$(free_port)
python3 -c "import socket,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1',$hang_port)); s.listen(512); time.sleep(3600)" &
hang=$!

start_guard() {
  g_port=$(free_port)
  AGENT_GUARD_IMDS=off target/release/agent-guard --socket "$work/g.sock" --health-listen "127.0.0.1:$g_port" \
    --check-interval 1s --check-timeout 10s "$@" -- sleep 3600 2>"$work/guard.log" &
  guard=$!
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$g_port/livez" 2>/dev/null && break; sleep 0.05; done
}

# wrk's summary: requests/s and p99 latency (ms).
measure() {
  local out
  out=$(wrk -t2 -c64 -d"${secs}s" --latency "$1")
  local rps p99
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}' <<<"$out")
  echo "$rps $p99"
}
rss_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }

read -r ng_rps ng_p99 < <(measure "http://127.0.0.1:$ng_port/readyz")
start_guard
read -r g_rps g_p99 < <(measure "http://127.0.0.1:$g_port/readyz")
g_rss=$(rss_kib "$guard"); kill "$guard"; wait "$guard" 2>/dev/null || true; guard=
start_guard --check "hang=http://127.0.0.1:$hang_port/"
sleep 2  # a probe is now always in flight, waiting on the dependency
read -r h_rps h_p99 < <(measure "http://127.0.0.1:$g_port/readyz")
h_rss=$(rss_kib "$guard")

echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date +%F); wrk -t2 -c64 -d${secs}s, loopback."
echo
echo "| server | requests/s | p99 (ms) | vs nginx | peak RSS (KiB) |"
echo "|---|---|---|---|---|"
printf '| nginx, static 200 | %.0f | %.2f | 1.00× | – |\n' "$ng_rps" "$ng_p99"
printf '| agent-guard /readyz | %.0f | %.2f | %.2f× | %s |\n' "$g_rps" "$g_p99" "$(echo "$g_rps / $ng_rps" | bc -l)" "$g_rss"
printf '| agent-guard /readyz, a dependency that never answers | %.0f | %.2f | %.2f× | %s |\n' "$h_rps" "$h_p99" "$(echo "$h_rps / $ng_rps" | bc -l)" "$h_rss"
echo
printf 'Floors: rate ≥ 0.5× nginx (%.2f×); p99 with the hanging dependency ≤ 2× p99 without (%.2f×); RSS ≤ 16 MiB (%.1f MiB).\n' \
  "$(echo "$g_rps / $ng_rps" | bc -l)" "$(echo "$h_p99 / $g_p99" | bc -l)" "$(echo "$h_rss / 1024" | bc -l)"
