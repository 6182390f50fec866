#!/usr/bin/env bash
# Tests of the packaging: install.sh (idempotent, --uninstall leaves nothing, clear errors), the
# systemd unit (systemd-analyze verify), the example config (--check-config), the CloudFormation
# template (cfn-lint), the other examples (syntax), and the .deb (builds, installs with dpkg -i as
# root, and `agent-guard --version` runs from it; removed again afterwards).
# usage: packaging/test.sh     (from anywhere; builds the release binary if needed)
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

binary=target/release/agent-guard
# Always (a no-op when up to date): a stale binary would test yesterday's options.
cargo build --release --locked --bin agent-guard >/dev/null 2>&1 || { echo "cannot build $binary"; exit 1; }
python=${AGENT_GUARD_TEST_PYTHON:-python3}

# install.sh: twice gives the same tree; --uninstall leaves nothing.
stage=$work/stage
tree() { (cd "$stage" && find . -printf '%p %m\n' | sort && find . -type f -exec sha256sum {} + | sort); }
check "install.sh installs into a DESTDIR" env DESTDIR="$stage" packaging/install.sh "$binary"
tree > "$work/first"
check "install.sh a second time" env DESTDIR="$stage" packaging/install.sh "$binary"
tree > "$work/second"
check "install.sh is idempotent" diff "$work/first" "$work/second"
check "the binary, unit and example are in place" test -x "$stage/usr/local/bin/agent-guard" \
  -a -f "$stage/etc/systemd/system/agent-guard@.service" -a -f "$stage/etc/agent-guard/example.toml"
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
[[ -x ${AGENT_GUARD_TEST_PYTHON%/python}/cfn-lint ]] && cfn_lint=${AGENT_GUARD_TEST_PYTHON%/python}/cfn-lint
if [[ -n $cfn_lint ]]; then
  check "cfn-lint passes the CloudFormation template" "$cfn_lint" packaging/examples/cloudformation.yaml
else
  skip "cfn-lint: not installed (.ci/run installs it)"
fi

# The .deb: builds, installs, runs, is removed again.
if command -v cargo-deb >/dev/null || cargo deb --version >/dev/null 2>&1; then
  check "cargo deb builds the package" cargo deb --locked
  deb=$(ls target/debian/agent-guard_*.deb 2>/dev/null | head -1)
  check "the .deb holds the binary, the unit and the example" sh -c \
    "dpkg-deb -c '$deb' | grep -q './usr/bin/agent-guard' && dpkg-deb -c '$deb' | grep -q './lib/systemd/system/agent-guard@.service' && dpkg-deb -c '$deb' | grep -q 'examples/queue-worker.toml'"
  if [[ $(id -u) == 0 ]] && command -v dpkg >/dev/null; then
    if dpkg -s agent-guard >/dev/null 2>&1; then
      skip "dpkg -i: an agent-guard package is already installed here; not touching it"
    else
      check "dpkg -i installs the .deb" dpkg -i "$deb"
      check "agent-guard --version runs from the package" sh -c '/usr/bin/agent-guard --version | grep -q "^agent-guard "'
      check "dpkg -r removes it" dpkg -r agent-guard
    fi
  else
    skip "dpkg -i: needs root"
  fi
else
  skip "the .deb: cargo-deb is not installed (cargo install cargo-deb --locked)"
fi

echo
((${#skipped[@]})) && printf 'SKIPPED %d check(s): %s\n' "${#skipped[@]}" "$(IFS=';'; echo "${skipped[*]}")"
echo "packaging: $passed passed, $failed failed"
[[ $failed == 0 ]]
