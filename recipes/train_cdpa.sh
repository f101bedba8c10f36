#!/usr/bin/env bash
# Critique-Driven Policy Alignment (paper Section 2.4, steps 2-5): online RL of the RFT policy with the per-token
# advantage of Eq. 3 from Pers-GenPRM step scores, on OpenRLHF (Ray + vLLM + DeepSpeed), via `cdra-train`.
#
# The paper's setting is the default: Qwen2.5-7B-Instruct initialised from the RFT checkpoint, G = 5 responses per
# prompt at temperature 1.0, up to 400 optimisation steps, KL to the reference policy, hybrid engine (actor,
# reference and vLLM colocated on the same GPUs). Before launching it checks the prompts, the policy checkpoint and
# the PRM gateway (`recipes/serve_prm.sh`).
#
#   bash recipes/serve_prm.sh &                                # Pers-GenPRM behind vLLM + the step-wise gateway
#   bash recipes/train_cdpa.sh                                 # 1 node: starts a local Ray head if none answers
#   DRY_RUN=1 bash recipes/train_cdpa.sh                       # check inputs, print the command, launch nothing
#   CDPA_MODE=process N_SAMPLES=8 bash recipes/train_cdpa.sh
#   RAY_ADDRESS=http://head:8265 NNODES=4 bash recipes/train_cdpa.sh   # multi-node: a Ray cluster you started
#   ESTIMATOR=group_norm bash recipes/train_cdpa.sh            # see train_grpo_baseline.sh for the GRPO baseline
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
ACTOR_LR=${ACTOR_LR:-1e-6}
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
AUTH_TOKEN_ENV=${AUTH_TOKEN_ENV:-}  # name of the env var holding the gateway's bearer token, if it has one

RECIPE=${RECIPE:-$(basename "$0")}
die() {
  echo "$RECIPE: error: $*" >&2
  exit 2
}

check_inputs() {
  [[ -f $PROMPTS ]] || die "PROMPTS=$PROMPTS not found: run 'cdra data prepare --input <DeepPref files> --output $(dirname "$PROMPTS")' (or --prefeval) first"
  local first
  first=$(head -n 1 "$PROMPTS")
  [[ $first == *"\"$INPUT_KEY\":"* && $first == *"\"$LABEL_KEY\":"* ]] ||
    die "PROMPTS=$PROMPTS: first row lacks \"$INPUT_KEY\"/\"$LABEL_KEY\" (INPUT_KEY/LABEL_KEY); use rl_prompts.jsonl from 'cdra data prepare'"
  [[ -z $EVAL_PROMPTS || -f $EVAL_PROMPTS ]] || die "EVAL_PROMPTS=$EVAL_PROMPTS not found"
  if [[ $POLICY == /* || $POLICY == .* || -e $POLICY ]]; then
    [[ -f $POLICY/config.json ]] || die "POLICY=$POLICY has no config.json: train it with recipes/train_policy_rft.sh or point POLICY at a checkpoint"
  fi
  [[ $N_SAMPLES -ge 2 ]] || die "N_SAMPLES=$N_SAMPLES: group estimators need at least 2 responses per prompt"
  [[ $REWARD_URL == http*://*/get_reward ]] || die "REWARD_URL=$REWARD_URL must be the gateway's http://HOST:PORT/get_reward"
}

check_gateway() {  # GET /health: every PRM backend up, and a failure policy this estimator honours
  [[ $SKIP_HEALTH_CHECK == 1 ]] && return 0
  python3 - "${REWARD_URL%/get_reward}/health" "$ESTIMATOR" "${AUTH_TOKEN_ENV:-}" <<'PY' ||
import json, os, sys, urllib.request
url, estimator, token_env = sys.argv[1:]
request = urllib.request.Request(url)
if token_env:
    request.add_header("Authorization", "Bearer " + os.environ[token_env])
try:
    with urllib.request.urlopen(request, timeout=10) as r:
        health = json.load(r)
except Exception as e:
    sys.exit(f"GET {url}: {e}")
print("gateway:", health.get("status"), "model", health.get("model"), "failure policy", health.get("failure_policy"))
if health.get("status") != "ok":
    sys.exit(f"gateway status {health.get('status')}: {health.get('backends')}")
if estimator != "cdpa" and health.get("failure_policy") == "drop":
    sys.exit("the gateway runs --failure-policy drop, which only cdra-train honours; OpenRLHF's " + estimator +
             " would normalise the dropped samples' 0.0 into the advantages: restart it with FAILURE_POLICY=fail")
PY
    die "the PRM gateway at $REWARD_URL is not usable (above): start it with recipes/serve_prm.sh, or set REWARD_URL"
}

num_steps_plan() {  # episodes so that the run reaches MAX_STEPS rollout batches (one optimiser step each)
  local prompts steps_per_episode
  prompts=$(grep -c . "$PROMPTS")
  steps_per_episode=$((prompts / ROLLOUT_BATCH_SIZE))
  [[ $steps_per_episode -ge 1 ]] || die "PROMPTS has $prompts prompts, fewer than ROLLOUT_BATCH_SIZE=$ROLLOUT_BATCH_SIZE"
  EPISODES=$(((MAX_STEPS + steps_per_episode - 1) / steps_per_episode))
  MAX_SAMPLES=$(((MAX_STEPS * ROLLOUT_BATCH_SIZE + EPISODES - 1) / EPISODES))
  echo "$RECIPE: $prompts prompts, $EPISODES episode(s) of $((MAX_SAMPLES / ROLLOUT_BATCH_SIZE)) steps (MAX_STEPS=$MAX_STEPS)"
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
  --actor.adam.lr "$ACTOR_LR"
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

# cdra-train for cdpa; the GRPO baseline runs OpenRLHF's own entry point.
ENTRY=(python3 -m cdra_plugin.train)
[[ $ESTIMATOR == cdpa ]] || ENTRY=(python3 -m openrlhf.cli.train_ppo_ray)
read -r -a EXTRA <<<"$EXTRA_ARGS"
CMD=(ray job submit --address "$RAY_ADDRESS" --
  "${ENTRY[@]}" "${DATA_ARGS[@]}" "${MODEL_ARGS[@]}" "${ALGO_ARGS[@]}" "${RESOURCE_ARGS[@]}" "${LOG_ARGS[@]}"
  "${EXTRA[@]}")

if [[ $DRY_RUN == 1 ]]; then
  printf '%q ' "${CMD[@]}"
  echo
  exit 0
fi
check_gateway
command -v ray >/dev/null || die "'ray' is not on PATH: activate the environment (source ~/.venvs/cdra-plugin/bin/activate)"
if ! ray status --address "${RAY_ADDRESS#http://}" >/dev/null 2>&1 && [[ $NNODES == 1 ]]; then
  echo "$RECIPE: no Ray cluster at $RAY_ADDRESS: starting a local head with $GPUS_PER_NODE GPUs"
  ray start --head --num-gpus "$GPUS_PER_NODE" --dashboard-host 127.0.0.1 >/dev/null
fi
mkdir -p "$SAVE_PATH"
exec "${CMD[@]}"
