# Shared body of the SFT recipes (train_prm_sft.sh, train_policy_rft.sh): sourced after the recipe has set
# RECIPE, DATA_NAME and its own defaults for DATA, SAVE_PATH, EPOCHS, BATCH_SIZE and LR. Checks every value, then
# the launcher and the GPUs (not with DRY_RUN=1), and launches `deepspeed --module openrlhf.cli.train_sft` on
# chat-format input/output rows from `cdra data prepare`.

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

# shellcheck source=checks.sh
source "$(dirname "${BASH_SOURCE[0]}")/checks.sh"

check_inputs() {
  need_choice DRY_RUN 0 1
  need_choice GPU_CHECK 0 1
  check_jsonl DATA "$(prepare_hint DATA "$DATA_NAME")" INPUT_KEY OUTPUT_KEY
  [[ -z $EVAL_DATA ]] || check_jsonl EVAL_DATA "set it to held-out rows in the DATA format, or leave it empty" \
    INPUT_KEY OUTPUT_KEY
  check_model MODEL "point MODEL at a Hugging Face checkpoint folder or a hub id such as Qwen/Qwen2.5-7B-Instruct"
  [[ -n $SAVE_PATH && ! -f $SAVE_PATH ]] || die "SAVE_PATH=$SAVE_PATH: expected a folder for the checkpoint"
  need_int EPOCHS 1
  need_int BATCH_SIZE 1
  need_int MICRO_BATCH_SIZE 1
  ((BATCH_SIZE % MICRO_BATCH_SIZE == 0)) ||
    die "BATCH_SIZE=$BATCH_SIZE is not a multiple of MICRO_BATCH_SIZE=$MICRO_BATCH_SIZE"
  need_number LR "x > 0" "> 0 (a learning rate such as 5e-6)"
  need_number WARMUP_RATIO "x <= 1" "in [0, 1]"
  need_int MAX_LEN 1
  need_int MAX_SAMPLES 1
  need_int SAVE_STEPS -1
  need_int SEED 0
  need_int ZERO_STAGE 0 3
  need_choice PARAM_DTYPE bf16 fp16
  [[ $ATTN_IMPL =~ ^[A-Za-z0-9_./-]+$ ]] || die "ATTN_IMPL=$ATTN_IMPL: expected an attention implementation such as flash_attention_2 or sdpa"
  need_choice PACKING 0 1
  [[ -z $NUM_GPUS ]] || need_int NUM_GPUS 1
  [[ -z $HOSTFILE || -f $HOSTFILE ]] || die "HOSTFILE=$HOSTFILE not found"
  need_int LOGGING_STEPS 1
}

check_launcher() {
  command -v deepspeed >/dev/null || die "'deepspeed' is not on PATH: activate the environment (source \"\${CDRA_VENV:-\$HOME/.venvs/cdra-plugin}/bin/activate\")"
  python -c 'import openrlhf.cli' 2>/dev/null || die "python cannot import openrlhf: activate the environment that has openrlhf==0.11.2"
  if [[ -n $HOSTFILE ]]; then
    note "HOSTFILE is set: the GPUs of its hosts are not checked from here"
  elif [[ -n $NUM_GPUS ]]; then
    check_gpus "$NUM_GPUS" "NUM_GPUS=$NUM_GPUS"
  else
    check_gpus 1 "deepspeed uses every local GPU; NUM_GPUS sets how many"
  fi
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
  print_settings
  note "DRY_RUN=1: every value and input checked; deepspeed, openrlhf and the GPUs are not. The command:"
  printf '%q ' "${CMD[@]}"
  echo
  exit 0
fi
check_launcher
mkdir -p "$SAVE_PATH"
exec "${CMD[@]}"
