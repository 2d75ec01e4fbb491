#!/usr/bin/env bash
# Install what the browser test (tests/test_serve_browser.py) needs: Debian's
# chromium + chromium-driver, and selenium in the project's Python. Idempotent:
# installs only what is missing. Never fails the caller: when Chromium cannot be
# installed it says so and the browser test skips with that reason.
#   usage: scripts/install_browser.sh            (PYTHON=path/to/python to pick the interpreter)
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"

have_browser() {
  { command -v chromium || command -v chromium-browser; } >/dev/null 2>&1 &&
  { command -v chromedriver || [ -x /usr/lib/chromium/chromedriver ]; } >/dev/null 2>&1
}

if have_browser; then
  echo "install_browser: chromium and chromedriver already installed"
else
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else SUDO="none"; fi
  if [ "$SUDO" = none ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser: warning: cannot install chromium here (needs apt-get as root); the browser test will be skipped"
  else
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq >/dev/null 2>&1 || true
    if $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1; then
      echo "install_browser: installed chromium and chromium-driver"
    else
      echo "install_browser: warning: apt-get could not install chromium; the browser test will be skipped"
    fi
  fi
fi

if "$PYTHON" -c "import selenium" >/dev/null 2>&1; then
  echo "install_browser: selenium already installed"
elif "$PYTHON" -m pip install -q -c constraints.txt "selenium>=4.10"; then
  echo "install_browser: installed selenium"
else
  echo "install_browser: warning: pip could not install selenium; the browser test will be skipped"
fi
exit 0
