#!/usr/bin/env bash
# Build (or reuse) the cdra-plugin virtualenv: OpenRLHF 0.11.2 and its stack, then this package in editable mode.
#
#   bash scripts/setup_env.sh            # venv at $CDRA_VENV (default ~/.venvs/cdra-plugin)
#   CDRA_VENV=/opt/cdra bash scripts/setup_env.sh
#   CDRA_DEVICE=cpu|gpu                  # force a flavour; default: gpu when nvidia-smi sees a GPU
#   CDRA_TORCH_INDEX=URL                 # CPU flavour: index for the torch 2.13.0 CPU wheel (default: pip's own)
#   bash scripts/setup_env.sh --check    # exit 0 when the environment is built for today's requirements, else 1
#
# With an NVIDIA GPU it installs the normal wheels (openrlhf[vllm], a compiled flash-attn). Without one it follows
# the CPU recipe verified for OpenRLHF 0.11.2: torch 2.13.0 CPU, vllm 0.29.0 without torchvision/torchaudio (their PyPI
# builds break transformers beside a CPU torch), flash-attn's Python files only, openrlhf 0.11.2.
# A stamp file records a hash of the requirements; when it matches, the script only re-checks imports (seconds).
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CDRA_VENV:-$HOME/.venvs/cdra-plugin}"
PYTHON="${CDRA_PYTHON:-python3}"

say() { printf '[setup_env] %s\n' "$*"; }
die() { printf '[setup_env] error: %s\n' "$*" >&2; exit 1; }

[[ "$(uname -s)" == "Linux" ]] || die "unsupported platform $(uname -s): OpenRLHF, vLLM and DeepSpeed need Linux."
[[ "$(uname -m)" == "x86_64" ]] || die "unsupported architecture $(uname -m): the pinned wheels exist for x86_64 only."
command -v "$PYTHON" >/dev/null || die "$PYTHON not found; set CDRA_PYTHON to a Python 3.10-3.12 interpreter."
PYVER="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
case "$PYVER" in
  3.10|3.11|3.12) ;;
  *) die "Python $PYVER is not supported (need 3.10-3.12; the CPU recipe was verified on 3.11). Set CDRA_PYTHON." ;;
esac

DEVICE="${CDRA_DEVICE:-}"
if [[ -z "$DEVICE" ]]; then
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then DEVICE=gpu; else DEVICE=cpu; fi
fi
[[ "$DEVICE" == cpu || "$DEVICE" == gpu ]] || die "CDRA_DEVICE must be cpu or gpu, got '$DEVICE'."

STAMP_INPUT="$(cat "$REPO_DIR/setup.py" "$REPO_DIR/scripts/setup_env.sh"; echo "$DEVICE $PYVER")"
WANT_HASH="$(printf '%s' "$STAMP_INPUT" | sha256sum | cut -d' ' -f1)"
STAMP="$VENV/.cdra-env-stamp"
if [[ "${1:-}" == --check ]]; then
  [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT_HASH" ]]
  exit
fi

check_env() {
  "$VENV/bin/python" - <<'PY'
import importlib.util, sys
bad = [m for m in ("torchvision", "torchaudio") if importlib.util.find_spec(m)]
if bad and not __import__("torch").cuda.is_available():
    sys.exit(f"{bad} installed beside a CPU torch: they break transformers imports; run the setup script again.")
from importlib.metadata import version
import openrlhf, cdra_plugin  # noqa: F401  (importable, not just installed)
print(f"[setup_env] ok: openrlhf {version('openrlhf')}, torch {version('torch')}, cdra-plugin {cdra_plugin.__version__}")
PY
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT_HASH" ]]; then
  say "reusing $VENV (requirements unchanged)"
  "$VENV/bin/pip" install --quiet --no-deps --no-build-isolation -e "$REPO_DIR" >/dev/null
  check_env
  exit 0
fi

say "building $VENV for $DEVICE with Python $PYVER"
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/pip" install --progress-bar off)
"${PIP[@]}" --quiet --upgrade pip setuptools wheel psutil ninja packaging

if [[ "$DEVICE" == gpu ]]; then
  say "installing openrlhf[vllm]==0.11.2 (CUDA wheels)"
  "${PIP[@]}" "openrlhf[vllm]==0.11.2"
  say "installing flash-attn 2.8.3 (compiled)"
  "${PIP[@]}" --no-build-isolation flash-attn==2.8.3
else
  say "1/4 torch 2.13.0 (CPU build)"
  # Set CDRA_TORCH_INDEX=https://download.pytorch.org/whl/cpu where the default index would give a CUDA build.
  "${PIP[@]}" torch==2.13.0 ${CDRA_TORCH_INDEX:+--index-url "$CDRA_TORCH_INDEX"}
  say "2/4 vllm 0.29.0"
  "${PIP[@]}" vllm==0.29.0 torch==2.13.0
  say "3/4 flash-attn 2.8.3 (Python files only, no CUDA build)"
  FLASH_ATTENTION_FORCE_BUILD=TRUE FLASH_ATTENTION_SKIP_CUDA_BUILD=TRUE \
    "${PIP[@]}" --no-build-isolation flash-attn==2.8.3 torch==2.13.0
  # OpenRLHF imports flash-attn's CUDA extension at import time. A guard module stands in for it so that the host
  # imports (`cdra-train --help`, tests); any use of a kernel raises with the reason. Training needs a GPU env.
  SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  cat > "$SITE/flash_attn_2_cuda.py" <<'PY'
"""Guard written by cdra-plugin's scripts/setup_env.sh for a CPU-only environment: flash-attn has no CUDA kernels
here. Importing succeeds (OpenRLHF imports flash-attn at import time); using any kernel raises."""


def __getattr__(name):
    raise RuntimeError(
        f"flash_attn_2_cuda.{name}: this is a CPU-only cdra-plugin environment without flash-attn kernels; "
        "run training in the GPU environment (scripts/setup_env.sh on a machine with an NVIDIA GPU)."
    )
PY
  say "4/4 openrlhf 0.11.2"
  "${PIP[@]}" openrlhf==0.11.2 torch==2.13.0
fi

say "installing cdra-plugin (editable) with the test and trl extras"
"${PIP[@]}" --no-build-isolation -e "$REPO_DIR[test,trl]" $([[ "$DEVICE" == cpu ]] && echo torch==2.13.0)

if [[ "$DEVICE" == cpu ]]; then
  # A later install can pull these back; remove them every time.
  "$VENV/bin/pip" uninstall --yes --quiet torchvision torchaudio 2>/dev/null || true
fi

check_env
echo "$WANT_HASH" > "$STAMP"
say "done: activate with 'source $VENV/bin/activate'"
