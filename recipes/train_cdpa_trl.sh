#!/usr/bin/env bash
# Critique-Driven Policy Alignment with TRL (the paper's own host, Sec. 3.1): TRL's GRPOTrainer with CDPA's per-token
# advantage (Eq. 3) from the Pers-GenPRM gateway's step scores, launched with `accelerate launch` on one node.
#
# The paper's setting is the default: G = 5 responses per prompt at temperature 1.0, up to 400 optimisation steps,
# the RFT policy (Qwen2.5-7B-Instruct); generation by vLLM colocated on the training GPUs, DeepSpeed ZeRO-3 from TRL's
# own accelerate configs. KL to the reference policy as a loss (beta = 1e-3: the paper does not give beta) and the
# loss summed over tokens and divided by a constant (TRL's dr_grpo), as J_CDPA is. Needs `pip install
# cdra-plugin[trl]` and the gateway (`recipes/serve_prm.sh`). Before launching it checks every value, the prompts, the
# policy checkpoint, the gateway's GET /health and that torch sees GPUS_PER_NODE GPUs; DRY_RUN=1 all but `accelerate`
# and the GPUs (GPU_CHECK=0 skips the GPU check of a real run).
#
#   bash recipes/serve_prm.sh &                                # Pers-GenPRM behind vLLM + the step-wise gateway
#   bash recipes/train_cdpa_trl.sh
#   DRY_RUN=1 bash recipes/train_cdpa_trl.sh                   # check, print the command, launch nothing
#   CDPA_MODE=process GPUS_PER_NODE=4 bash recipes/train_cdpa_trl.sh
#   REWARD_AGGREGATION=sum bash recipes/serve_prm.sh &         # the gateway the GRPO baseline needs (R_dense)
#   ESTIMATOR=grpo bash recipes/train_cdpa_trl.sh              # the GRPO baseline: TRL's own advantages on R_dense
#
# ESTIMATOR=grpo trains on the gateway's scalar reward, the paper's R_dense = sum of the step scores: as in
# train_grpo_baseline.sh, the gateway must report `reward_aggregation` sum unless REWARD_AGGREGATION names another.
# A sample the gateway dropped (FAILURE_POLICY=drop) is left out for both estimators: the entry point scores through
# cdra_plugin.trl.reward.GatewayReward, which gives it None, and TRL (GRPOTrainer and CDPAGRPOTrainer alike) leaves
# it out of its group with zero advantage, never the protocol's placeholder 0.0; so, unlike OpenRLHF's GRPO baseline,
# ESTIMATOR=grpo may use a `drop` gateway. Every value below is an environment variable with a default; EXTRA_ARGS is
# appended (any GRPOConfig option).
set -euo pipefail

# --- data (from `cdra data prepare`)
PROMPTS=${PROMPTS:-data/deeppref/rl_prompts.jsonl}
INPUT_KEY=${INPUT_KEY:-input}
LABEL_KEY=${LABEL_KEY:-label}
GENERATE_MAX_LEN=${GENERATE_MAX_LEN:-1024}

