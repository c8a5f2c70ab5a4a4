#!/usr/bin/env bash
# Run the whole test suite headless, creating or reusing .venv first.
# Extra arguments go to pytest (e.g. `scripts/run-tests.sh tests/test_loading.py -x`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup-env.sh" --test
cd "$ROOT"
export QT_QPA_PLATFORM=offscreen
status=0
"$ROOT/.venv/bin/python" -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "error: pytest collected no tests; that counts as a failure." >&2
    exit 1
fi
exit "$status"
