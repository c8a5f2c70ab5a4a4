#!/usr/bin/env bash
# Run the whole test suite headless, creating or reusing .venv first.
# Extra arguments go to pytest (e.g. `scripts/run-tests.sh tests/test_loading.py -x`; `-n 0` runs in one process).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup-env.sh" --test
cd "$ROOT"
export QT_QPA_PLATFORM=offscreen
# One pytest worker per core, each with one torch thread: on 2 cores this halves the suite's time (7.4 -> 3.7 min)
# because much of it is single-threaded (imports, subprocess starts, Qt), and one thread per worker keeps two
# workers from fighting over the cores. Subprocesses the tests start inherit the setting.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
status=0
"$ROOT/.venv/bin/python" -m pytest -n auto "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "error: pytest collected no tests; that counts as a failure." >&2
    exit 1
fi
exit "$status"
