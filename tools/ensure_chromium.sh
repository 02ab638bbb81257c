#!/usr/bin/env bash
# Installs Debian's headless Chromium for the report test when it is missing and we may
# (root with apt-get). Elsewhere it only says so: the report test then skips with a reason.
set -uo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium for the report test (once)..."
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -q && apt-get install -y -q --no-install-recommends chromium; } >/tmp/mtl-chromium-install.log 2>&1 \
    || echo "warning: could not install chromium (see /tmp/mtl-chromium-install.log); the report page test will skip"
else
  echo "note: chromium not found and not root; the report page test will skip (apt-get install chromium)"
fi
exit 0
