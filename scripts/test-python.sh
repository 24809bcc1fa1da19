#!/usr/bin/env bash
# Runs the suite on another CPython: installs it (scripts/python.sh), makes .venv-<version>
# with the project and its dev extras, and runs pytest there with any arguments given.
#
#   scripts/test-python.sh 3.13 [pytest arguments]
#
# Exit status: pytest's; 3 if the interpreter cannot be had (scripts/python.sh said why).
set -euo pipefail
cd "$(dirname "$0")/.."

version="${1:?usage: scripts/test-python.sh VERSION [pytest arguments]}"
shift
venv=".venv-$version"
stamp="$venv/.installed"

python="$(scripts/python.sh "$version")" || exit 3
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  rm -rf "$venv"
  "$python" -m venv --without-pip "$venv"
  # Debian's packages of an interpreter bring pip as a wheel, which their ensurepip looks
  # for in the system's directory, where Debian 12's older pip is: take their own.
  wheel="$(ls "$(dirname "$python")"/../share/python-wheels/pip-*.whl 2>/dev/null | head -n1 || true)"
  if [[ -n $wheel ]]; then
    "$venv/bin/python" "$wheel/pip" install --quiet --no-index "$wheel"
  else
    "$venv/bin/python" -m ensurepip --upgrade --default-pip >/dev/null
  fi
  "$venv/bin/python" -m pip install --quiet -e '.[dev]'
  touch "$stamp"
fi
exec "$venv/bin/python" -m pytest "$@"
