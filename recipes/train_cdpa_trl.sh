#!/usr/bin/env bash
# Critique-Driven Policy Alignment with TRL (the paper's own host, Sec. 3.1): TRL's GRPOTrainer with CDPA's per-token
# advantage (Eq. 3) from the Pers-GenPRM gateway's step scores, launched with `accelerate launch` on one node.
#
# The paper's setting is the default: G = 5 responses per prompt at temperature 1.0, up to 400 optimisation steps,
# the RFT policy (Qwen2.5-7B-Instruct); generation by vLLM colocated on the training GPUs, DeepSpeed ZeRO-3 from TRL's
# own accelerate configs. KL to the reference policy as a loss (beta = 1e-3: the paper does not give beta) and the
# loss summed over tokens and divided by a constant (TRL's dr_grpo), as J_CDPA is. Needs `pip install
# cdra-plugin[trl]` and the gateway (`recipes/serve_prm.sh`); it checks its inputs and the gateway before launching.
#
#   bash recipes/serve_prm.sh &                                # Pers-GenPRM behind vLLM + the step-wise gateway
#   bash recipes/train_cdpa_trl.sh
#   DRY_RUN=1 bash recipes/train_cdpa_trl.sh                   # check inputs, print the command, launch nothing
#   CDPA_MODE=process GPUS_PER_NODE=4 bash recipes/train_cdpa_trl.sh
#   ESTIMATOR=grpo bash recipes/train_cdpa_trl.sh              # the GRPO baseline: TRL's own advantages on R_dense
#
# Every value below is an environment variable with a default; EXTRA_ARGS is appended (any GRPOConfig option).
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
  if [[ $POLICY == /* || $POLICY == .* || -e $POLICY ]]; then
    [[ -f $POLICY/config.json ]] || die "POLICY=$POLICY has no config.json: train it with recipes/train_policy_rft.sh or point POLICY at a checkpoint"
  fi
  [[ $ESTIMATOR == cdpa || $ESTIMATOR == grpo ]] || die "ESTIMATOR=$ESTIMATOR: cdpa or grpo"
  [[ $N_SAMPLES -ge 2 ]] || die "N_SAMPLES=$N_SAMPLES: group advantages need at least 2 responses per prompt"
  (((PROMPTS_PER_STEP * N_SAMPLES) % (GPUS_PER_NODE * MICRO_BATCH) == 0)) ||
    die "PROMPTS_PER_STEP*N_SAMPLES=$((PROMPTS_PER_STEP * N_SAMPLES)) must be a multiple of GPUS_PER_NODE*MICRO_BATCH=$((GPUS_PER_NODE * MICRO_BATCH))"
  [[ $REWARD_URL == http*://*/get_reward ]] || die "REWARD_URL=$REWARD_URL must be the gateway's http://HOST:PORT/get_reward"
  python3 -c "import trl, cdra_plugin.trl" 2>/dev/null ||
    die "TRL is not importable: pip install 'cdra-plugin[trl]' (scripts/setup_env.sh installs it)"
}

check_gateway() { # GET /health: every PRM backend up
  [[ $SKIP_HEALTH_CHECK == 1 ]] && return 0
  python3 - "${REWARD_URL%/get_reward}/health" "${AUTH_TOKEN_ENV:-}" <<'PY' ||
import json, os, sys, urllib.request
url, token_env = sys.argv[1:]
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
PY
    die "the PRM gateway at $REWARD_URL is not usable (above): start it with recipes/serve_prm.sh, or set REWARD_URL"
}

accelerate_config() { # a path as given, or TRL's shipped config of that name
  if [[ -f $ACCELERATE_CONFIG ]]; then
    echo "$ACCELERATE_CONFIG"
  else
    python3 -c "import sys, importlib.resources as r; p = r.files('trl.accelerate_configs') / (sys.argv[1] + '.yaml'); print(p) if p.is_file() else sys.exit(1)" "$ACCELERATE_CONFIG" ||
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
  --cdpa_mode "$CDPA_MODE"
  --num_generations "$N_SAMPLES"
  --temperature "$TEMPERATURE"
  --max_steps "$MAX_STEPS"
  --per_device_train_batch_size "$MICRO_BATCH"
  --gradient_accumulation_steps $((PROMPTS_PER_STEP * N_SAMPLES / (GPUS_PER_NODE * MICRO_BATCH)))
  --beta "$KL_COEF"
  --loss_type dr_grpo
  --learning_rate "$LR"
)

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

if [[ $DRY_RUN == 1 ]]; then
  printf '%q ' "${CMD[@]}"
  echo
  exit 0
fi
check_gateway
command -v accelerate >/dev/null || die "'accelerate' is not on PATH: activate the environment (source ~/.venvs/cdra-plugin/bin/activate)"
mkdir -p "$SAVE_PATH"
exec "${CMD[@]}"
