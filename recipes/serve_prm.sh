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
#   REWARD_AGGREGATION=sum bash recipes/serve_prm.sh                            # for recipes/train_grpo_baseline.sh
#
# FAILURE_POLICY: `fail` (default) is right for every estimator; `drop` only for cdra-train (the cdpa estimator
# excludes the marked samples); `score=X` gives failed steps X. REWARD_AGGREGATION: the scalar `rewards` that plain
# OpenRLHF estimators train on (cdra-train reads the step scores instead); empty = the gateway's default, min (the
# lowest step score), which splitting, padding, repeating or reordering steps cannot raise; `sum` is the paper's
# R_dense, which splitting can (the README's gateway section): only to reproduce the paper's GRPO (with PRM) row. Every value below is an
# environment variable. Before launching it checks every value, the commands, the ports and that torch sees the
# GPUs in GPUS (GPU_CHECK=0 skips that one, for a CPU build of vLLM or a stand-in given as VLLM).
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
REWARD_AGGREGATION=${REWARD_AGGREGATION:-}          # min | mean | weighted_mean | sum; empty: the default, min
MAX_STEPS=${MAX_STEPS:-32}                          # carrier width: steps per response
CONCURRENCY=${CONCURRENCY:-256}                     # PRM calls in flight per replica
AUTH_TOKEN_ENV=${AUTH_TOKEN_ENV:-}                  # name of an env var holding a bearer token for the gateway
GATEWAY_EXTRA_ARGS=${GATEWAY_EXTRA_ARGS:-}
LOG_DIR=${LOG_DIR:-logs/serve_prm}
HEALTH_TIMEOUT=${HEALTH_TIMEOUT:-900}               # seconds to wait for each server (model loading is slow)
VLLM=${VLLM:-vllm}                                  # the vLLM command (words are split: "python -m ..." works)
CDRA=${CDRA:-cdra}                                  # the cdra command (likewise)
PYTHON=${PYTHON:-python3}
DRY_RUN=${DRY_RUN:-0}

RECIPE=$(basename "$0")
# shellcheck source=lib/checks.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/checks.sh"
# shellcheck source=lib/servers.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/servers.sh"

