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
die() {
  echo "$RECIPE: error: $*" >&2
  exit 2
}
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

check_inputs() {
  if [[ $PRM_MODEL == /* || $PRM_MODEL == .* || -e $PRM_MODEL || $PRM_MODEL == checkpoints/* ]]; then
    [[ -f $PRM_MODEL/config.json ]] || die "PRM_MODEL=$PRM_MODEL has no config.json: train it with recipes/train_prm_sft.sh or point PRM_MODEL at a checkpoint"
  fi
  [[ $GPUS =~ ^[0-9]+(,[0-9]+)*$ ]] || die "GPUS=$GPUS: expected comma-separated GPU ids such as 0,1,2,3"
  is_uint "$PRM_TP" && ((PRM_TP >= 1)) || die "PRM_TP=$PRM_TP: expected a positive integer"
  IFS=, read -r -a GPU_LIST <<<"$GPUS"
  ((${#GPU_LIST[@]} % PRM_TP == 0)) || die "GPUS=$GPUS has ${#GPU_LIST[@]} GPU(s), not a multiple of PRM_TP=$PRM_TP"
  REPLICAS=$((${#GPU_LIST[@]} / PRM_TP))
  local name
  for name in VLLM_BASE_PORT GATEWAY_PORT MAX_MODEL_LEN MAX_STEPS CONCURRENCY HEALTH_TIMEOUT; do
    is_uint "${!name}" || die "$name=${!name}: expected a non-negative integer"
  done
  ((VLLM_BASE_PORT + REPLICAS <= 65535 && GATEWAY_PORT <= 65535)) || die "ports out of range"
  if ((GATEWAY_PORT >= VLLM_BASE_PORT && GATEWAY_PORT < VLLM_BASE_PORT + REPLICAS)); then
    die "GATEWAY_PORT=$GATEWAY_PORT collides with the replica ports $VLLM_BASE_PORT..$((VLLM_BASE_PORT + REPLICAS - 1))"
  fi
  [[ $FAILURE_POLICY =~ ^(drop|fail|score=-?[0-9.]+)$ ]] || die "FAILURE_POLICY=$FAILURE_POLICY: expected drop, fail or score=X"
  [[ -z $AUTH_TOKEN_ENV || -n ${!AUTH_TOKEN_ENV:-} ]] || die "AUTH_TOKEN_ENV=$AUTH_TOKEN_ENV names an unset or empty variable"
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
  for ((i = 0; i < REPLICAS; i++)); do echo "CUDA_VISIBLE_DEVICES=${DEVICES[i]} ${VLLM_CMDS[i]}"; done
  printf '%q ' "${GATEWAY_CMD[@]}"
  echo
  exit 0
fi
command -v "$VLLM" >/dev/null || die "'$VLLM' is not on PATH (VLLM): activate the environment (source ~/.venvs/cdra-plugin/bin/activate)"
command -v "$CDRA" >/dev/null || die "'$CDRA' is not on PATH (CDRA): pip install -e . in the environment"
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
