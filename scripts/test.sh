#!/usr/bin/env bash
# What CI runs (.ci/run): ruff check, ruff format --check, then the test suite, all on this checkout. Builds the
# environment first when it is missing or out of date (scripts/setup_env.sh; CDRA_VENV moves it, default
# ~/.venvs/cdra-plugin).
#
#   scripts/test.sh                          # everything
#   scripts/test.sh tests/test_steps.py -x   # arguments go to pytest
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${CDRA_VENV:-$HOME/.venvs/cdra-plugin}
# Built, or brought up to date when setup.py or setup_env.sh changed (the stamp is written last, so a build that
# was cut short is redone too).
CDRA_VENV=$VENV bash "$REPO/scripts/setup_env.sh" --check 2>/dev/null || CDRA_VENV=$VENV bash "$REPO/scripts/setup_env.sh"
cd "$REPO"
# This checkout's code, whichever checkout the environment's editable install points at.
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
exec "$VENV/bin/python" -m pytest -q "$@"