check_inputs() {
  need_choice DRY_RUN 0 1
  need_choice GPU_CHECK 0 1
  check_model PRM_MODEL "train it with recipes/train_prm_sft.sh or point PRM_MODEL at a checkpoint folder or hub id"
  [[ -n $SERVED_NAME ]] || die "SERVED_NAME is empty: the model name the gateway asks vLLM for"
  need_gpu_ids GPUS
  need_int PRM_TP 1
  IFS=, read -r -a GPU_LIST <<<"$GPUS"
  ((${#GPU_LIST[@]} % PRM_TP == 0)) || die "GPUS=$GPUS has ${#GPU_LIST[@]} GPU(s), not a multiple of PRM_TP=$PRM_TP"
  REPLICAS=$((${#GPU_LIST[@]} / PRM_TP))
  check_vllm_values
  need_int VLLM_BASE_PORT 1 $((65535 - REPLICAS + 1))
  need_int GATEWAY_PORT 1 65535
  need_int MAX_STEPS 1
  need_llm_values "the PRM" concurrency:CONCURRENCY
  need_host GATEWAY_HOST
  if ((GATEWAY_PORT >= VLLM_BASE_PORT && GATEWAY_PORT < VLLM_BASE_PORT + REPLICAS)); then
    die "GATEWAY_PORT=$GATEWAY_PORT collides with the replica ports $VLLM_BASE_PORT..$((VLLM_BASE_PORT + REPLICAS - 1))"
  fi
  [[ $FAILURE_POLICY =~ ^(drop|fail|score=-?([0-9]+\.?[0-9]*|\.[0-9]+))$ ]] || die "FAILURE_POLICY=$FAILURE_POLICY: expected drop, fail or score=X"
  need_aggregation REWARD_AGGREGATION
  need_env_var_name AUTH_TOKEN_ENV
  [[ ! -e $LOG_DIR || -d $LOG_DIR ]] || die "LOG_DIR=$LOG_DIR exists and is not a folder"
}

build_commands() {
  local cdra gateway_extra i
  read -r -a cdra <<<"$CDRA"
  read -r -a gateway_extra <<<"$GATEWAY_EXTRA_ARGS"
  BACKENDS=()
  VLLM_CMDS=()
  DEVICES=()
  for ((i = 0; i < REPLICAS; i++)); do
    DEVICES+=("$(IFS=,; echo "${GPU_LIST[*]:i*PRM_TP:PRM_TP}")")
    VLLM_CMDS+=("$(vllm_command "$PRM_MODEL" "$SERVED_NAME" $((VLLM_BASE_PORT + i)) "$PRM_TP" --enable-prefix-caching)")
    BACKENDS+=("http://$VLLM_HOST:$((VLLM_BASE_PORT + i))/v1")
  done
  GATEWAY_CMD=("${cdra[@]}" prm serve --backend "$(IFS=,; echo "${BACKENDS[*]}")" --model "$SERVED_NAME"
    --host "$GATEWAY_HOST" --port "$GATEWAY_PORT" --failure-policy "$FAILURE_POLICY" --max-steps "$MAX_STEPS"
    --concurrency "$CONCURRENCY")
  [[ -z $REWARD_AGGREGATION ]] || GATEWAY_CMD+=(--reward-aggregation "$REWARD_AGGREGATION")
  [[ -z $AUTH_TOKEN_ENV ]] || GATEWAY_CMD+=(--auth-token-env "$AUTH_TOKEN_ENV")
  GATEWAY_CMD+=("${gateway_extra[@]}")
}

check_inputs
build_commands
if [[ $DRY_RUN == 1 ]]; then
  check_gpu_ids GPUS
  print_settings
  note "DRY_RUN=1: every value checked; vllm, cdra, the ports and the GPUs are not. The commands:"
  for ((i = 0; i < REPLICAS; i++)); do echo "CUDA_VISIBLE_DEVICES=${DEVICES[i]} ${VLLM_CMDS[i]}"; done
  printf '%q ' "${GATEWAY_CMD[@]}"
  echo
  exit 0
fi
need_command VLLM
need_command CDRA
check_gpu_ids GPUS
for ((i = 0; i < REPLICAS; i++)); do need_free_port "$VLLM_HOST" $((VLLM_BASE_PORT + i)) VLLM_BASE_PORT; done
need_free_port "$GATEWAY_HOST" "$GATEWAY_PORT" GATEWAY_PORT

mkdir -p "$LOG_DIR"
stop_on_exit
for ((i = 0; i < REPLICAS; i++)); do
  log="$LOG_DIR/vllm_$i.log"
  echo "$RECIPE: replica $i on GPU(s) ${DEVICES[i]}, port $((VLLM_BASE_PORT + i)), log $log"
  CUDA_VISIBLE_DEVICES=${DEVICES[i]} bash -c "exec ${VLLM_CMDS[i]}" >"$log" 2>&1 &
  STARTED+=($!)
done
for ((i = 0; i < REPLICAS; i++)); do
  wait_healthy "${BACKENDS[i]}/models" "${STARTED[i]}" "$LOG_DIR/vllm_$i.log"
done
echo "$RECIPE: $REPLICAS replica(s) ready; starting the gateway (log $LOG_DIR/gateway.log)"
"${GATEWAY_CMD[@]}" >"$LOG_DIR/gateway.log" 2>&1 &
STARTED+=($!)
TOKEN=""
[[ -z $AUTH_TOKEN_ENV ]] || TOKEN=${!AUTH_TOKEN_ENV}
wait_healthy "http://$GATEWAY_HOST:$GATEWAY_PORT/health" "${STARTED[-1]}" "$LOG_DIR/gateway.log" "$TOKEN"
echo "$RECIPE: ready. Train with:  --reward.remote_url http://$GATEWAY_HOST:$GATEWAY_PORT/get_reward"
echo "$RECIPE: (REWARD_URL=http://$GATEWAY_HOST:$GATEWAY_PORT/get_reward for recipes/train_cdpa.sh; reward aggregation ${REWARD_AGGREGATION:-as the gateway defaults}); Ctrl-C stops all"
wait -n "${STARTED[@]}" || true
die "a server exited; logs in $LOG_DIR"
