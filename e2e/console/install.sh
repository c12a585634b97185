#!/usr/bin/env bash
# Installs what the console's browser test needs, idempotently: Debian's chromium (root) and
# playwright-core (npm, pinned by package-lock.json) into ${LANEMESH_CACHE}/console-check.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${LANEMESH_CACHE:-$HOME/.cache/lanemesh}/console-check"

if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
  else
    echo "console/install.sh: chromium is missing; run as root to install it" >&2
  fi
fi

command -v npm >/dev/null || { echo "console/install.sh: npm is required" >&2; exit 1; }
mkdir -p "$cache"
if ! cmp -s "$here/package-lock.json" "$cache/package-lock.json" || [ ! -d "$cache/node_modules/playwright-core" ]; then
  cp "$here/package.json" "$here/package-lock.json" "$cache/"
  (cd "$cache" && npm ci --no-audit --no-fund --loglevel=error)
fi
