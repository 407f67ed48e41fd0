# Shared by scripts/demo and scripts/test: make .venv and install the package into it.
# Usage: . scripts/_venv.sh EXTRAS   (EXTRAS e.g. "" or "[test]")
set -euo pipefail
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
    echo "multistore needs Python 3.11 or newer as \$PYTHON (now: $("$PYTHON" --version 2>&1))" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    "$PYTHON" -m venv .venv
fi
STAMP=".venv/.installed$1"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    echo "==> installing multistore$1 into .venv"
    if ! .venv/bin/python -m pip install --quiet -e ".$1" > .venv/pip.log 2>&1; then
        grep -v "is ignored" .venv/pip.log >&2
        echo "installing multistore$1 failed (log: .venv/pip.log)" >&2
        exit 1
    fi
    touch "$STAMP"
fi
