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
sudo systemctl enable agent-guard@worker    # starts on the instance's first boot
