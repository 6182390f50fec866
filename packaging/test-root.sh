#!/usr/bin/env bash
# The static binary as PID 1 in an empty root, as in a scratch container: a root holding only
# busybox (from Debian's busybox-static) as the agent, /etc/hosts and the binary; no libc, no NSS
# modules. In a network namespace of its own (loopback only), each run is `unshare --pid` +
# `chroot`, so the guard is PID 1 there. Checks that it passes exit statuses on, reaps an orphan,
# passes an HTTP check by host name (with the CA bundle a scratch image must be given), and
# completes a termination lifecycle hook against the simulators (examples/sim_world.rs) reached by
# host name: once through the root's /etc/hosts with no nsswitch.conf, once through DNS (dnsmasq
# on 127.0.0.1:53, the name in DNS only) with an nsswitch.conf naming an NSS module that kills
# whoever loads it (a static glibc would load it; the binary must not: packaging/static-nss.c).
# Prints `ok`/`FAIL` lines and a total.
#
# usage: packaging/test-root.sh BINARY SIM_WORLD [BASE]
#   BINARY     the static agent-guard
#   SIM_WORLD  the built example (cargo build --locked --example sim_world)
#   BASE       start from this root filesystem instead of an empty one (a debootstrap of another
#              distribution, say); it is changed in place: /usr/local/bin/agent-guard, /etc/hosts,
#              /etc/resolv.conf, /etc/nsswitch.conf, /etc/ssl/certs, lib/MULTIARCH/libnss_bogus.so.2
# needs: root, unshare and mount (util-linux), chroot, busybox-static, dnsmasq (dnsmasq-base), cc
set -uo pipefail

