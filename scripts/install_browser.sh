#!/usr/bin/env bash
# Install headless Chromium and its WebDriver for the browser tests
# (tests/test_browser.py).  Idempotent: does nothing when both are present.
# Debian/Ubuntu only; needs root (or sudo).
set -euo pipefail

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
CHROMEDRIVER=${CHROMEDRIVER:-/usr/bin/chromedriver}

if [[ -x "$CHROMIUM" && -x "$CHROMEDRIVER" ]]; then
    echo "chromium and chromedriver already installed:"
    "$CHROMIUM" --version || true
    "$CHROMEDRIVER" --version || true
    exit 0
fi

SUDO=""
if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "error: need root or sudo to apt-get install chromium chromium-driver" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# Fonts so that text in screenshots is legible.
$SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver fonts-dejavu-core

"$CHROMIUM" --version
"$CHROMEDRIVER" --version
