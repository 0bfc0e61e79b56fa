#!/usr/bin/env bash
# Debian packages the test suite uses beyond Python: chromium + chromedriver for the browser test of
# `lorareg serve`. Installs them when missing and this runs as root (CI does); otherwise says what is missing,
# and that test skips with the same reason.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
else
  echo "note: chromium and chromium-driver are not installed; the browser test of lorareg serve will skip" >&2
fi
