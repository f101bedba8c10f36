#!/usr/bin/env bash
# The main job on embedded defaults, on a laptop (no GPU, no network): `cdra demo` (README, "Two commands"), with
# this checkout's code. Builds the environment first when it is missing (scripts/setup_env.sh; CDRA_VENV moves it,
# default ~/.venvs/cdra-plugin). Arguments go to `cdra demo`.
#
#   scripts/demo.sh
#   scripts/demo.sh --help
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${CDRA_VENV:-$HOME/.venvs/cdra-plugin}
# Built, or brought up to date when setup.py or setup_env.sh changed (the stamp is written last, so a build that
# was cut short is redone too).
CDRA_VENV=$VENV bash "$REPO/scripts/setup_env.sh" --check 2>/dev/null || CDRA_VENV=$VENV bash "$REPO/scripts/setup_env.sh"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "$VENV/bin/python" -m cdra_plugin.cli demo "$@"
