#!/usr/bin/env bash
# Install headless Chromium and its WebDriver for the browser tests
# (tests/browser/test_notebooks_in_jupyterlab.py).  Idempotent: does nothing when both are present.
# Debian/Ubuntu only; needs root (or sudo).  When another package manager run
# holds the dpkg/apt lock (unattended-upgrades on a fresh machine, a parallel
# setup), it waits for it (up to APT_WAIT seconds, default 600) instead of failing.
set -euo pipefail

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
CHROMEDRIVER=${CHROMEDRIVER:-/usr/bin/chromedriver}
APT_WAIT=${APT_WAIT:-600}
APT_LOCKS=(/var/lib/dpkg/lock-frontend /var/lib/dpkg/lock /var/lib/apt/lists/lock
           /var/cache/apt/archives/lock)

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

# Wait while any process holds a dpkg/apt lock file open (needs fuser, from psmisc;
# without it apt-get's own DPkg::Lock::Timeout below still waits for the dpkg lock).
wait_for_apt_locks() {
    command -v fuser >/dev/null 2>&1 || return 0
    local waited=0
    while $SUDO fuser "${APT_LOCKS[@]}" >/dev/null 2>&1; do
        if (( waited >= APT_WAIT )); then
            echo "error: another package manager still holds the apt/dpkg lock after" \
                 "${APT_WAIT}s (set APT_WAIT to wait longer)" >&2
            return 1
        fi
        if (( waited % 30 == 0 )); then
            echo "waiting for another package manager to release the apt/dpkg lock" \
                 "(${waited}s of ${APT_WAIT}s)..."
        fi
        sleep 5
        waited=$((waited + 5))
    done
}

# apt-get that waits for the locks, and retries twice if it still fails (a lock
# taken between the check and the call, or a transient mirror error).
apt_get() {
    local try
    for try in 1 2 3; do
        if wait_for_apt_locks && $SUDO apt-get -o DPkg::Lock::Timeout="$APT_WAIT" "$@"; then
            return 0
        fi
        if (( try < 3 )); then
            echo "apt-get $1 failed (try $try of 3); retrying in 10 s" >&2
            sleep 10
        fi
    done
    echo "error: apt-get $* failed 3 times" >&2
    return 1
}

export DEBIAN_FRONTEND=noninteractive
apt_get update -q
# Fonts so that text in screenshots is legible.
apt_get install -y -q --no-install-recommends chromium chromium-driver fonts-dejavu-core

"$CHROMIUM" --version
"$CHROMEDRIVER" --version
