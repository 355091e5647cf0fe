#!/usr/bin/env bash
# One-step set-up and the project's main commands.
#   bash run.sh demo [T1.nii.gz]   set up, then synthesize a T2 (default input: the ICBM 2009 T1
#                                  template shipped inside the nilearn wheel) and write a preview PNG
#   bash run.sh test               set up, then run the whole test suite
# The virtual environment lives in .venv (override with MRISYNTHESIS_VENV=path).
set -euo pipefail
cd "$(dirname "$0")"
VENV="${MRISYNTHESIS_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "run.sh: first run: creating $VENV and installing PyTorch and the other dependencies" \
         "(several minutes; later runs only check them)" >&2
    "$PYTHON" -m venv "$VENV"
  else
    echo "run.sh: checking the packages in $VENV" >&2
  fi
  # torch 2.13.0 is pinned first so pip takes the CPU build available locally instead of
  # resolving a multi-GB CUDA build; synthesis works with torch >= 2.1, training needs >= 2.3.
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[dev,train,examples]"
}

case "${1:-}" in
  demo)
    setup
    shift
    "$VENV/bin/python" -m MRISynthesisLib.demo "$@"
    ;;
  test)
    setup
    shift
    set +e
    "$VENV/bin/python" -m pytest "$@"
    code=$?
    set -e
    if [ "$code" -eq 5 ]; then echo "no tests were collected: failing"; exit 1; fi
    exit "$code"
    ;;
  *)
    echo "usage: bash run.sh demo [T1.nii.gz] | bash run.sh test [pytest options]" >&2
    exit 2
    ;;
esac
