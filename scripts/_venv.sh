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
    case "$1" in
        "") size="about 20 packages, 170 MB"
            what="multistore and its embedded stores (tantivy, Ladybug, DuckDB)" ;;
        "[test]") size="about 100 packages, 850 MB"
            what="the server drivers, the benchmarks' baselines and the test tools" ;;
        *) size="" what="" ;;
    esac
    echo "==> installing multistore$1 into .venv${size:+ ($size)}"
    [ -n "$what" ] && echo "    $what"
    echo "    the first time this takes 1-3 minutes (downloads); later runs reuse .venv"
    started=$SECONDS
    if ! .venv/bin/python -m pip install --progress-bar off -e ".$1" 2>&1 \
            | scripts/_pip_progress .venv/pip.log; then
        grep -v "is ignored" .venv/pip.log | tail -n 40 >&2
        echo "installing multistore$1 failed (full log: .venv/pip.log)" >&2
        exit 1
    fi
    echo "==> installed in $((SECONDS - started)) s"
    touch "$STAMP"
fi
