#!/usr/bin/env bash
# Create .venv and install lorareg with its extras, once per change of pyproject.toml.
# torch==2.13.0 goes in first, so the torch range in pyproject.toml is already satisfied and pip does not
# fetch a multi-GB CUDA build on a CPU machine (users with a GPU keep the torch they have).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.lorareg-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install --quiet torch==2.13.0
  .venv/bin/python -m pip install --quiet -e ".[train,dev]"
  echo "$want" > "$stamp"
fi
