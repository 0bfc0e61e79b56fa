#!/usr/bin/env bash
# The main job end to end on the embedded defaults, set-up included: bash scripts/demo.sh [output folder]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/lorareg demo "${1:-demo-output}"
