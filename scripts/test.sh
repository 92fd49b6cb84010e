#!/usr/bin/env bash
# Quick start, step 2: set up .venv (plus the Debian packages of the simulated test fleet when root) and run
# the test suite. Extra arguments go to pytest (e.g. -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --system
export PYTHONUNBUFFERED=1
export PATH="$PWD/.venv/bin:$PATH"  # tools installed into the venv (hadolint) are found by the tests
set +e
.venv/bin/python -m pytest -ra "$@"
rc=$?
set -e
[ "$rc" = 5 ] && { echo "test: pytest collected no tests" >&2; exit 1; }
exit "$rc"
