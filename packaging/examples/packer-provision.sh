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
# The bake instance is in no group: the deployment is checked where it runs. Before each start of
# the unit (the first boot included), agent-guard doctor checks the instance, its group, hooks and
# permissions against the options; its verdict is in the journal (journalctl -u agent-guard@worker),
# and the leading `-` keeps a FAIL from holding the agent back.
sudo mkdir -p /etc/systemd/system/agent-guard@worker.service.d
printf '[Service]\nExecStartPre=-/usr/local/bin/agent-guard doctor --config /etc/agent-guard/%%i.toml --name %%i\n' |
  sudo tee /etc/systemd/system/agent-guard@worker.service.d/doctor.conf >/dev/null
sudo systemctl enable agent-guard@worker    # starts on the instance's first boot
