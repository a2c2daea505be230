#!/usr/bin/env bash
# Debian's Chromium and its ChromeDriver for the browser tests (tests/test_serve.py drives them with
# selenium, pointed at these two files: nothing is downloaded at test time). Idempotent: does nothing
# when both are there. Needs apt-get, as root or through sudo.
set -euo pipefail
CHROMIUM=/usr/bin/chromium
DRIVER=/usr/bin/chromedriver
if [[ -x $CHROMIUM && -x $DRIVER ]]; then
    exit 0
fi
if [[ $(id -u) -eq 0 ]]; then
    SUDO=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "install-chromium.sh: $CHROMIUM or $DRIVER is missing and this user is neither root nor allowed sudo" \
         "without a password; as root run: apt-get update && apt-get install -y chromium chromium-driver" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null; then
    echo "install-chromium.sh: no apt-get here (not Debian/Ubuntu); install Chromium at $CHROMIUM and its" \
         "ChromeDriver at $DRIVER (the same version) another way" >&2
    exit 1
fi
echo "install-chromium.sh: installing Debian's chromium and chromium-driver (for tests/test_serve.py)" >&2
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver
[[ -x $CHROMIUM && -x $DRIVER ]] || { echo "install-chromium.sh: apt-get finished but $CHROMIUM or $DRIVER is still missing" >&2; exit 1; }
