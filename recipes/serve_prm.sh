#!/usr/bin/env bash
# Pers-GenPRM as OpenRLHF's remote reward model (paper Section 2.3): N vLLM replicas of the PRM checkpoint with
# prefix caching (the step-j prompt repeats step j-1's up to its previous steps), then the step-wise gateway
# (`cdra prm serve`) over all of them. Waits until everything is healthy, prints the --reward.remote_url to use,
# and stays in the foreground: Ctrl-C (or SIGTERM) stops the gateway and the replicas it started.
#
#   PRM_MODEL=checkpoints/pers-genprm bash recipes/serve_prm.sh                 # one replica on GPU 0
#   PRM_MODEL=checkpoints/pers-genprm GPUS=0,1,2,3 bash recipes/serve_prm.sh    # four replicas, one gateway
#   GPUS=0,1,2,3 PRM_TP=2 FAILURE_POLICY=drop bash recipes/serve_prm.sh         # 2 replicas x TP 2; for cdra-train
#   DRY_RUN=1 bash recipes/serve_prm.sh                                         # check inputs, print the commands
#
# FAILURE_POLICY: `fail` (default) is right for every estimator; `drop` only for cdra-train (the cdpa estimator
# excludes the marked samples); `score=X` gives failed steps X. Every value below is an environment variable.
# Before launching it checks every value, the commands, the ports and that torch sees the GPUs in GPUS
# (GPU_CHECK=0 skips that one, for a CPU build of vLLM or a stand-in given as VLLM).
set -euo pipefail

PRM_MODEL=${PRM_MODEL:-checkpoints/pers-genprm}     # checkpoint dir (recipes/train_prm_sft.sh) or HF model id
SERVED_NAME=${SERVED_NAME:-pers-genprm}
GPUS=${GPUS:-0}                                     # comma-separated GPU ids; PRM_TP consecutive ids per replica
PRM_TP=${PRM_TP:-1}
VLLM_HOST=${VLLM_HOST:-127.0.0.1}
VLLM_BASE_PORT=${VLLM_BASE_PORT:-8100}              # replica i listens on VLLM_BASE_PORT + i
GPU_MEMORY_UTILIZATION=${GPU_MEMORY_UTILIZATION:-0.9}
MAX_MODEL_LEN=${MAX_MODEL_LEN:-8192}
VLLM_EXTRA_ARGS=${VLLM_EXTRA_ARGS:-}
GATEWAY_HOST=${GATEWAY_HOST:-127.0.0.1}
GATEWAY_PORT=${GATEWAY_PORT:-5000}
FAILURE_POLICY=${FAILURE_POLICY:-fail}
MAX_STEPS=${MAX_STEPS:-32}                          # carrier width: steps per response
CONCURRENCY=${CONCURRENCY:-64}                      # PRM calls in flight per replica
AUTH_TOKEN_ENV=${AUTH_TOKEN_ENV:-}                  # name of an env var holding a bearer token for the gateway
GATEWAY_EXTRA_ARGS=${GATEWAY_EXTRA_ARGS:-}
LOG_DIR=${LOG_DIR:-logs/serve_prm}
HEALTH_TIMEOUT=${HEALTH_TIMEOUT:-900}               # seconds to wait for each server (model loading is slow)
VLLM=${VLLM:-vllm}                                  # the vLLM command
CDRA=${CDRA:-cdra}                                  # the cdra command
PYTHON=${PYTHON:-python3}
DRY_RUN=${DRY_RUN:-0}

RECIPE=$(basename "$0")
# shellcheck source=lib/checks.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/checks.sh"