# --- models and reward
POLICY=${POLICY:-checkpoints/policy-rft}
REWARD_URL=${REWARD_URL:-http://127.0.0.1:5000/get_reward}
AUTH_TOKEN_ENV=${AUTH_TOKEN_ENV:-} # name of the env var holding the gateway's bearer token, if it has one
SAVE_PATH=${SAVE_PATH:-checkpoints/policy-cdpa-trl}

# --- algorithm (paper: G = 5, temperature 1.0, <= 400 steps)
ESTIMATOR=${ESTIMATOR:-cdpa}
CDPA_MODE=${CDPA_MODE:-token_position}
N_SAMPLES=${N_SAMPLES:-5}
TEMPERATURE=${TEMPERATURE:-1.0}
MAX_STEPS=${MAX_STEPS:-400}
PROMPTS_PER_STEP=${PROMPTS_PER_STEP:-32}
KL_COEF=${KL_COEF:-1e-3}
LR=${LR:-1e-6}
# the gateway reward_aggregation required: empty = any (CDPA reads the step scores); ESTIMATOR=grpo: sum (R_dense)
REWARD_AGGREGATION=${REWARD_AGGREGATION:-}
[[ $ESTIMATOR != grpo || -n $REWARD_AGGREGATION ]] || REWARD_AGGREGATION=sum

# --- resources (one node; vLLM colocated with training)
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MICRO_BATCH=${MICRO_BATCH:-4}
ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-zero3} # a file, or the name of one of TRL's accelerate_configs
VLLM_MEMORY=${VLLM_MEMORY:-0.3}
SAVE_STEPS=${SAVE_STEPS:-50}
EXTRA_ARGS=${EXTRA_ARGS:-}
DRY_RUN=${DRY_RUN:-0}
SKIP_HEALTH_CHECK=${SKIP_HEALTH_CHECK:-0}

RECIPE=${RECIPE:-$(basename "$0")}
# shellcheck source=lib/checks.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/checks.sh"
# shellcheck source=lib/gateway.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/gateway.sh"

check_inputs() {
  need_choice DRY_RUN 0 1
  need_choice GPU_CHECK 0 1
  check_jsonl PROMPTS "$(prepare_hint PROMPTS rl_prompts.jsonl)" INPUT_KEY LABEL_KEY
  need_int GENERATE_MAX_LEN 1
  check_model POLICY "train it with recipes/train_policy_rft.sh or point POLICY at a checkpoint folder or hub id"
  check_gateway_values
  [[ -n $SAVE_PATH && ! -f $SAVE_PATH ]] || die "SAVE_PATH=$SAVE_PATH: expected a folder for the checkpoints"
  need_choice ESTIMATOR cdpa grpo
  need_int N_SAMPLES 1
  ((N_SAMPLES >= 2)) || die "N_SAMPLES=$N_SAMPLES: group advantages need at least 2 responses per prompt"
  need_number TEMPERATURE "x > 0" "> 0 (TRL divides the logits by it; the paper's is 1.0)"
  need_int MAX_STEPS 1
  need_int PROMPTS_PER_STEP 1
  need_number KL_COEF "x >= 0" ">= 0"
  need_number LR "x > 0" "> 0 (a learning rate such as 1e-6)"
  need_int GPUS_PER_NODE 1
  need_int MICRO_BATCH 1
  (((PROMPTS_PER_STEP * N_SAMPLES) % (GPUS_PER_NODE * MICRO_BATCH) == 0)) ||
    die "PROMPTS_PER_STEP x N_SAMPLES = $((PROMPTS_PER_STEP * N_SAMPLES)) must be a multiple of GPUS_PER_NODE x MICRO_BATCH = $((GPUS_PER_NODE * MICRO_BATCH)): change PROMPTS_PER_STEP or MICRO_BATCH"
  need_number VLLM_MEMORY "x > 0 && x <= 1" "in (0, 1] (the share of each GPU's memory vLLM takes)"
  need_int SAVE_STEPS 1
  local prompts
  prompts=$(grep -c . "$PROMPTS")
  ((prompts >= PROMPTS_PER_STEP)) || # TRL's sampler drops an incomplete batch of prompts: no step at all
    die "PROMPTS=$PROMPTS has $prompts prompt(s), fewer than PROMPTS_PER_STEP=$PROMPTS_PER_STEP: set PROMPTS_PER_STEP=$prompts or lower (or use more prompts)"
  "$PYTHON" -c "import trl, cdra_plugin.trl" 2>/dev/null ||
    die "TRL is not importable by '$PYTHON': pip install 'cdra-plugin[trl]' (scripts/setup_env.sh installs it)"
  [[ $ESTIMATOR != cdpa ]] || need_cdpa_mode
}

