#!/usr/bin/env bash
# Critique-Driven Policy Alignment (paper Section 2.4, steps 2-5): online RL of the RFT policy with the per-token
# advantage of Eq. 3 from Pers-GenPRM step scores, on OpenRLHF (Ray + vLLM + DeepSpeed), via `cdra-train`.
#
# The paper's setting is the default: Qwen2.5-7B-Instruct initialised from the RFT checkpoint, G = 5 responses per
# prompt at temperature 1.0, up to 400 optimisation steps, KL to the reference policy, hybrid engine (actor,
# reference and vLLM colocated on the same GPUs). Before launching it checks every value, the prompts, the policy
# checkpoint, the PRM gateway (`recipes/serve_prm.sh`) and the GPUs; DRY_RUN=1 all but the GPUs and Ray.
#
#   bash recipes/serve_prm.sh &                                # Pers-GenPRM behind vLLM + the step-wise gateway
#   bash recipes/train_cdpa.sh                                 # 1 node: starts a local Ray head if none answers
#   DRY_RUN=1 bash recipes/train_cdpa.sh                       # check, print the command, launch nothing
#   CDPA_MODE=process N_SAMPLES=8 bash recipes/train_cdpa.sh
#   RAY_ADDRESS=http://head:8265 NNODES=4 bash recipes/train_cdpa.sh   # multi-node: a Ray cluster you started
#   ESTIMATOR=group_norm bash recipes/train_cdpa.sh            # see train_grpo_baseline.sh for the GRPO baseline
#   STREAM_SCORING=1 bash recipes/train_cdpa.sh                # score each step while the policy writes the next
#
# STREAM_SCORING=1 runs `cdra-train --cdpa.stream_scoring`: the PRM scores each step while the policy writes the
# next, so scoring ends almost with generation and needs fewer PRM replicas (docs/gateway.md, "Streaming step
# scoring"); rewards are the same. It is off by default until it has run on GPUs: its tests and benchmark run a
# simulated vLLM engine on CPUs. The default (0) scores each sample when it ends, as OpenRLHF does.
#
# Multi-node: on the head `ray start --head --num-gpus 8`, on every other node `ray start --address HEAD_IP:6379
# --num-gpus 8`; cdra-plugin (scripts/setup_env.sh) must be installed on every node. Every value below is an
# environment variable with a default; hyper-parameters the paper does not give are OpenRLHF's usual GRPO ones.
set -euo pipefail

# --- data (from `cdra data prepare`)
PROMPTS=${PROMPTS:-data/deeppref/rl_prompts.jsonl}
EVAL_PROMPTS=${EVAL_PROMPTS:-}
INPUT_KEY=${INPUT_KEY:-input}
LABEL_KEY=${LABEL_KEY:-label}
PROMPT_MAX_LEN=${PROMPT_MAX_LEN:-2048}
GENERATE_MAX_LEN=${GENERATE_MAX_LEN:-1024}

