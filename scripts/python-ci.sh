#!/usr/bin/env bash
# CI for the ecosystem around the server: the Python SDK (built from proto/ at
# install time) and stepcache-kfp (clients/kfp, the Kubeflow Pipelines runner
# on top of it), their tests against real servers, the core SDK's tests from an
# editable install too, the example pipelines (plain and Kubeflow Pipelines),
# deploy/ validation and buf lint/breaking.
#
# Assumes target/release/stepcache exists (CI builds it first); set
# STEPCACHE_BIN to test another binary. The venv is $VENV (default .venv-ci).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-$ROOT/.venv-ci}
export STEPCACHE_BIN=${STEPCACHE_BIN:-$ROOT/target/release/stepcache}

if [[ ! -x $STEPCACHE_BIN ]]; then
  echo "python-ci: $STEPCACHE_BIN is missing: run 'cargo build --release' first" >&2
  exit 1
fi

echo "== python-ci: venv $VENV"
python3 -m venv "$VENV"
PY=$VENV/bin/python
# A fresh build every time, so that the stubs come from the proto of this commit.
"$PY" -m pip uninstall --quiet --yes stepcache stepcache-kfp 2>/dev/null || true
# One resolution for both: stepcache-kfp's `stepcache` requirement is the
# local clients/python, not a release.
"$PY" -m pip install --quiet "./clients/python[test]" ./clients/kfp pyyaml types-PyYAML
rm -rf clients/python/build clients/kfp/build

PY_SOURCES=(clients/python clients/kfp examples/pipeline_driver.py examples/kfp_pipeline.py scripts/validate-deploy.py)
echo "== python-ci: ruff (lint and format)"
"$VENV/bin/ruff" check --config clients/python/pyproject.toml "${PY_SOURCES[@]}"
"$VENV/bin/ruff" format --check --config clients/python/pyproject.toml "${PY_SOURCES[@]}"

echo "== python-ci: mypy --strict (the installed packages, their tests, the examples, the scripts)"
MYPY=("$PY" -m mypy --config-file clients/python/pyproject.toml)
"${MYPY[@]}" -m stepcache -m stepcache.client -m stepcache.aio -m stepcache.channel -m stepcache.errors \
  -m stepcache.key -m stepcache.step -m stepcache_kfp -m stepcache_kfp.runner
"${MYPY[@]}" clients/python/tests examples/pipeline_driver.py examples/kfp_pipeline.py scripts/validate-deploy.py
# Apart: each tests directory has its own conftest.py; the kfp tests use the core's example_runs.py.
"${MYPY[@]}" clients/kfp/tests clients/python/tests/example_runs.py

echo "== python-ci: pytest clients/python/tests clients/kfp/tests"
# From the repository root, so that the source tree's stepcache/ (which has no
# generated stubs) cannot shadow the installed package. clients/kfp/tests
# loads the live-server fixtures of clients/python/tests/conftest.py.
# Two runs: each directory's tests import helpers from their own conftest.
"$PY" -m pytest -q -p no:cacheprovider clients/python/tests
"$PY" -m pytest -q -p no:cacheprovider clients/kfp/tests

echo "== python-ci: editable install (stubs generated into the source tree), its tests"
# The contributors' loop: `pip install -e` must import from clients/python and
# pass the core SDK's tests there too (stepcache-kfp's are run above).
EDITABLE_VENV=$VENV-editable
python3 -m venv "$EDITABLE_VENV"
"$EDITABLE_VENV/bin/python" -m pip install --quiet -e "./clients/python[test]"
"$EDITABLE_VENV/bin/python" -c 'import stepcache.aio, stepcache.v1.types_pb2 as t, sys
assert t.__file__.startswith(sys.argv[1]), t.__file__' "$ROOT/clients/python/stepcache/v1/"
"$EDITABLE_VENV/bin/python" -m pytest -q -p no:cacheprovider clients/python/tests

echo "== python-ci: validate deploy/"
"$PY" scripts/validate-deploy.py

echo "== python-ci: buf"
scripts/buf-check.sh
echo "python-ci: all passed"
