#!/usr/bin/env bash
# The two entry points of the README. Both set up what they need first (scripts/setup.sh).
#   bash scripts/run.sh demo   the main job
#   bash scripts/run.sh test   the architecture and lint checks, then the test suite (under Xvfb
#                              for the napari tests)
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-demo}
shift || true
bash scripts/setup.sh
case "$what" in
  demo)
    exec .venv/bin/berdiff demo "$@"
    ;;
  test)
    # the import-linter contracts and ruff (pyproject.toml) first: either failing stops the run
    .venv/bin/lint-imports
    .venv/bin/ruff check napari_berdiff src_training tests benchmarks scripts
    # pytest-xvfb starts a virtual display for the napari tests; the core tests need none.
    exec .venv/bin/python -m pytest -q "$@"
    ;;
  *)
    echo "usage: bash scripts/run.sh demo|test [args]" >&2
    exit 2
    ;;
esac
