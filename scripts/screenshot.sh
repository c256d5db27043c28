#!/usr/bin/env bash
# Refreshes docs/screenshot.png (the README's picture of the web page) from
# the browser test, which on its own writes only under target/ so that running
# the tests never changes a tracked file. Needs chromium and chromium-driver.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
CHATD_SCREENSHOT="$root/docs/screenshot.png" \
  cargo test --test browser browser_and_telnet_chat -- --ignored --exact
echo "wrote docs/screenshot.png"
