#!/usr/bin/env bash
# Create or update the project's virtual environment (.venv at the repo root). Idempotent: a second run with
# an unchanged pyproject.toml does nothing. With --system it also installs the Debian packages the test
# fleet needs (sshd, network namespaces, podman, qemu, cross compiler, chromium) when run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3.10 python3; do
    if command -v "$cand" >/dev/null 2>&1; then PY=$cand; break; fi
  done
fi
[ -n "$PY" ] || { echo "setup: no python3 found (need 3.10+; 3.11 recommended)" >&2; exit 1; }

if [ "${1:-}" = "--system" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    missing=$(for p in $(grep -v '^#' scripts/apt-packages.txt); do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
    if [ -n "$missing" ]; then
      echo "setup: installing system packages: $(echo $missing | tr '\n' ' ')"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -q >/dev/null
      # shellcheck disable=SC2086
      apt-get install -y -q --no-install-recommends $missing >/dev/null
    fi
  else
    echo "setup: not root or no apt-get: skipping system packages (fleet/image tests will be skipped)" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PY"
  "$PY" -m venv .venv
fi
stamp=.venv/.dlas-installed
want=$(cat pyproject.toml agent/pyproject.toml requirements-test.txt 2>/dev/null | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python packages into .venv (first run: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test]" -r requirements-test.txt
  echo "$want" > "$stamp"
fi
