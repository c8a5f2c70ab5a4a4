#!/usr/bin/env bash
# Start Erasure Studio on the built-in model, creating or reusing .venv first.
# Extra arguments go to main.py (e.g. `scripts/run-studio.sh generate --help`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup-env.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" main.py "$@"
