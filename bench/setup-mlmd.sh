#!/usr/bin/env bash
# Creates bench/.venv with ML Metadata 1.17.1 (the peer of bench/mlmd_peer.py).
# A venv of its own: ml-metadata pins protobuf 4, which breaks grpcio-tools and
# other protobuf 5/6 users in a shared environment.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3}"
"$python" -c 'import sys; assert sys.version_info[:2] in [(3, 9), (3, 10), (3, 11)], \
  "ml-metadata 1.17.1 ships wheels for CPython 3.9-3.11 only"'
if [ ! -x "$here/.venv/bin/python" ]; then
  "$python" -m venv "$here/.venv"
fi
"$here/.venv/bin/pip" install --quiet --upgrade pip
"$here/.venv/bin/pip" install --quiet 'ml-metadata==1.17.1'
"$here/.venv/bin/python" -c 'import ml_metadata, google.protobuf as pb; print("ml-metadata", ml_metadata.__version__, "protobuf", pb.__version__)'
# The preload-only fsync shim (see bench/nofsync.c), when a C compiler exists.
if command -v cc >/dev/null 2>&1; then
  cc -shared -fPIC -O2 -o "$here/.venv/nofsync.so" "$here/nofsync.c"
fi
