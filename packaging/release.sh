#!/usr/bin/env bash
# Builds the release artefacts into dist/ from this checkout, for every target that can be built
# here (x86_64, and aarch64 for Graviton once packaging/toolchain-aarch64.sh has installed its
# standard library, cross linker and qemu; .ci/run does), and says which it skipped and why:
#   agent-guard-VERSION-ARCH-linux.tar.gz   agent-guard-VERSION-ARCH-linux/: the static binary,
#                                           README.md, LICENSE (+ -MIT, -APACHE), packaging/, docs/
#   agent-guard_VERSION-1_DEBARCH.deb       cargo-deb: /usr/bin, the unit, the examples
#   agent-guard-VERSION-1.ARCH.rpm          cargo-generate-rpm: the same files, gzip payload
#   SHA256SUMS                              of all of the above: sha256sum -c SHA256SUMS
# The version is Cargo.toml's. Needs cargo, cargo-deb, cargo-generate-rpm, tar, gzip, file and
# sha256sum (.ci/run installs them). The archive's order, owners, modes and times are fixed (the
# times are the last commit's), so it changes only when what it holds does.
#
# usage: packaging/release.sh
# environment: RELEASE_TARGETS (default: "x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu")
set -euo pipefail
cd "$(dirname "$0")/.."
umask 022

[[ $# -eq 0 ]] || { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { echo "release.sh: $*" >&2; exit 1; }
for tool in cargo tar gzip file sha256sum; do
  command -v "$tool" >/dev/null || die "$tool is missing"
done
cargo deb --version >/dev/null 2>&1 || die "cargo-deb is missing: cargo install cargo-deb --locked"
cargo generate-rpm --version >/dev/null 2>&1 ||
  die "cargo-generate-rpm is missing: cargo install cargo-generate-rpm --locked"

pkgid=$(cargo pkgid --locked)
version=${pkgid##*[#@]}
[[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+ ]] || die "cannot read the version from Cargo.toml (cargo pkgid: $pkgid)"
# For the packages' and the archive's timestamps only: the build itself must not see it, or every
# commit would rebuild ring (its build script reruns when SOURCE_DATE_EPOCH changes) and all after.
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
unset SOURCE_DATE_EPOCH
targets=${RELEASE_TARGETS:-x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu}

rm -rf dist
mkdir -p dist
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

# packaging/ as committed (no editor or test leftovers); the whole folder outside a git checkout.
packaging_files() {
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files packaging docs
  else
    find packaging docs -type f
  fi
}

built=() skipped=()
for target in $targets; do
  arch=${target%%-*}
  set +e
  binary=$(packaging/build-static.sh "$target" 2>"$stage/build.log")
  rc=$?
  set -e
  if [[ $rc == 3 ]]; then
    skipped+=("$target: $(sed -n 's/^build-static.sh: cannot build [^ ]* here: //p' "$stage/build.log")")
    continue
  elif [[ $rc != 0 ]]; then
    cat "$stage/build.log" >&2
    die "the build for $target failed"
  fi

  # The archive: one directory, stable order, owner and times.
  name=agent-guard-$version-$arch-linux
  mkdir -p "$stage/$name"
  install -m 0755 "$binary" "$stage/$name/agent-guard"
  install -m 0644 README.md LICENSE LICENSE-MIT LICENSE-APACHE "$stage/$name/"
  while IFS= read -r f; do
    install -D -m "$([[ -x $f ]] && echo 0755 || echo 0644)" "$f" "$stage/$name/$f"
  done < <(packaging_files)
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
    -C "$stage" -cf - "$name" | gzip -n -9 > "dist/$name.tar.gz"

  # The packages, from the same binary (already stripped by the release profile).
  SOURCE_DATE_EPOCH=$epoch cargo deb --locked --no-build --no-strip --target "$target" --output dist/ >/dev/null
  # gzip, not the default zstd: Amazon Linux 2's rpm 4.11 cannot read zstd payloads. No automatic
  # requirements: the binary is static; the one requirement is /bin/sh, for the %post (Cargo.toml).
  SOURCE_DATE_EPOCH=$epoch cargo generate-rpm --target "$target" --payload-compress gzip --auto-req disabled \
    --output dist/ >/dev/null
  built+=("$target")
done

((${#built[@]})) || die "nothing could be built: ${skipped[*]}"
(cd dist && sha256sum -- *.tar.gz *.deb *.rpm > SHA256SUMS)

echo "dist/ for agent-guard $version:"
(cd dist && ls -l -- * | awk '{printf "  %-48s %10d bytes\n", $9, $5}')
echo "built: ${built[*]}"
for s in "${skipped[@]}"; do echo "skipped $s"; done