accelerate_config() { # a file as given, or TRL's shipped config of that name
  if [[ -f $ACCELERATE_CONFIG ]]; then
    echo "$ACCELERATE_CONFIG"
  elif looks_local "$ACCELERATE_CONFIG" || [[ $ACCELERATE_CONFIG == *.yaml ]]; then
    die "ACCELERATE_CONFIG=$ACCELERATE_CONFIG: no such file; point it at an accelerate config file or name one of TRL's (zero2, zero3, multi_gpu, ...)"
  else
    "$PYTHON" - "$ACCELERATE_CONFIG" <<'PY' ||
import sys, importlib.resources as r
path = r.files("trl.accelerate_configs") / (sys.argv[1] + ".yaml")
print(path) if path.is_file() else sys.exit(1)
PY
      die "ACCELERATE_CONFIG=$ACCELERATE_CONFIG is neither a file nor one of TRL's accelerate_configs (zero2, zero3, multi_gpu, ...)"
  fi
}

check_inputs
CONFIG_FILE=$(accelerate_config)

LAUNCH_ARGS=(--config_file "$CONFIG_FILE" --num_processes "$GPUS_PER_NODE")

DATA_ARGS=(
  --prompts "$PROMPTS"
  --input_key "$INPUT_KEY"
  --label_key "$LABEL_KEY"
  --max_completion_length "$GENERATE_MAX_LEN"
)

MODEL_ARGS=(
  --model_name_or_path "$POLICY"
  --reward_url "$REWARD_URL"
  --output_dir "$SAVE_PATH"
  --save_steps "$SAVE_STEPS"
  --model_init_kwargs '{"dtype": "bfloat16"}'
  --bf16 true
  --gradient_checkpointing true
)
[[ -z $AUTH_TOKEN_ENV ]] || MODEL_ARGS+=(--auth_token_env "$AUTH_TOKEN_ENV")

ALGO_ARGS=(
  --estimator "$ESTIMATOR"
  --num_generations "$N_SAMPLES"
  --temperature "$TEMPERATURE"
  --max_steps "$MAX_STEPS"
  --per_device_train_batch_size "$MICRO_BATCH"
  --gradient_accumulation_steps $((PROMPTS_PER_STEP * N_SAMPLES / (GPUS_PER_NODE * MICRO_BATCH)))
  --beta "$KL_COEF"
  --loss_type dr_grpo
  --learning_rate "$LR"
)
[[ $ESTIMATOR != cdpa ]] || ALGO_ARGS+=(--cdpa.mode "$CDPA_MODE")

GENERATION_ARGS=(
  --use_vllm true
  --vllm_mode colocate
  --vllm_gpu_memory_utilization "$VLLM_MEMORY"
  --vllm_enable_sleep_mode true
)

LOG_ARGS=(--logging_steps 1 --report_to tensorboard)

read -r -a EXTRA <<<"$EXTRA_ARGS"
CMD=(accelerate launch "${LAUNCH_ARGS[@]}" -m cdra_plugin.trl.train
  "${DATA_ARGS[@]}" "${MODEL_ARGS[@]}" "${ALGO_ARGS[@]}" "${GENERATION_ARGS[@]}" "${LOG_ARGS[@]}" "${EXTRA[@]}")

check_gateway  # no NO_DROP: GatewayReward masks a dropped sample for both estimators (above)
if [[ $DRY_RUN == 1 ]]; then
  print_settings
  note "DRY_RUN=1: every value and input checked, TRL importable, and the gateway (above); accelerate and the GPUs are not. The command:"
  printf '%q ' "${CMD[@]}"
  echo
  exit 0
fi
command -v accelerate >/dev/null || die "'accelerate' is not on PATH: activate the environment (source \"\${CDRA_VENV:-\$HOME/.venvs/cdra-plugin}/bin/activate\")"
check_gpus "$GPUS_PER_NODE" "GPUS_PER_NODE=$GPUS_PER_NODE"
mkdir -p "$SAVE_PATH"
exec "${CMD[@]}"
