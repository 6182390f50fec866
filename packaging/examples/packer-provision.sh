#!/usr/bin/env bash
# Packer shell provisioner (or EC2 Image Builder step): bakes agent-guard into the AMI from a
# release archive (packaging/release.sh's dist/), either fetched from where dist/ is published and
# checked against its SHA256SUMS (AGENT_GUARD_BASE_URL), or uploaded first with Packer's "file"
# provisioner (AGENT_GUARD_ARCHIVE), with the agent's config:
#   { "type": "file", "source": "dist/agent-guard-0.1.0-x86_64-linux.tar.gz", "destination": "/tmp/" }
#   { "type": "file", "source": "worker.toml", "destination": "/tmp/worker.toml" }
set -euo pipefail
version=${AGENT_GUARD_VERSION:-0.1.0}
name=agent-guard-$version-$(uname -m)-linux
cd "$(mktemp -d)"
if [[ -n ${AGENT_GUARD_ARCHIVE:-} ]]; then
  cp "$AGENT_GUARD_ARCHIVE" "$name.tar.gz"
else
  base=${AGENT_GUARD_BASE_URL:?set AGENT_GUARD_BASE_URL (where dist/ is published) or AGENT_GUARD_ARCHIVE}
  curl -fsSL -O "$base/$name.tar.gz" -O "$base/SHA256SUMS"
  grep " $name.tar.gz\$" SHA256SUMS | sha256sum -c -
fi
tar xzf "$name.tar.gz"
sudo "$name/packaging/install.sh"            # the static binary, the unit, an example config
sudo install -m 0644 /tmp/worker.toml /etc/agent-guard/worker.toml
sudo agent-guard --check-config --config /etc/agent-guard/worker.toml
sudo systemctl enable agent-guard@worker    # starts on the instance's first boot
