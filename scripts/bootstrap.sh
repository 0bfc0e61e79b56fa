#!/usr/bin/env bash
# Create .venv with the locked dependency set (requirements/lock-dev.txt), once per change of the lock or
# pyproject.toml. torch==2.13.0 goes in first, so pip takes the CPU build from this machine and never fetches a
# multi-GB CUDA build. The venv is lorareg's own: on a GPU machine, install into your own environment instead
# (README, "Install").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.lorareg-installed
want=$(cat pyproject.toml requirements/*.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet torch==2.13.0
  .venv/bin/python -m pip install --quiet -r requirements/lock-dev.txt
  .venv/bin/python -m pip install --quiet --no-deps -e .
  if [ -f requirements/no-deps.txt ]; then
    # loaders used as test oracles whose own pins clash with ours: their code only, never their dependencies
    .venv/bin/python -m pip install --quiet --no-deps -r requirements/no-deps.txt
  fi
  echo "$want" > "$stamp"
fi
