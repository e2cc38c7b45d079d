#!/bin/sh
# Make sure Debian's chromium is installed for the browser test (tests/e2e/test_web_ui.py).
# Idempotent. We use the distribution's browser, never `playwright install`: it comes from
# the same package registry as everything else and gets security updates with the system.
# Never fails the build by itself: without root it only prints a hint, and the test then
# skips (or fails under CI=true) with the same hint.
set -u

BROWSER=/usr/bin/chromium

if [ -x "$BROWSER" ]; then
    echo "ensure_browser: $BROWSER is installed ($("$BROWSER" --version 2>/dev/null || echo 'version unknown'))"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "ensure_browser: $BROWSER is missing and we are not root; install it with:" >&2
    echo "    sudo apt-get update && sudo apt-get install -y --no-install-recommends chromium" >&2
    exit 0
fi

echo "ensure_browser: $BROWSER is missing; installing Debian's chromium with apt-get"
if apt-get update && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends chromium; then
    echo "ensure_browser: installed $("$BROWSER" --version 2>/dev/null || echo chromium)"
else
    echo "ensure_browser: apt-get could not install chromium; the browser test will not run" >&2
fi
exit 0
