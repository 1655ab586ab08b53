#!/usr/bin/env bash
# Set up everything napari-berdiff needs on a fresh Debian/Ubuntu machine, idempotently:
#  - system libraries for Qt/napari under Xvfb (when run as root with apt-get available),
#  - a virtual environment in .venv with torch 2.13.0 (CPU wheel) installed FIRST, so that the
#    package's `torch>=2.1` range does not pull a multi-GB CUDA build,
#  - the package itself (editable) with its test/GUI extras; skipped when it is installed from this
#    folder and pyproject.toml has not changed since (a stamp in the venv).
# Usage: bash scripts/setup.sh            (everything)
#        SKIP_APT=1 bash scripts/setup.sh (no system packages)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
APT_PACKAGES="xvfb xauth libgl1 libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-icccm4 \
libxcb-keysyms1 libxcb-cursor0 libxcb-image0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 \
libxcb-randr0 libxcb-xkb1 libfontconfig1 libdbus-1-3"

if [ "${SKIP_APT:-0}" != "1" ] && command -v apt-get >/dev/null 2>&1; then
  missing=""
  for p in $APT_PACKAGES; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
  done
  if [ -n "$missing" ]; then
    if [ "$(id -u)" = "0" ]; then
      echo "setup: installing system packages:$missing"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    else
      echo "setup: warning: missing system packages (run as root to install):$missing" >&2
    fi
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PY" -m venv "$VENV"
fi
# pip runs only when something it installs from changed: the stamp holds pyproject.toml's hash and
# the torch version, and the package must import (isolated: not from the current folder) from here
STAMP="$VENV/.napari-berdiff-setup"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) torch==$TORCH_VERSION"
have="$(cat "$STAMP" 2>/dev/null || true)"
installed_from() {
  "$VENV/bin/python" -I -c 'import os, napari_berdiff as m; print(os.path.dirname(os.path.dirname(os.path.abspath(m.__file__))))' 2>/dev/null || true
}
if [ "$want" = "$have" ] && [ "$(installed_from)" = "$PWD" ]; then
  echo "setup: napari-berdiff[test] is installed and pyproject.toml is unchanged; skipping pip"
else
  rm -f "$STAMP"
  "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('$TORCH_VERSION') else 1)" 2>/dev/null; then
    echo "setup: installing torch==$TORCH_VERSION"
    "$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION" 2>&1 | grep -v "^WARNING: Location" || true
  fi
  echo "setup: installing napari-berdiff[test]"
  "$VENV/bin/python" -m pip install -q -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
  if [ "$(installed_from)" = "$PWD" ]; then echo "$want" > "$STAMP"; fi
fi
"$VENV/bin/python" -c "import torch, napari_berdiff; print('setup: ok (torch', torch.__version__ + ', napari-berdiff', napari_berdiff.__version__ + ')')"
