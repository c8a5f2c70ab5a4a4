#!/usr/bin/env bash
# Create or reuse the local virtual environment (.venv) and install what Erasure Studio needs.
#   scripts/setup-env.sh          the studio's dependencies
#   scripts/setup-env.sh --test   the same plus the test tools (pytest, pytest-qt, ruff, ...)
# Idempotent and quick: pip runs only when pyproject.toml (or the Python in .venv) changed since the
# last successful install, which is remembered in a stamp file inside .venv.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
EXTRA="app"
if [ "${1:-}" = "--test" ]; then EXTRA="test"; fi

pick_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.11 python3.12 python3.13 python3; do
        if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

if [ ! -x "$VENV/bin/python" ]; then
    PY="$(pick_python)" || { echo "error: Erasure Studio needs Python 3.11 or newer (sudo apt install python3 python3-venv)." >&2; exit 1; }
    echo "Creating the virtual environment $VENV with $PY ..." >&2
    if ! "$PY" -m venv "$VENV"; then
        rm -rf "$VENV"
        echo "error: could not create $VENV; on Debian install the venv module first (sudo apt install python3-venv)." >&2
        exit 1
    fi
fi

STAMP="$VENV/.erasure-studio-$EXTRA.stamp"
HASH="$({ cat "$ROOT/pyproject.toml"; echo "$EXTRA"; "$VENV/bin/python" -VV; } | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then
    exit 0
fi

echo "Installing dependencies into $VENV (first run, or pyproject.toml changed) ..." >&2
REQS="$(mktemp)"
trap 'rm -f "$REQS"' EXIT
"$VENV/bin/python" - "$ROOT/pyproject.toml" "$EXTRA" >"$REQS" <<'PY'
import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
requirements = list(project["dependencies"])
if sys.argv[2] == "test":
    requirements += project["optional-dependencies"]["test"]
print("\n".join(requirements))
PY
"$VENV/bin/python" -m pip install --disable-pip-version-check --quiet -r "$REQS"

# Qt needs a few system libraries that a minimal Debian lacks; say which instead of failing later.
if ! QT_QPA_PLATFORM=offscreen "$VENV/bin/python" -c "from PySide6 import QtWidgets" 2>/dev/null; then
    echo "error: Qt cannot start; install its system libraries: sudo apt install libgl1 libegl1 libxkbcommon0 libfontconfig1 libdbus-1-3" >&2
    exit 1
fi
echo "$HASH" >"$STAMP"
