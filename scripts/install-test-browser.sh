#!/usr/bin/env bash
# The web-page test drives Debian's Chromium with its ChromeDriver (packages chromium, chromium-driver).
# Installs them when missing; needs root or sudo.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