check_inputs() {
  need_choice DRY_RUN 0 1
  need_choice GPU_CHECK 0 1
  check_model PRM_MODEL "train it with recipes/train_prm_sft.sh or point PRM_MODEL at a checkpoint folder or hub id"
  [[ -n $SERVED_NAME ]] || die "SERVED_NAME is empty: the model name the gateway asks vLLM for"
  [[ $GPUS =~ ^[0-9]+(,[0-9]+)*$ ]] || die "GPUS=$GPUS: expected comma-separated GPU ids such as 0,1,2,3"
  need_int PRM_TP 1
  IFS=, read -r -a GPU_LIST <<<"$GPUS"
  ((${#GPU_LIST[@]} % PRM_TP == 0)) || die "GPUS=$GPUS has ${#GPU_LIST[@]} GPU(s), not a multiple of PRM_TP=$PRM_TP"
  REPLICAS=$((${#GPU_LIST[@]} / PRM_TP))
  need_number GPU_MEMORY_UTILIZATION "x > 0 && x <= 1" "in (0, 1]"
  need_int VLLM_BASE_PORT 1 $((65535 - REPLICAS + 1))
  need_int GATEWAY_PORT 1 65535
  need_int MAX_MODEL_LEN 1
  need_int MAX_STEPS 1
  need_int CONCURRENCY 1
  need_int HEALTH_TIMEOUT 1
  [[ -n $VLLM_HOST && -n $GATEWAY_HOST ]] || die "VLLM_HOST and GATEWAY_HOST must not be empty"
  if ((GATEWAY_PORT >= VLLM_BASE_PORT && GATEWAY_PORT < VLLM_BASE_PORT + REPLICAS)); then
    die "GATEWAY_PORT=$GATEWAY_PORT collides with the replica ports $VLLM_BASE_PORT..$((VLLM_BASE_PORT + REPLICAS - 1))"
  fi
  [[ $FAILURE_POLICY =~ ^(drop|fail|score=-?([0-9]+\.?[0-9]*|\.[0-9]+))$ ]] || die "FAILURE_POLICY=$FAILURE_POLICY: expected drop, fail or score=X"
  need_env_var_name AUTH_TOKEN_ENV
}

check_gpus_named() {  # every id in GPUS exists (physical ids: each replica gets CUDA_VISIBLE_DEVICES=<its ids>)
  local id highest=0
  for id in "${GPU_LIST[@]}"; do ((10#$id < highest)) || highest=$((10#$id)); done
  check_gpus $((highest + 1)) "GPUS=$GPUS" physical
}

port_busy() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

build_commands() {
  read -r -a VLLM_EXTRA <<<"$VLLM_EXTRA_ARGS"
  read -r -a GATEWAY_EXTRA <<<"$GATEWAY_EXTRA_ARGS"
  BACKENDS=()
  VLLM_CMDS=()
  DEVICES=()
  local i
  for ((i = 0; i < REPLICAS; i++)); do
    DEVICES+=("$(IFS=,; echo "${GPU_LIST[*]:i*PRM_TP:PRM_TP}")")
    VLLM_CMDS+=("$(printf '%q ' "$VLLM" serve "$PRM_MODEL" --served-model-name "$SERVED_NAME" \
      --host "$VLLM_HOST" --port $((VLLM_BASE_PORT + i)) --tensor-parallel-size "$PRM_TP" \
      --gpu-memory-utilization "$GPU_MEMORY_UTILIZATION" --max-model-len "$MAX_MODEL_LEN" \
      --enable-prefix-caching "${VLLM_EXTRA[@]}")")
    BACKENDS+=("http://$VLLM_HOST:$((VLLM_BASE_PORT + i))/v1")
  done
  GATEWAY_CMD=("$CDRA" prm serve --backend "$(IFS=,; echo "${BACKENDS[*]}")" --model "$SERVED_NAME"
    --host "$GATEWAY_HOST" --port "$GATEWAY_PORT" --failure-policy "$FAILURE_POLICY" --max-steps "$MAX_STEPS"
    --concurrency "$CONCURRENCY" "${GATEWAY_EXTRA[@]}")
  [[ -z $AUTH_TOKEN_ENV ]] || GATEWAY_CMD+=(--auth-token-env "$AUTH_TOKEN_ENV")
}

PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}

wait_healthy() {  # URL PID LOG [bearer token]: poll until URL answers 200, the process dies, or the timeout
  local url=$1 pid=$2 log=$3 token=${4:-} deadline=$((SECONDS + HEALTH_TIMEOUT))
  until TOKEN=$token "$PYTHON" - "$url" <<'PY' 2>/dev/null; do
import os, sys, urllib.request
request = urllib.request.Request(sys.argv[1])
if os.environ.get("TOKEN"):
    request.add_header("Authorization", "Bearer " + os.environ["TOKEN"])
with urllib.request.urlopen(request, timeout=5) as response:
    sys.exit(0 if response.status == 200 else 1)
PY
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$log" >&2 || true
      die "the server for $url exited; its log: $log"
    fi
    ((SECONDS < deadline)) || die "$url not healthy after $HEALTH_TIMEOUT s (HEALTH_TIMEOUT); see $log"
    sleep 2
  done
}

check_inputs
build_commands
if [[ $DRY_RUN == 1 ]]; then
  check_gpus_named
  note "DRY_RUN=1: every value checked; vllm, cdra, the ports and the GPUs are not. The commands:"
  for ((i = 0; i < REPLICAS; i++)); do echo "CUDA_VISIBLE_DEVICES=${DEVICES[i]} ${VLLM_CMDS[i]}"; done
  printf '%q ' "${GATEWAY_CMD[@]}"
  echo
  exit 0
fi
command -v "$VLLM" >/dev/null || die "'$VLLM' is not on PATH (VLLM): activate the environment (source \"\${CDRA_VENV:-\$HOME/.venvs/cdra-plugin}/bin/activate\")"
command -v "$CDRA" >/dev/null || die "'$CDRA' is not on PATH (CDRA): pip install -e . in the environment"
check_gpus_named
for ((i = 0; i < REPLICAS; i++)); do
  ! port_busy "$VLLM_HOST" $((VLLM_BASE_PORT + i)) || die "port $((VLLM_BASE_PORT + i)) on $VLLM_HOST is in use (VLLM_BASE_PORT)"
done
! port_busy "$GATEWAY_HOST" "$GATEWAY_PORT" || die "port $GATEWAY_PORT on $GATEWAY_HOST is in use (GATEWAY_PORT)"

mkdir -p "$LOG_DIR"
trap cleanup EXIT
trap 'exit 130' INT TERM
for ((i = 0; i < REPLICAS; i++)); do
  log="$LOG_DIR/vllm_$i.log"
  echo "$RECIPE: replica $i on GPU(s) ${DEVICES[i]}, port $((VLLM_BASE_PORT + i)), log $log"
  CUDA_VISIBLE_DEVICES=${DEVICES[i]} bash -c "exec ${VLLM_CMDS[i]}" >"$log" 2>&1 &
  PIDS+=($!)
done
for ((i = 0; i < REPLICAS; i++)); do
  wait_healthy "${BACKENDS[i]}/models" "${PIDS[i]}" "$LOG_DIR/vllm_$i.log"
done
echo "$RECIPE: $REPLICAS replica(s) ready; starting the gateway (log $LOG_DIR/gateway.log)"
"${GATEWAY_CMD[@]}" >"$LOG_DIR/gateway.log" 2>&1 &
PIDS+=($!)
TOKEN=""
[[ -z $AUTH_TOKEN_ENV ]] || TOKEN=${!AUTH_TOKEN_ENV}
wait_healthy "http://$GATEWAY_HOST:$GATEWAY_PORT/health" "${PIDS[-1]}" "$LOG_DIR/gateway.log" "$TOKEN"
echo "$RECIPE: ready. Train with:  --reward.remote_url http://$GATEWAY_HOST:$GATEWAY_PORT/get_reward"
echo "$RECIPE: (REWARD_URL=http://$GATEWAY_HOST:$GATEWAY_PORT/get_reward for recipes/train_cdpa.sh); Ctrl-C stops all"
wait -n "${PIDS[@]}" || true
die "a server exited; logs in $LOG_DIR"
