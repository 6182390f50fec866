#!/usr/bin/env bash
# Tests of the packaging: release.sh (dist/ as INTERFACE.md says: the archive with a static binary,
# README, LICENSE and packaging/; the .deb; the .rpm; SHA256SUMS), that static binary as PID 1 in
# an empty root (packaging/test-root.sh), install.sh (idempotent, --uninstall leaves nothing, clear
# errors; as root, on a live system in a mount namespace of its own: the group agent-guard and
# /run/agent-guard from the tmpfiles.d line), the systemd unit (systemd-analyze verify), the example
# config (--check-config), the CloudFormation template (cfn-lint), the other examples (syntax), the
# .deb (installs with dpkg -i as root, its postinst makes the group, and `agent-guard --version`
# runs from it; removed again afterwards) and the .rpm (lists its files and its %post; installs into
# a scratch root); on x86_64 the aarch64 release too (packaging/test-aarch64.sh: its artefacts, and
# its binary rehearsed under qemu).
# usage: packaging/test.sh     (from anywhere; runs release.sh, which builds the static binary)
# With CI=true a check that cannot run fails instead of being skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
passed=0 failed=0 skipped=()
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ok() { echo "ok   $*"; passed=$((passed + 1)); }
bad() { echo "FAIL $*"; failed=$((failed + 1)); }
check() { local what=$1; shift; if "$@" >"$work/out" 2>&1; then ok "$what"; else bad "$what"; sed 's/^/     /' "$work/out"; fi; }
# With CI=true a skip is a failure: a missing install step in .ci/run must not pass as green.
skip() {
  if [[ ${CI:-} == true ]]; then bad "$* (skipped, and CI=true makes a skip a failure)"; else skipped+=("$*"); fi
}
# The tools of $1 (space-separated) that are not on PATH.
missing() { local t out=(); for t in $1; do command -v "$t" >/dev/null || out+=("$t"); done; echo "${out[*]}"; }
# `check` when every tool in $1 is on PATH; else a skip naming what is missing (outside CI a
# missing tool is a skip, never a failure: README's test command on a fresh machine is green).
check_with() {
  local tools=$1 what=$2 lacking; lacking=$(missing "$tools")
  if [[ -n $lacking ]]; then skip "$what: $lacking not installed"; else shift; check "$@"; fi
}
python=${AGENT_GUARD_TEST_PYTHON:-python3}

# release.sh: builds dist/ (the static binary first). Everything below tests what it made.
if packaging/release.sh >"$work/release.log" 2>&1; then
  ok "release.sh builds dist/"
  sed 's/^/     /' "$work/release.log" | grep -v '^ *Compiling\|^ *Finished\|^ *Downloaded\|^ *Downloading'
else
  bad "release.sh builds dist/"; sed 's/^/     /' "$work/release.log"
  echo; echo "packaging: $passed passed, $failed failed"; exit 1
