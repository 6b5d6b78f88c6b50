#!/usr/bin/env bash
# Start the seed's four-node Jiangsu cluster (a thin wrapper over `cnet cluster up`).
set -euo pipefail
cd "$(dirname "$0")"
make -s setup
exec .venv/bin/cnet cluster up topologies/jiangsu.yaml "$@"
