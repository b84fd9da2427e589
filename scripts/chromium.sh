#!/usr/bin/env bash
# Headless Chromium for the browser tests: Debian's package (Playwright's own download cannot work
# here; the tests drive this one through executable_path). Installs it when missing (root + apt).
#   scripts/chromium.sh install     then prints the executable's path
set -euo pipefail
[ "${1:-}" = install ] || { echo "usage: $0 install" >&2; exit 2; }
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "Chromium is missing: install Debian's chromium package (apt-get install chromium)" >&2
    exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
fi
command -v chromium