fi
version=$(cargo pkgid --locked); version=${version##*[#@]}
arch=$(uname -m)
name=agent-guard-$version-$arch-linux
archive=dist/$name.tar.gz

# The archive: one directory holding the binary, README.md, the licences, packaging/ and docs/ as committed.
expected() {
  printf '%s\n' "$name/" "$name/agent-guard" "$name/README.md" "$name/LICENSE" "$name/LICENSE-MIT" "$name/LICENSE-APACHE"
  git ls-files packaging docs | sed "s|^|$name/|"
  git ls-files packaging docs | awk -F/ -v n="$name" '{p=n; for (i=1; i<NF; i++) {p=p"/"$i; print p"/"}}' | sort -u
}
check "the archive $archive holds the binary, README, licences, packaging/ and docs/, in one directory" \
  diff <(expected | sort -u) <(tar tzf "$archive" | sort)
mkdir -p "$work/unpacked"
tar xzf "$archive" -C "$work/unpacked"
binary=$work/unpacked/$name/agent-guard
check_with file "the binary is statically linked (file)" sh -c "file -b '$binary' | tee -a /dev/stderr | grep -q 'statically linked'"
# packaging/static-flags.sh remaps cargo's registry: the binary names no builder's home directory,
# so it is the same whoever builds it.
check "the binary names no path of cargo's registry (built the same by anyone)" sh -c \
  "! grep -q -a -e '/registry/src/index.crates.io-' '$binary'"
check "the binary says the version of Cargo.toml ($version)" sh -c "'$binary' --version | grep -qx 'agent-guard $version'"
check_with readelf "the binary names no interpreter and no shared libraries" sh -c "! readelf -lW '$binary' | grep -q INTERP && ! readelf -dW '$binary' 2>/dev/null | grep -q NEEDED"
check "sha256sum -c SHA256SUMS" sh -c "cd dist && sha256sum -c SHA256SUMS"
check "SHA256SUMS covers the archive, the .deb and the .rpm" bash -c \
  "cd dist && diff <(ls *.tar.gz *.deb *.rpm | sort) <(awk '{print \$2}' SHA256SUMS | sort)"
check "install.sh in the unpacked archive installs the binary beside it" sh -c \
  "DESTDIR='$work/from-archive' '$work/unpacked/$name/packaging/install.sh' && cmp '$binary' '$work/from-archive/usr/local/bin/agent-guard'"

# The static binary as PID 1 in an empty root: exit statuses, an orphan, a lifecycle hook by name.
# test-root.sh's own needs (see its header), asked first: a missing one is a skip here.
root_lacking=$(missing "unshare chroot mount dnsmasq cc file")
if [[ -z $root_lacking ]] && ! { [[ -x /bin/busybox ]] && file -b /bin/busybox | grep -q 'statically linked'; }; then
  root_lacking="a static /bin/busybox (busybox-static)"
fi
if [[ $(id -u) != 0 ]]; then
  skip "the empty root (test-root.sh): needs root"
elif [[ -n $root_lacking ]]; then
  skip "the empty root (test-root.sh): $root_lacking not installed"
else
  if cargo build --locked --example sim_world >"$work/out" 2>&1; then
    packaging/test-root.sh "$binary" target/debug/examples/sim_world >"$work/root.log" 2>&1
    grep -E '^(ok|FAIL) |^     ' "$work/root.log"
    passed=$((passed + $(grep -c '^ok ' "$work/root.log")))
    failed=$((failed + $(grep -c '^FAIL ' "$work/root.log")))
    grep -q '^root: [0-9]* passed' "$work/root.log" || bad "test-root.sh ran: $(tail -3 "$work/root.log")"
  else
    bad "cargo build --example sim_world"; sed 's/^/     /' "$work/out"
  fi
fi

# install.sh: twice gives the same tree; --uninstall leaves nothing.
stage=$work/stage
tree() { (cd "$stage" && find . -printf '%p %m\n' | sort && find . -type f -exec sha256sum {} + | sort); }
check "install.sh installs into a DESTDIR" env DESTDIR="$stage" packaging/install.sh "$binary"
tree > "$work/first"
check "install.sh a second time" env DESTDIR="$stage" packaging/install.sh "$binary"
tree > "$work/second"
check "install.sh is idempotent" diff "$work/first" "$work/second"
check "the binary, unit, tmpfiles.d line and example are in place" test -x "$stage/usr/local/bin/agent-guard" \
  -a -f "$stage/etc/systemd/system/agent-guard@.service" -a -f "$stage/etc/agent-guard/example.toml" \
  -a -f "$stage/etc/tmpfiles.d/agent-guard.conf"
check "the tmpfiles.d line makes /run/agent-guard 3775 root:agent-guard" \
  grep -qx 'd /run/agent-guard 3775 root agent-guard -' "$stage/etc/tmpfiles.d/agent-guard.conf"
check "the unit names the binary where PREFIX put it" \
  grep -qx 'ExecStart=/usr/local/bin/agent-guard --config /etc/agent-guard/%i.toml --name %i' \
  "$stage/etc/systemd/system/agent-guard@.service"

# The unit passes systemd-analyze verify, its ExecStart pointed at the staged binary.
if command -v systemd-analyze >/dev/null; then
  mkdir -p "$work/units"
  sed -e "s|/usr/local/bin/agent-guard|$stage/usr/local/bin/agent-guard|" \
      -e "s|/etc/agent-guard/%i.toml|$stage/etc/agent-guard/example.toml|g" \
      "$stage/etc/systemd/system/agent-guard@.service" > "$work/units/agent-guard@worker.service"
  check "systemd-analyze verify agent-guard@worker.service" systemd-analyze verify "$work/units/agent-guard@worker.service"
else
  skip "systemd-analyze verify: systemd is not installed"
fi

check "install.sh --uninstall leaves nothing" env DESTDIR="$stage" packaging/install.sh --uninstall
check "nothing is left in the DESTDIR" test -z "$(find "$stage" -mindepth 1 2>/dev/null)"

# install.sh on the live system (no DESTDIR), as root, in a mount namespace of its own so that
# this machine is left as it was: a copy of /etc (the group goes there), a fresh /run that says
# systemd runs (a stand-in systemctl logs its calls), PREFIX in the scratch directory. Twice, then
# --uninstall: the group made once and kept, /run/agent-guard made from the tmpfiles.d line.
live=$work/live
live_install() {
  mkdir -p "$live/etc" "$live/bin"
  cp -a /etc/. "$live/etc/"
  printf '#!/bin/sh\necho "systemctl $*" >> %s/systemctl.log\n' "$live" > "$live/bin/systemctl"
  chmod 0755 "$live/bin/systemctl"
  # shellcheck disable=SC2016
  unshare --mount --propagation private -- bash -c '
    live=$1 binary=$2
    mount --bind "$live/etc" /etc && mount -t tmpfs -o mode=0755 tmpfs /run && mkdir -p /run/systemd/system || exit 1
    export PATH=$live/bin:$PATH PREFIX=$live/prefix
    for n in 1 2; do
      packaging/install.sh "$binary" > "$live/install$n.log" 2>&1; echo $? > "$live/install$n.rc"
      grep -c "^agent-guard:" /etc/group > "$live/groups$n"
      stat -c "%a %U %G" /run/agent-guard > "$live/run$n" 2>&1
    done
    packaging/install.sh --uninstall > "$live/uninstall.log" 2>&1; echo $? > "$live/uninstall.rc"
    ls /etc/tmpfiles.d > "$live/tmpfiles.d.after"
    getent group agent-guard > "$live/group.after"
  ' live "$live" "$binary"
}
if [[ $(id -u) == 0 ]] && command -v unshare >/dev/null && command -v systemd-tmpfiles >/dev/null; then
  if live_install >"$work/out" 2>&1; then
    check "install.sh on a live system, twice" sh -c "cat '$live'/install*.log; [ \"\$(cat '$live/install1.rc' '$live/install2.rc')\" = '0
0' ]"
    check "install.sh makes the group agent-guard once" sh -c "[ \"\$(cat '$live/groups1' '$live/groups2')\" = '1
1' ]"
    check "install.sh applies the tmpfiles.d line: /run/agent-guard 3775 root agent-guard" sh -c \
      "cat '$live/run1' '$live/run2'; [ \"\$(cat '$live/run1' '$live/run2')\" = '3775 root agent-guard
3775 root agent-guard' ]"
    check "install.sh reloads systemd" grep -qx 'systemctl daemon-reload' "$live/systemctl.log"
    check "install.sh --uninstall removes the tmpfiles.d line and keeps the group" sh -c \
      "cat '$live/uninstall.log'; [ \"\$(cat '$live/uninstall.rc')\" = 0 ] && ! grep -qx agent-guard.conf '$live/tmpfiles.d.after' && grep -q '^agent-guard:' '$live/group.after'"
  else
    bad "install.sh on a live system (mount namespace)"; sed 's/^/     /' "$work/out"
  fi
else
  skip "install.sh on a live system: needs root, unshare and systemd-tmpfiles"
fi

# Clear errors.
expect_error() {  # what, expected exit code, expected text, command...
  local what=$1 code=$2 text=$3; shift 3
  "$@" >"$work/out" 2>&1; local got=$?
  if [[ $got == "$code" ]] && grep -q -- "$text" "$work/out"; then ok "$what"; else bad "$what (exit $got)"; sed 's/^/     /' "$work/out"; fi
}
expect_error "a missing binary is a clear error" 1 "no binary at /nonexistent" env DESTDIR="$stage" packaging/install.sh /nonexistent
expect_error "something else than agent-guard is refused" 1 "is not agent-guard" env DESTDIR="$stage" packaging/install.sh /bin/true
expect_error "an unknown option shows the usage" 2 "usage:" packaging/install.sh --frobnicate
expect_error "a relative PREFIX is refused" 1 "PREFIX must be an absolute path" env DESTDIR="$stage" PREFIX=usr packaging/install.sh "$binary"

# install.sh DIR: from a copy of dist/, the archive for `uname -m`, checked against SHA256SUMS.
check "install.sh dist/ installs the binary of the $arch archive" sh -c \
  "DESTDIR='$work/from-dist' packaging/install.sh dist && cmp '$binary' '$work/from-dist/usr/local/bin/agent-guard'"
mkdir -p "$work/tampered" "$work/no-release"
cp "$archive" "$work/tampered/"
(cd dist && sed "s/^[0-9a-f]\{8\}/00000000/" SHA256SUMS) > "$work/tampered/SHA256SUMS"
expect_error "install.sh DIR refuses an archive that does not match SHA256SUMS" 1 "does not match" \
  env DESTDIR="$work/from-tampered" packaging/install.sh "$work/tampered"
expect_error "install.sh DIR without an archive for $arch says which it wants" 1 "no agent-guard-VERSION-$arch-linux.tar.gz in" \
  env DESTDIR="$work/from-empty" packaging/install.sh "$work/no-release"

# The example config is valid (the worker it names is fictional: /bin/true stands in for it).
check "the queue-worker example passes --check-config" \
  "$binary" --check-config --config packaging/examples/queue-worker.toml -- /bin/true

# The other examples.
check "the Packer provisioner is valid bash" bash -n packaging/examples/packer-provision.sh
check "the cloud-init user-data is YAML with the #cloud-config header" sh -c \
  "head -1 packaging/examples/cloud-init.yaml | grep -qx '#cloud-config' && '$python' -c 'import sys, yaml; yaml.safe_load(open(sys.argv[1]))' packaging/examples/cloud-init.yaml"
check "the Dockerfile uses the guard as PID 1" grep -q '^ENTRYPOINT \["agent-guard", "--"\]' packaging/examples/Dockerfile

# The CloudFormation template passes cfn-lint.
cfn_lint=$(command -v cfn-lint || true)
[[ -x ${python%/python}/cfn-lint ]] && cfn_lint=${python%/python}/cfn-lint
if [[ -n $cfn_lint ]]; then
  check "cfn-lint passes the CloudFormation template" "$cfn_lint" packaging/examples/cloudformation.yaml
else
  skip "cfn-lint: not installed (.ci/run installs it)"
fi

# The .deb (release.sh's, with the static binary): its files, then installed, run and removed.
# dist/ holds the packages of every target; these checks are of this machine's (aarch64's: below).
deb=dist/agent-guard_${version}-1_$(dpkg --print-architecture 2>/dev/null || echo amd64).deb
check_with dpkg-deb "the .deb holds the binary, the unit, the tmpfiles.d line, the examples and the licences" sh -c \
  "dpkg-deb -c '$deb' > '$work/deb.list' && for f in ./usr/bin/agent-guard ./lib/systemd/system/agent-guard@.service ./usr/lib/tmpfiles.d/agent-guard.conf examples/queue-worker.toml doc/agent-guard/LICENSE-MIT doc/agent-guard/LICENSE-APACHE doc/agent-guard/docs/reference.md; do grep -q \"\$f\" '$work/deb.list' || { echo \"missing \$f\"; exit 1; }; done"
check_with dpkg-deb "the .deb's postinst is packaging/scripts/postinst" sh -c "dpkg-deb -I '$deb' postinst | cmp - packaging/scripts/postinst"
check_with dpkg-deb "the .deb has no library dependencies (the binary is static)" sh -c "! dpkg-deb -f '$deb' Depends | grep -q libc6"
if [[ $(id -u) == 0 ]] && command -v dpkg >/dev/null; then
  if dpkg -s agent-guard >/dev/null 2>&1; then
    skip "dpkg -i: an agent-guard package is already installed here; not touching it"
  else
    had_group=$(getent group agent-guard || true)
    check "dpkg -i installs the .deb" dpkg -i "$deb"
    check "agent-guard --version runs from the package" sh -c '/usr/bin/agent-guard --version | grep -q "^agent-guard "'
    check "the .deb's postinst made the group agent-guard" getent group agent-guard
    check "dpkg -r removes it" dpkg -r agent-guard
    # The group is kept by the package (files may still belong to it); this test made it, so it goes.
    [[ -z $had_group ]] && getent group agent-guard >/dev/null && groupdel agent-guard
  fi
else
  skip "dpkg -i: needs root"
fi

# The .rpm, with Debian's rpm tools: its files and metadata, then an install into a scratch root.
rpm=dist/agent-guard-$version-1.$arch.rpm
if command -v rpm >/dev/null; then
  check "rpm -qpl lists the binary, the unit, the examples and the licences" sh -c \
    "rpm -qpl '$rpm' > '$work/rpm.list' && cat '$work/rpm.list' && for f in /usr/bin/agent-guard /usr/lib/systemd/system/agent-guard@.service /usr/lib/tmpfiles.d/agent-guard.conf /usr/share/doc/agent-guard/examples/queue-worker.toml /usr/share/licenses/agent-guard/LICENSE-MIT /usr/share/doc/agent-guard/docs/reference.md; do grep -qx \"\$f\" '$work/rpm.list' || { echo \"missing \$f\"; exit 1; }; done"
  check "the .rpm's %post is packaging/scripts/postinst, run by /bin/sh" sh -c \
    "rpm -qp --qf '%{POSTINPROG}\\n' '$rpm' | grep -qx /bin/sh && rpm -qp --qf '%{POSTIN}' '$rpm' | cmp - packaging/scripts/postinst"
  check "the .rpm says version $version, arch $arch, licence MIT OR Apache-2.0" sh -c \
    "rpm -qp --qf '%{VERSION} %{ARCH} %{LICENSE}\\n' '$rpm' | tee -a /dev/stderr | grep -qx '$version $arch MIT OR Apache-2.0'"
  check "the .rpm's payload is gzip (Amazon Linux 2's rpm cannot read zstd)" sh -c \
    "rpm -qp --qf '%{PAYLOADCOMPRESSOR}\\n' '$rpm' | grep -qx gzip"
  check "the .rpm requires nothing but /bin/sh (its %post) and rpm's own features (the binary is static)" sh -c \
    "rpm -qpR '$rpm' | tee -a /dev/stderr | grep -v '^rpmlib(' | grep -vx /bin/sh | grep -q . && exit 1 || exit 0"
  rpmroot=$work/rpmroot
  # The scratch root has no shell: its /bin/sh need and its %post are left out there.
  check "rpm -i installs the .rpm into a scratch --root" sh -c \
    "rpm --root '$rpmroot' --initdb && rpm --root '$rpmroot' -i --nosignature --nodeps --noscripts '$rpm' && rpm --root '$rpmroot' -q agent-guard"
  check "the installed binary runs" sh -c "'$rpmroot/usr/bin/agent-guard' --version | grep -qx 'agent-guard $version'"
  check "rpm -e removes it from the scratch root" sh -c \
    "rpm --root '$rpmroot' -e agent-guard && test ! -e '$rpmroot/usr/bin/agent-guard'"
else
  skip "the .rpm: rpm is not installed (apt-get install rpm)"
fi

# aarch64 (Graviton), on an x86_64 machine: its artefacts, and its binary rehearsed under qemu
# (packaging/test-aarch64.sh; packaging/toolchain-aarch64.sh installs what it needs).
if [[ $arch == x86_64 && -f dist/agent-guard-$version-aarch64-linux.tar.gz ]]; then
  if [[ $(id -u) == 0 ]]; then
    cargo build --locked --example sim_world >"$work/out" 2>&1 || { bad "cargo build --example sim_world"; sed 's/^/     /' "$work/out"; }
  fi
  packaging/test-aarch64.sh "$binary" "$([[ $(id -u) == 0 ]] && echo target/debug/examples/sim_world)" >"$work/aarch64.log" 2>&1
  grep -E '^(ok|FAIL) |^     ' "$work/aarch64.log"
  passed=$((passed + $(grep -c '^ok ' "$work/aarch64.log")))
  failed=$((failed + $(grep -c '^FAIL ' "$work/aarch64.log")))
  while IFS= read -r line; do skip "${line#SKIP }"; done < <(grep '^SKIP ' "$work/aarch64.log")
  grep -q '^aarch64: [0-9]* passed' "$work/aarch64.log" || bad "test-aarch64.sh ran: $(tail -3 "$work/aarch64.log")"
elif [[ $arch == x86_64 ]]; then
  skip "aarch64: release.sh did not build it ($(sed -n 's/^skipped aarch64[^:]*: //p' "$work/release.log"); packaging/toolchain-aarch64.sh installs what it needs)"
fi

echo
((${#skipped[@]})) && printf 'SKIPPED %d check(s): %s\n' "${#skipped[@]}" "$(IFS=';'; echo "${skipped[*]}")"
echo "packaging: $passed passed, $failed failed"
[[ $failed == 0 ]]
