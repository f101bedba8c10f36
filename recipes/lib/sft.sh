# Shared body of the SFT recipes (train_prm_sft.sh, train_policy_rft.sh): sourced after the recipe has set
# RECIPE, DATA_NAME and its own defaults for DATA, SAVE_PATH, EPOCHS, BATCH_SIZE and LR. Launches
# `deepspeed --module openrlhf.cli.train_sft` on chat-format input/output rows from `cdra data prepare`.

# --- data (from `cdra data prepare`)
EVAL_DATA=${EVAL_DATA:-}
INPUT_KEY=${INPUT_KEY:-input}
OUTPUT_KEY=${OUTPUT_KEY:-output}
MAX_LEN=${MAX_LEN:-4096}
MAX_SAMPLES=${MAX_SAMPLES:-100000000}

# --- model and output
MODEL=${MODEL:-Qwen/Qwen2.5-7B-Instruct}
CKPT_PATH=${CKPT_PATH:-$SAVE_PATH/ckpt}
SAVE_STEPS=${SAVE_STEPS:--1}

# --- optimisation
MICRO_BATCH_SIZE=${MICRO_BATCH_SIZE:-2}
WARMUP_RATIO=${WARMUP_RATIO:-0.03}
SEED=${SEED:-42}

# --- DeepSpeed
ZERO_STAGE=${ZERO_STAGE:-3}
PARAM_DTYPE=${PARAM_DTYPE:-bf16}
ATTN_IMPL=${ATTN_IMPL:-flash_attention_2}
PACKING=${PACKING:-1}

# --- launch and logging
NUM_GPUS=${NUM_GPUS:-}
HOSTFILE=${HOSTFILE:-}
LOGGING_STEPS=${LOGGING_STEPS:-1}
TENSORBOARD_DIR=${TENSORBOARD_DIR:-$SAVE_PATH/tensorboard}
EXTRA_ARGS=${EXTRA_ARGS:-}
DRY_RUN=${DRY_RUN:-0}

die() {
  echo "$RECIPE: error: $*" >&2
  exit 2
}

check_data() {  # FILE VAR: a non-empty JSONL file whose first row has the input and output keys
  local file=$1 var=$2
  [[ -n $file ]] || die "$var is empty: set it to the $DATA_NAME written by 'cdra data prepare'"
  [[ -f $file ]] || die "$var=$file not found: run 'cdra data prepare --input <DeepPref files> --output $(dirname "$file")' first, or set $var=/path/to/$DATA_NAME"
  [[ -s $file ]] || die "$var=$file is empty: no training example (check stats.json next to it)"
  local first
  first=$(head -n 1 "$file")
  [[ $first == *"\"$INPUT_KEY\":"* ]] || die "$var=$file: first row has no \"$INPUT_KEY\" key (INPUT_KEY); is it a $DATA_NAME from 'cdra data prepare'?"
  [[ $first == *"\"$OUTPUT_KEY\":"* ]] || die "$var=$file: first row has no \"$OUTPUT_KEY\" key (OUTPUT_KEY); is it a $DATA_NAME from 'cdra data prepare'?"
}

check_inputs() {
  check_data "$DATA" DATA
  [[ -z $EVAL_DATA ]] || check_data "$EVAL_DATA" EVAL_DATA
  if [[ $MODEL == /* || $MODEL == .* ]]; then
    [[ -f $MODEL/config.json ]] || die "MODEL=$MODEL is a path without config.json: point MODEL at a Hugging Face checkpoint directory"
  fi
  [[ -z $HOSTFILE || -f $HOSTFILE ]] || die "HOSTFILE=$HOSTFILE not found"
  [[ $PACKING == 0 || $PACKING == 1 ]] || die "PACKING must be 0 or 1, got '$PACKING'"
}

check_launcher() {
  command -v deepspeed >/dev/null || die "'deepspeed' is not on PATH: activate the environment (source ~/.venvs/cdra-plugin/bin/activate)"
  python -c 'import openrlhf.cli' 2>/dev/null || die "python cannot import openrlhf: activate the environment that has openrlhf==0.11.2"
}

check_inputs

DATA_ARGS=(
  --data.dataset "$DATA"
  --data.input_key "$INPUT_KEY"
  --data.output_key "$OUTPUT_KEY"
  --data.apply_chat_template
  --data.max_len "$MAX_LEN"
  --data.max_samples "$MAX_SAMPLES"
)
[[ -z $EVAL_DATA ]] || DATA_ARGS+=(--eval.dataset "$EVAL_DATA")

MODEL_ARGS=(
  --model.model_name_or_path "$MODEL"
  --model.gradient_checkpointing_enable
)

TRAIN_ARGS=(
  --train.max_epochs "$EPOCHS"
  --train.batch_size "$BATCH_SIZE"
  --train.micro_batch_size "$MICRO_BATCH_SIZE"
  --train.seed "$SEED"
  --adam.lr "$LR"
  --lr_warmup_ratio "$WARMUP_RATIO"
)

DS_ARGS=(
  --ds.zero_stage "$ZERO_STAGE"
  --ds.param_dtype "$PARAM_DTYPE"
  --ds.attn_implementation "$ATTN_IMPL"
)
[[ $PACKING == 0 ]] || DS_ARGS+=(--ds.packing_samples)

CKPT_ARGS=(
  --ckpt.output_dir "$SAVE_PATH"
  --ckpt.path "$CKPT_PATH"
  --ckpt.save_steps "$SAVE_STEPS"
)

LOG_ARGS=(
  --logger.logging_steps "$LOGGING_STEPS"
  --logger.tensorboard_dir "$TENSORBOARD_DIR"
)

LAUNCH_ARGS=()
[[ -z $HOSTFILE ]] || LAUNCH_ARGS+=(--hostfile "$HOSTFILE")
[[ -z $NUM_GPUS ]] || LAUNCH_ARGS+=(--num_gpus "$NUM_GPUS")

read -r -a EXTRA <<<"$EXTRA_ARGS"
CMD=(deepspeed "${LAUNCH_ARGS[@]}" --module openrlhf.cli.train_sft
  "${DATA_ARGS[@]}" "${MODEL_ARGS[@]}" "${TRAIN_ARGS[@]}" "${DS_ARGS[@]}" "${CKPT_ARGS[@]}" "${LOG_ARGS[@]}"
  "${EXTRA[@]}")

if [[ $DRY_RUN == 1 ]]; then
  printf '%q ' "${CMD[@]}"
  echo
  exit 0
fi
check_launcher
mkdir -p "$SAVE_PATH"
exec "${CMD[@]}"
