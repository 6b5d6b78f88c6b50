#!/usr/bin/env bash
# Stop the seed's four-node Jiangsu cluster (a thin wrapper over `cnet cluster down`).
set -euo pipefail
cd "$(dirname "$0")"
make -s setup
exec .venv/bin/cnet cluster down topologies/jiangsu.yaml "$@"
