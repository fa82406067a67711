#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs what the tests need, then runs ruff and pytest.
#
# It uses the venv at $T5X_VENV (default /tmp/t5x-venv, where ../shared/t5x/setup-t5x.sh or the README's
# t5x instructions put t5x) when that venv can import t5x, so the T5X-integration tests run too; otherwise
# it creates/reuses .venv in the repo, where those tests skip with the reason. Extra arguments go to pytest
# (e.g. `bash scripts/test.sh -m slow` for the long tests, which are deselected by default).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

T5X_VENV=${T5X_VENV:-/tmp/t5x-venv}
if [ -x "$T5X_VENV/bin/python" ] && JAX_PLATFORMS=cpu "$T5X_VENV/bin/python" -c 'import t5x.models' 2>/dev/null; then
  VENV=$T5X_VENV
  echo "== using $VENV (t5x importable: T5X-integration tests will run)"
else
  VENV=${SPECDEC_VENV:-.venv}
  echo "== using $VENV (no t5x venv at $T5X_VENV: T5X-integration tests will skip)"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
fi
PY=$VENV/bin/python

# Install (a no-op when already satisfied). Versions are pinned by constraints.txt.
if ! "$PY" -c 'import specdec_t5x, pytest, hypothesis, torch, transformers, seqio, sacrebleu, ruff' 2>/dev/null; then
  echo "== installing specdec_t5x[all] into $VENV (first run: several minutes)"
  "$PY" -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
  "$PY" -m pip install -q -c constraints.txt -e '.[all]' 2>&1 | grep -v "is ignored" || true
fi
# The scripts the tests run import the installed package: it must be this checkout (a venv shared
# between checkouts points at whichever installed it last). -P: not the current directory's.
if ! "$PY" -P -c 'import pathlib, sys, specdec_t5x
sys.exit(pathlib.Path(specdec_t5x.__file__).resolve().parents[1] != pathlib.Path.cwd().resolve())' 2>/dev/null; then
  echo "== installing this checkout's specdec_t5x into $VENV (editable)"
  "$PY" -m pip install -q --no-deps -e . 2>&1 | grep -v "is ignored" || true
fi

echo "== ruff"
"$PY" -m ruff check .

echo "== pytest"
export JAX_PLATFORMS=cpu
export TF_CPP_MIN_LOG_LEVEL=3
if [ $# -eq 0 ]; then
  set -- -m "not slow"
fi
exec "$PY" -m pytest -q -p no:cacheprovider --durations=15 "$@"
