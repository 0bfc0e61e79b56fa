#!/usr/bin/env bash
# The whole test suite, set-up included: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-packages.sh || echo "note: could not install chromium; the browser test will skip" >&2
bash scripts/bootstrap.sh
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
exec .venv/bin/python -m pytest -n 2 -q "$@"
