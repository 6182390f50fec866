#!/usr/bin/env bash
# Packer shell provisioner (or EC2 Image Builder step): bakes agent-guard into the AMI. Upload
# the built binary and this repository's packaging/ first, e.g. with Packer's "file" provisioner:
#   { "type": "file", "source": "target/release/agent-guard", "destination": "/tmp/agent-guard" }
#   { "type": "file", "source": "packaging/", "destination": "/tmp/packaging" }
#   { "type": "file", "source": "worker.toml", "destination": "/tmp/worker.toml" }
set -euo pipefail
sudo /tmp/packaging/install.sh /tmp/agent-guard
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