if [[ -z ${AGENT_GUARD_TEST_NETNS:-} ]]; then
  [[ $# -ge 2 ]] || { sed -n '13,19p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
  [[ $(id -u) == 0 ]] || { echo "test-root.sh: needs root (unshare, chroot, mount)" >&2; exit 2; }
  for tool in unshare chroot mount dnsmasq; do
    command -v "$tool" >/dev/null || { echo "test-root.sh: $tool is missing" >&2; exit 2; }
  done
  [[ -x /bin/busybox ]] && file -b /bin/busybox | grep -q 'statically linked' ||
    { echo "test-root.sh: needs a static /bin/busybox (apt-get install busybox-static)" >&2; exit 2; }
  # Everything below runs in a network namespace of its own: only a loopback, nothing leaves.
  exec env AGENT_GUARD_TEST_NETNS=1 unshare --net -- "$0" "$@"
fi

binary=$(realpath "$1") sim_world=$(realpath "$2") base=${3:-}
passed=0 failed=0
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
ok() { echo "ok   $*"; passed=$((passed + 1)); }
bad() { echo "FAIL $*"; failed=$((failed + 1)); }
show() { sed 's/^/     /' "$@"; }

/bin/busybox ip link set lo up

# The root: busybox and its applets, the binary, /etc/hosts; nothing else.
label="an empty root"
if [[ -n $base ]]; then
  root=$(realpath "$base") label="the root $base"
else
  root=$work/root
  mkdir -p "$root/bin"
  cp /bin/busybox "$root/bin/busybox"
  for applet in sh sleep kill grep cat true ls; do ln -s busybox "$root/bin/$applet"; done
fi
mkdir -p "$root/usr/local/bin" "$root/etc" "$root/proc" "$root/tmp" "$root/run"
install -m 0755 "$binary" "$root/usr/local/bin/agent-guard"
printf '127.0.0.1 localhost\n127.0.0.1 imds.sim.test autoscaling.sim.test\n' > "$root/etc/hosts"
# A base's own NSS configuration is kept for the DNS round (its modules are dlopened by glibc).
base_nss=$(grep -E '^hosts:' "$root/etc/nsswitch.conf" 2>/dev/null)
rm -f "$root/etc/resolv.conf" "$root/etc/nsswitch.conf"

# Runs the guard as PID 1 of a new PID namespace, chrooted into the root; its log to $work/guard.log.
as_pid1() {
  timeout -k 5 60 unshare --pid --fork --mount --propagation private -- \
    sh -c 'mount -t proc proc "$0/proc" && exec chroot "$0" /usr/local/bin/agent-guard "$@"' \
    "$root" --health-listen off "$@" 2>"$work/guard.log"
}
expect_status() {  # what, expected status, guard options and agent...
  local what=$1 want=$2; shift 2
  as_pid1 "$@" >"$work/out"
  local got=$?
  if [[ $got == "$want" ]]; then ok "$what"; else bad "$what: exit $got, not $want"; show "$work/out" "$work/guard.log"; fi
}

expect_status "PID 1 in $label: the agent's exit code is passed on (3)" 3 \
  --imds off -- /bin/sh -c '[ "$PPID" = 1 ] || { echo "the guard is not PID 1: $PPID"; exit 9; }; exit 3'
expect_status "PID 1 in $label: an agent killed by SIGTERM gives 143" 143 \
  --imds off -- /bin/sh -c 'kill -TERM $$; sleep 5'
expect_status "PID 1 in $label: a command that is not there gives 127" 127 \
  --imds off -- /no/such/agent

# An orphan: the subshell exits at once, so its `sleep` is handed to PID 1; once it exits it must
# not stay a zombie while the agent still runs.
expect_status "PID 1 in $label: an orphan is reaped while the agent runs" 0 \
  --imds off --log-level debug -- /bin/sh -c '(sleep 0.2 &); sleep 1.5
    z=$(grep -l "^State:[[:space:]]*Z" /proc/[0-9]*/status 2>/dev/null)
    [ -z "$z" ] || { echo "zombies left: $z"; exit 1; }'
if grep -q 'orphans_reaped=1' "$work/guard.log"; then ok "the guard counts the orphan it reaped"; else bad "orphans_reaped=1 not logged"; show "$work/guard.log"; fi

# An HTTP check by name, as --child-health of an agent's own endpoint (busybox httpd here). The root
# gets the CA bundle, as README says a scratch image must for HTTPS (the AWS APIs, https:// checks);
# this plain http:// check would pass without it.
mkdir -p "$work/www" "$root/etc/ssl/certs"
echo ok > "$work/www/index.html"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
web_port=$(( 20000 + RANDOM % 20000 ))
/bin/busybox httpd -f -p "127.0.0.1:$web_port" -h "$work/www" &
pids+=($!)
printf '127.0.0.1 web.sim.test\n' >> "$root/etc/hosts"
expect_status "PID 1 in $label: an HTTP check of web.sim.test (/etc/hosts) passes" 0 \
  --imds off --child-health "http://web.sim.test:$web_port/" --check-interval 200ms --ready-on health \
  --ready-timeout 5s -- /bin/sh -c 'sleep 1'
if grep -q 'check passes check=child-health' "$work/guard.log" && grep -q 'agent is ready' "$work/guard.log"; then
  ok "the agent became ready on that check"
else
  bad "the HTTP check by name never passed"; show "$work/guard.log"
fi

# The simulators, on this namespace's loopback; commands go in on a fifo.
mkfifo "$work/world.in"
"$sim_world" <"$work/world.in" >>"$work/world.out" 2>&1 &
pids+=($!)
exec {world}>"$work/world.in"
for _ in $(seq 200); do grep -q '^imds=' "$work/world.out" && break; sleep 0.05; done
read -r imds_port asg_port < <(sed -n 's/^imds=\([0-9]*\) asg=\([0-9]*\)$/\1 \2/p' "$work/world.out")
[[ -n ${asg_port:-} ]] || { bad "sim_world did not start"; show "$work/world.out"; echo; echo "root: $passed passed, $failed failed"; exit 1; }

# A DNS server holding a name that /etc/hosts does not. `--group=` (none): dnsmasq would call
# setgroups to change group, which a user namespace denies (packaging/qemu-aarch64.sh runs this
# script in one); as root of this network namespace only, it keeps root's.
dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces --listen-address=127.0.0.1 \
  --port=53 --user=root --group= --host-record=autoscaling.dns.test,127.0.0.1 --log-queries \
  --log-facility="$work/dns.log" --pid-file="$work/dns.pid" &
pids+=($!)
for _ in $(seq 100); do grep -q 'started' "$work/dns.log" 2>/dev/null && break; sleep 0.05; done

# One scale-in, end to end: the guard sets up lifecycle hooks against the named endpoints, the
# group terminates the instance, IMDS says Terminated, the agent stops, the hook is completed.
lifecycle() {  # what, Auto Scaling host name
  local what=$1 host=$2
  : > "$work/guard.log"
  AWS_ENDPOINT_URL_AUTO_SCALING=http://$host:$asg_port AWS_REGION=us-east-1 \
    AWS_ACCESS_KEY_ID=AKIDTESTTESTTEST AWS_SECRET_ACCESS_KEY=test-secret \
    as_pid1 --imds on --imds-endpoint "http://imds.sim.test:$imds_port" --imds-poll 200ms \
    --terminate-hook drain-hook --asg-name workers --heartbeat-interval 1s \
    -- /bin/sh -c 'trap "exit 0" TERM; while :; do sleep 0.1; done' >"$work/out" &
  local guard=$!
  local ready=
  for _ in $(seq 300); do
    grep -q 'lifecycle hooks ready' "$work/guard.log" && { ready=1; break; }
    kill -0 "$guard" 2>/dev/null || break
    sleep 0.1
  done
  [[ -n $ready ]] || { bad "$what: the guard never set up its lifecycle hooks"; show "$work/guard.log"; kill "$guard" 2>/dev/null; wait "$guard"; return; }
  if grep -q 'cannot read the hook' "$work/guard.log"; then bad "$what: DescribeLifecycleHooks failed"; show "$work/guard.log"; fi
  echo terminate >&"$world"
  wait "$guard"
  local code=$?
  if [[ $code == 0 ]]; then ok "$what: the agent stopped cleanly (exit 0)"; else bad "$what: exit $code"; show "$work/guard.log"; fi
}

round() {  # what, host name for the Auto Scaling API
  lifecycle "$1" "$2"
  : > "$work/world.out"
  echo wait >&"$world"
  for _ in $(seq 400); do grep -q '^completed\|^not completed' "$work/world.out" && break; sleep 0.1; done
  if grep -q '^completed drain-hook CONTINUE by-call' "$work/world.out"; then
    ok "$1: the hook was completed with CONTINUE"
  else
    bad "$1: the hook was not completed with CONTINUE"; show "$work/world.out" "$work/guard.log"
  fi
  echo reset >&"$world"
}

# No nsswitch.conf and no resolv.conf, as in a scratch image: glibc's default order finds no DNS
# server and falls back to /etc/hosts.
round "through /etc/hosts (autoscaling.sim.test), no nsswitch.conf" autoscaling.sim.test

# NSS modules the host names in nsswitch.conf must never be loaded by the static binary: they are
# built for another glibc (on Debian 11, `resolve` aborts a static glibc 2.36 program). The module
# `bogus` kills whoever loads it; a static C program shows that glibc alone would load it.
multiarch=$(cc -print-multiarch 2>/dev/null)
mkdir -p "$root/lib/$multiarch" "$work/nss"
cat > "$work/nss/bogus.c" <<'C'
__attribute__((constructor)) static void loaded(void) { __builtin_trap(); }
int _nss_bogus_gethostbyname2_r(void) { return 0; }
C
cat > "$work/nss/gai.c" <<'C'
#include <netdb.h>
int main(int argc, char **argv) { struct addrinfo *r; return getaddrinfo(argv[1], "80", 0, &r) != 0; }
C
cc -shared -fPIC -nostdlib -o "$root/lib/$multiarch/libnss_bogus.so.2" "$work/nss/bogus.c" &&
  cc -static -o "$root/tmp/gai" "$work/nss/gai.c" 2>/dev/null
printf 'nameserver 127.0.0.1\n' > "$root/etc/resolv.conf"
printf 'hosts: files bogus dns\n' > "$root/etc/nsswitch.conf"
chroot "$root" /tmp/gai autoscaling.dns.test 2>/dev/null
code=$?
if [[ $code -ge 128 ]]; then ok "control: a plain static glibc program loads libnss_bogus.so.2 and dies ($code)"; else bad "control: the plain static program was not killed by libnss_bogus.so.2 (exit $code)"; fi
rm -f "$root/tmp/gai"

# DNS, as a VPC resolver would answer: the Auto Scaling name is in DNS only, IMDS's in /etc/hosts.
nss=${base_nss:-hosts: files bogus dns}
printf '%s\n' "$nss" > "$root/etc/nsswitch.conf"
round "through DNS (autoscaling.dns.test), $(tr -s ' ' <<<"$nss")" autoscaling.dns.test
if grep -q 'query\[A\] autoscaling.dns.test' "$work/dns.log"; then
  ok "the name was asked of the DNS server"
else
  bad "the DNS server never saw a query for autoscaling.dns.test"; show "$work/dns.log"
fi

echo
echo "root: $passed passed, $failed failed"
[[ $failed == 0 ]]