# --- models and reward
POLICY=${POLICY:-checkpoints/policy-rft}
REWARD_URL=${REWARD_URL:-http://127.0.0.1:5000/get_reward}
STREAM_SCORING=${STREAM_SCORING:-0}  # 1: steps scored while the policy writes (cdra-train --cdpa.stream_scoring)
SAVE_PATH=${SAVE_PATH:-checkpoints/policy-cdpa}

# --- algorithm (paper: G = 5, temperature 1.0, <= 400 steps)
ESTIMATOR=${ESTIMATOR:-cdpa}
CDPA_MODE=${CDPA_MODE:-token_position}
CDPA_FAILURE_POLICY=${CDPA_FAILURE_POLICY:-drop}
N_SAMPLES=${N_SAMPLES:-5}
TEMPERATURE=${TEMPERATURE:-1.0}
MAX_STEPS=${MAX_STEPS:-400}
ROLLOUT_BATCH_SIZE=${ROLLOUT_BATCH_SIZE:-32}
KL_COEF=${KL_COEF:-1e-3}
LR=${LR:-1e-6}                      # actor learning rate
TRACE_PATH=${TRACE_PATH:-$SAVE_PATH/critique_traces.jsonl}
TRACE_SAMPLE_RATE=${TRACE_SAMPLE_RATE:-0.01}

# --- resources (hybrid engine: everything colocated on NNODES x GPUS_PER_NODE)
NNODES=${NNODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
VLLM_TP=${VLLM_TP:-1}
RAY_ADDRESS=${RAY_ADDRESS:-http://127.0.0.1:8265}
SAVE_STEPS=${SAVE_STEPS:-50}
EXTRA_ARGS=${EXTRA_ARGS:-}
DRY_RUN=${DRY_RUN:-0}
SKIP_HEALTH_CHECK=${SKIP_HEALTH_CHECK:-0}
REWARD_AGGREGATION=${REWARD_AGGREGATION:-}  # the gateway reward_aggregation required (empty: any; the GRPO baseline: sum)
AUTH_TOKEN_ENV=${AUTH_TOKEN_ENV:-}  # name of the env var holding the gateway's bearer token, if it has one

RECIPE=${RECIPE:-$(basename "$0")}
# shellcheck source=lib/checks.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/checks.sh"
# shellcheck source=lib/gateway.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/gateway.sh"

check_inputs() {
  need_choice DRY_RUN 0 1
  need_choice GPU_CHECK 0 1
  need_choice STREAM_SCORING 0 1
  check_jsonl PROMPTS "$(prepare_hint PROMPTS rl_prompts.jsonl)" INPUT_KEY LABEL_KEY
  [[ -z $EVAL_PROMPTS ]] || check_jsonl EVAL_PROMPTS "set it to an eval.jsonl from 'cdra data prepare', or leave it empty" \
    INPUT_KEY LABEL_KEY
  need_int PROMPT_MAX_LEN 1
  need_int GENERATE_MAX_LEN 1
  check_model POLICY "train it with recipes/train_policy_rft.sh or point POLICY at a checkpoint folder or hub id"
  check_gateway_values
  [[ -n $SAVE_PATH && ! -f $SAVE_PATH ]] || die "SAVE_PATH=$SAVE_PATH: expected a folder for the checkpoints"
  need_choice ESTIMATOR cdpa group_norm dr_grpo rloo reinforce_baseline reinforce
  need_choice CDPA_FAILURE_POLICY drop fail
  need_int N_SAMPLES 1
  ((N_SAMPLES >= 2)) || die "N_SAMPLES=$N_SAMPLES: group estimators need at least 2 responses per prompt"
  need_number TEMPERATURE "x >= 0" ">= 0"
  need_int MAX_STEPS 1
  need_int ROLLOUT_BATCH_SIZE 1
  need_number KL_COEF "x >= 0" ">= 0"
  need_number LR "x > 0" "> 0 (a learning rate such as 1e-6)"
  [[ -z $TRACE_PATH ]] || need_number TRACE_SAMPLE_RATE "x > 0 && x <= 1" "in (0, 1]"
  need_int NNODES 1
  need_int GPUS_PER_NODE 1
  need_int VLLM_TP 1
  (((NNODES * GPUS_PER_NODE) % VLLM_TP == 0)) ||
    die "VLLM_TP=$VLLM_TP does not divide the NNODES x GPUS_PER_NODE = $((NNODES * GPUS_PER_NODE)) GPUs"
  [[ $RAY_ADDRESS =~ ^https?://[^/]+$ ]] || die "RAY_ADDRESS=$RAY_ADDRESS: expected the Ray dashboard's http://HOST:PORT"
  need_int SAVE_STEPS -1
  [[ $ESTIMATOR != cdpa ]] || need_cdpa_mode
}

check_ray_gpus() {  # the GPUs this run is told to use: NNODES x GPUS_PER_NODE
  local want=$((NNODES * GPUS_PER_NODE)) have
  if [[ $NNODES == 1 && $RAY_ADDRESS =~ ^https?://(127\.0\.0\.1|localhost)(:[0-9]+)?$ ]]; then
    check_gpus "$GPUS_PER_NODE" "GPUS_PER_NODE=$GPUS_PER_NODE on this node"
    return 0
  fi
  local nodes
  nodes=$(ray list nodes --address "$RAY_ADDRESS" --format json --limit 10000 2>/dev/null) ||
    die "no Ray cluster answers at RAY_ADDRESS=$RAY_ADDRESS: start one ('ray start --head' on the head node, 'ray start --address HEAD_IP:6379' on the others)"
  have=$("$PYTHON" -c '
import json, sys
print(int(sum(n["resources_total"].get("GPU", 0) for n in json.load(sys.stdin) if n.get("state") == "ALIVE")))' <<<"$nodes")
  ((have >= want)) || die "the Ray cluster at $RAY_ADDRESS has $have GPU(s); NNODES=$NNODES x GPUS_PER_NODE=$GPUS_PER_NODE = $want needed"
}

num_steps_plan() {  # episodes so that the run reaches MAX_STEPS rollout batches (one optimiser step each)
  local prompts steps_per_episode
  prompts=$(grep -c . "$PROMPTS")
  steps_per_episode=$((prompts / ROLLOUT_BATCH_SIZE))
  ((steps_per_episode >= 1)) ||
    die "PROMPTS=$PROMPTS has $prompts prompt(s), fewer than ROLLOUT_BATCH_SIZE=$ROLLOUT_BATCH_SIZE: set ROLLOUT_BATCH_SIZE=$prompts or lower (or use more prompts)"
  EPISODES=$(((MAX_STEPS + steps_per_episode - 1) / steps_per_episode))
  MAX_SAMPLES=$(((MAX_STEPS * ROLLOUT_BATCH_SIZE + EPISODES - 1) / EPISODES))
  note "$prompts prompts, $EPISODES episode(s) of $((MAX_SAMPLES / ROLLOUT_BATCH_SIZE)) steps (MAX_STEPS=$MAX_STEPS)"
}

check_inputs
num_steps_plan
# The Ray job runs in its own directory: hand it absolute paths (cdra-plugin is installed on every node).
PROMPTS=$(realpath "$PROMPTS")
[[ -z $EVAL_PROMPTS ]] || EVAL_PROMPTS=$(realpath "$EVAL_PROMPTS")
[[ ! -e $POLICY ]] || POLICY=$(realpath "$POLICY")
SAVE_PATH=$(realpath -m "$SAVE_PATH")
[[ -z $TRACE_PATH ]] || TRACE_PATH=$(realpath -m "$TRACE_PATH")
GPUS=$((NNODES * GPUS_PER_NODE))

DATA_ARGS=(
  --data.prompt_dataset "$PROMPTS"
  --data.input_key "$INPUT_KEY"
  --data.label_key "$LABEL_KEY"
  --data.apply_chat_template
  --data.max_len $((PROMPT_MAX_LEN + GENERATE_MAX_LEN))
  --data.max_samples "$MAX_SAMPLES"
)
[[ -z $EVAL_PROMPTS ]] || DATA_ARGS+=(--eval.dataset "$EVAL_PROMPTS" --eval.steps "$SAVE_STEPS")

MODEL_ARGS=(
  --actor.model_name_or_path "$POLICY"
  --reward.remote_url "$REWARD_URL"
  --ckpt.output_dir "$SAVE_PATH"
  --ckpt.path "$SAVE_PATH/ckpt"
  --ckpt.save_steps "$SAVE_STEPS"
  --ckpt.save_hf
)
[[ $STREAM_SCORING == 0 ]] || MODEL_ARGS+=(--cdpa.stream_scoring)

ALGO_ARGS=(
  --algo.advantage.estimator "$ESTIMATOR"
  --rollout.n_samples_per_prompt "$N_SAMPLES"
  --rollout.temperature "$TEMPERATURE"
  --rollout.max_new_tokens "$GENERATE_MAX_LEN"
  --rollout.batch_size "$ROLLOUT_BATCH_SIZE"
  --rollout.micro_batch_size 8
  --train.batch_size $((ROLLOUT_BATCH_SIZE * N_SAMPLES))
  --train.micro_batch_size 4
  --train.num_episodes "$EPISODES"
  --train.max_epochs 1
  --algo.kl.use_loss
  --algo.kl.estimator k3
  --algo.kl.init_coef "$KL_COEF"
  --actor.adam.lr "$LR"
)
if [[ $ESTIMATOR == cdpa ]]; then
  ALGO_ARGS+=(--cdpa.mode "$CDPA_MODE" --cdpa.failure_policy "$CDPA_FAILURE_POLICY")
  [[ -z $TRACE_PATH ]] || ALGO_ARGS+=(--cdpa.trace_path "$TRACE_PATH" --cdpa.trace_sample_rate "$TRACE_SAMPLE_RATE")
fi

RESOURCE_ARGS=(
  --actor.num_nodes "$NNODES"
  --actor.num_gpus_per_node "$GPUS_PER_NODE"
  --ref.num_nodes "$NNODES"
  --ref.num_gpus_per_node "$GPUS_PER_NODE"
  --vllm.num_engines $((GPUS / VLLM_TP))
  --vllm.tensor_parallel_size "$VLLM_TP"
  --vllm.gpu_memory_utilization 0.5
  --vllm.enable_sleep
  --vllm.enable_prefix_caching
  --train.colocate_all
  --ds.enable_sleep
  --ds.zero_stage 3
  --ds.param_dtype bf16
  --ds.packing_samples
  --actor.gradient_checkpointing_enable
)

LOG_ARGS=(--logger.logging_steps 1 --logger.tensorboard_dir "$SAVE_PATH/tensorboard")

# cdra-train for cdpa or streaming; the GRPO baseline without streaming runs OpenRLHF's own entry point.
ENTRY=(python3 -m cdra_plugin.train)
[[ $ESTIMATOR == cdpa || $STREAM_SCORING == 1 ]] || ENTRY=(python3 -m openrlhf.cli.train_ppo_ray)
read -r -a EXTRA <<<"$EXTRA_ARGS"
CMD=(ray job submit --address "$RAY_ADDRESS" --
  "${ENTRY[@]}" "${DATA_ARGS[@]}" "${MODEL_ARGS[@]}" "${ALGO_ARGS[@]}" "${RESOURCE_ARGS[@]}" "${LOG_ARGS[@]}"
  "${EXTRA[@]}")

if [[ $ESTIMATOR == cdpa ]]; then
  check_gateway
else  # a plain OpenRLHF estimator takes the protocol's 0.0 for a dropped sample
  check_gateway "only cdra-train honours (OpenRLHF's $ESTIMATOR would normalise the dropped samples' 0.0 into the advantages)"
fi
if [[ $DRY_RUN == 1 ]]; then
  print_settings
  note "DRY_RUN=1: every value and input checked, and the gateway (above); ray, the Ray cluster and the GPUs are not. The command:"
  printf '%q ' "${CMD[@]}"
  echo
  exit 0
fi
command -v ray >/dev/null || die "'ray' is not on PATH: activate the environment (source \"\${CDRA_VENV:-\$HOME/.venvs/cdra-plugin}/bin/activate\")"
check_ray_gpus
if [[ $NNODES == 1 ]] && ! ray list nodes --address "$RAY_ADDRESS" --limit 1 >/dev/null 2>&1; then
  [[ $RAY_ADDRESS =~ ^https?://(127\.0\.0\.1|localhost)(:8265)?$ ]] ||
    die "no Ray cluster answers at RAY_ADDRESS=$RAY_ADDRESS: start it, or unset RAY_ADDRESS to start a local one here"
  note "no Ray cluster at $RAY_ADDRESS: starting a local head with $GPUS_PER_NODE GPUs"
  ray start --head --num-gpus "$GPUS_PER_NODE" --dashboard-host 127.0.0.1 >/dev/null
fi
mkdir -p "$SAVE_PATH"
exec "${CMD[@]}"
