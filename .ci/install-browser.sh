#!/bin/sh
# Install Debian's chromium package at /usr/bin/chromium for the browser tests
# (pytest -m browser). Python playwright drives this binary through executable_path,
# so `playwright install` and its browser download are not needed.
set -eu

if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y chromium
/usr/bin/chromium --version
