#!/usr/bin/env bash
# Evaluation with the paper's LLM-judge protocol (Section 3.1, Appendix B, Table 1, Fig. 4) and best-checkpoint
# selection. For each checkpoint: serve it with `vllm serve`, generate responses to the evaluation prompts
# (`cdra eval generate`), stop the server, and judge the responses with any OpenAI-compatible judge (`cdra eval judge`,
# in the background while the next checkpoint is served). Then report every checkpoint side by side
# (`cdra eval report`) and name the best one by SELECT_BY (the paper keeps the best checkpoint within 400 steps, the
# length of a train_cdpa.sh run, by the judge).
#
#   CHECKPOINT=checkpoints/policy-cdpa JUDGE_URL=https://api.deepseek.com/v1 JUDGE_MODEL=deepseek-chat \
#     JUDGE_API_KEY_ENV=DEEPSEEK_API_KEY bash recipes/eval.sh      # every checkpoint train_cdpa.sh saved
#   CHECKPOINT=checkpoints/policy-rft JUDGE_URL=... JUDGE_MODEL=... bash recipes/eval.sh      # one checkpoint
#   MODE=cot CHECKPOINT=Qwen/Qwen2.5-7B-Instruct ... bash recipes/eval.sh                      # a baseline
#   DRY_RUN=1 CHECKPOINT=... JUDGE_URL=... JUDGE_MODEL=... bash recipes/eval.sh                # check, print commands
#
# CHECKPOINT: a Hugging Face checkpoint (a folder with config.json, or a hub id), or the SAVE_PATH of
# recipes/train_cdpa.sh, whose ckpt/global_step<N>_hf folders (--ckpt.save_hf) and final model are evaluated in step
# order. Each checkpoint's responses and judgments go to OUT_DIR/<name>/; a rerun resumes (a checkpoint whose
# responses are complete is not served again). OUT_DIR/report holds report.md/.json/.csv, radar.png and errors.png;
# OUT_DIR/best_checkpoint.txt names the best checkpoint. Every value below is an environment variable.
set -euo pipefail

# --- what to evaluate
CHECKPOINT=${CHECKPOINT:-}
DATA=${DATA:-data/deeppref/eval.jsonl}              # eval.jsonl (or rl_prompts.jsonl) from `cdra data prepare`
OUT_DIR=${OUT_DIR:-eval/$(basename "${CHECKPOINT:-model}")}
MODE=${MODE:-policy}                                # policy (Fig. 14 prompt) | zero-shot | few-shot | cot
SHOTS=${SHOTS:-}                                    # few-shot demonstrations (JSONL); K of them per prompt
K=${K:-3}
N_SAMPLES=${N_SAMPLES:-1}                           # responses per prompt
TEMPERATURE=${TEMPERATURE:-0}
MAX_TOKENS=${MAX_TOKENS:-2048}
LIMIT=${LIMIT:-}                                    # only the first LIMIT prompts
SEED=${SEED:-0}
GEN_CONCURRENCY=${GEN_CONCURRENCY:-64}

# --- judge (the paper: DeepSeek-V3.2-Exp)
JUDGE_URL=${JUDGE_URL:-}                            # OpenAI-compatible base URL(s), comma-separated
JUDGE_MODEL=${JUDGE_MODEL:-}
JUDGE_API_KEY_ENV=${JUDGE_API_KEY_ENV:-}            # name of the env var holding the judge's API key
JUDGE_CONCURRENCY=${JUDGE_CONCURRENCY:-32}
CHECKS=${CHECKS:-}                                  # comma-separated subset of the eight checks (default all)
PROMPT_DIR=${PROMPT_DIR:-}                          # judge prompts replacing the built-in ones
JUDGE_INPUT=${JUDGE_INPUT:-full}                    # full | final (the last step only)

# --- report and selection
SELECT_BY=${SELECT_BY:-acc_da}
BOOTSTRAP=${BOOTSTRAP:-1000}
BASELINES=${BASELINES:-}                            # more runs for the report: "NAME=JUDGMENTS.jsonl ..."

# --- serving (one vLLM server per checkpoint, tensor parallel over GPUS)
GPUS=${GPUS:-0}
VLLM_HOST=${VLLM_HOST:-127.0.0.1}
VLLM_PORT=${VLLM_PORT:-8300}
GPU_MEMORY_UTILIZATION=${GPU_MEMORY_UTILIZATION:-0.9}
MAX_MODEL_LEN=${MAX_MODEL_LEN:-8192}
VLLM_EXTRA_ARGS=${VLLM_EXTRA_ARGS:-}
HEALTH_TIMEOUT=${HEALTH_TIMEOUT:-900}               # seconds to wait for a server (model loading is slow)
LOG_DIR=${LOG_DIR:-$OUT_DIR/logs}
VLLM=${VLLM:-vllm}                                  # the vLLM command (words are split: "python -m ..." works)
CDRA=${CDRA:-cdra}                                  # the cdra command (likewise)
PYTHON=${PYTHON:-python3}
DRY_RUN=${DRY_RUN:-0}

RECIPE=$(basename "$0")
die() {
  echo "$RECIPE: error: $*" >&2
  exit 2
}
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

find_checkpoints() {  # CKPTS (paths or a hub id) and NAMES, in step order
  CKPTS=()
  NAMES=()
  if [[ -d $CHECKPOINT ]]; then
    local dir found=()
    for dir in "$CHECKPOINT"/ckpt/*_hf "$CHECKPOINT"/*_hf; do  # train_cdpa.sh's --ckpt.save_hf folders
      if [[ -f $dir/config.json ]]; then found+=("$dir"); fi
    done
    if ((${#found[@]})); then
      mapfile -t CKPTS < <(printf '%s\n' "${found[@]}" | sort -V)
      for dir in "${CKPTS[@]}"; do NAMES+=("$(basename "${dir%_hf}")"); done
      if [[ -f $CHECKPOINT/config.json ]]; then  # the final model, saved after the last step
        CKPTS+=("$CHECKPOINT")
        NAMES+=(final)
      fi
    elif [[ -f $CHECKPOINT/config.json ]]; then
      CKPTS=("$CHECKPOINT")
      NAMES=("$(basename "$(realpath "$CHECKPOINT")")")
    else
      die "CHECKPOINT=$CHECKPOINT has neither config.json nor ckpt/*_hf checkpoints: point it at a checkpoint, or at the SAVE_PATH of recipes/train_cdpa.sh"
    fi
  elif [[ $CHECKPOINT == /* || $CHECKPOINT == .* || $CHECKPOINT == checkpoints/* ]]; then
    die "CHECKPOINT=$CHECKPOINT not found"
  else
    CKPTS=("$CHECKPOINT")  # a hub id such as Qwen/Qwen2.5-7B-Instruct
    NAMES=("$(basename "$CHECKPOINT")")
  fi
  [[ $(printf '%s\n' "${NAMES[@]}" | sort | uniq -d) == "" ]] || die "CHECKPOINT=$CHECKPOINT: two checkpoints are named alike (${NAMES[*]})"
}

check_inputs() {
  [[ -n $CHECKPOINT ]] || die "CHECKPOINT is empty: set it to a checkpoint, or to the SAVE_PATH of recipes/train_cdpa.sh"
  [[ -f $DATA ]] || die "DATA=$DATA not found: run 'cdra data prepare --input <DeepPref files> --output $(dirname "$DATA")' (or --prefeval) first"
  local first
  first=$(head -n 1 "$DATA")
  [[ $first == *'"preference"'* || $first == *'"label":'* ]] ||
    die "DATA=$DATA: first row has neither \"preference\" nor \"label\"; use eval.jsonl from 'cdra data prepare'"
  [[ $MODE =~ ^(policy|zero-shot|few-shot|cot)$ ]] || die "MODE=$MODE: expected policy, zero-shot, few-shot or cot"
  if [[ $MODE == few-shot ]]; then
    [[ -f $SHOTS ]] || die "MODE=few-shot needs SHOTS=<demonstrations JSONL> (preference, question, response per row)"
  else
    [[ -z $SHOTS ]] || die "SHOTS is set but MODE=$MODE: demonstrations are for MODE=few-shot"
  fi
  local name
  for name in N_SAMPLES MAX_TOKENS K SEED GEN_CONCURRENCY JUDGE_CONCURRENCY BOOTSTRAP VLLM_PORT MAX_MODEL_LEN HEALTH_TIMEOUT; do
    is_uint "${!name}" || die "$name=${!name}: expected a non-negative integer"
  done
  [[ -z $LIMIT ]] || is_uint "$LIMIT" || die "LIMIT=$LIMIT: expected a positive integer"
  ((N_SAMPLES >= 1)) || die "N_SAMPLES=$N_SAMPLES: expected at least 1"
  if ((N_SAMPLES > 1)) && [[ $TEMPERATURE =~ ^0*\.?0*$ ]]; then
    die "N_SAMPLES=$N_SAMPLES with TEMPERATURE=$TEMPERATURE samples identical responses: set TEMPERATURE > 0"
  fi
  [[ $JUDGE_URL == http://* || $JUDGE_URL == https://* ]] || die "JUDGE_URL=$JUDGE_URL: expected the judge's OpenAI-compatible base URL, e.g. https://api.deepseek.com/v1"
  [[ -n $JUDGE_MODEL ]] || die "JUDGE_MODEL is empty: the judge's model name (the paper used DeepSeek-V3.2-Exp)"
  [[ -z $JUDGE_API_KEY_ENV || -n ${!JUDGE_API_KEY_ENV:-} ]] || die "JUDGE_API_KEY_ENV=$JUDGE_API_KEY_ENV names an unset or empty variable"
  [[ -z $PROMPT_DIR || -d $PROMPT_DIR ]] || die "PROMPT_DIR=$PROMPT_DIR is not a directory"
  [[ $JUDGE_INPUT =~ ^(full|final)$ ]] || die "JUDGE_INPUT=$JUDGE_INPUT: expected full or final"
  [[ $SELECT_BY =~ ^(acc_pf|acc_da|acc_mis|m_th|m_dm|m_ie|e_puv|e_hp|e_ir|e_ur)$ ]] ||
    die "SELECT_BY=$SELECT_BY: expected acc_pf, acc_da, acc_mis, m_th, m_dm, m_ie, e_puv, e_hp, e_ir or e_ur"
  [[ $GPUS =~ ^[0-9]+(,[0-9]+)*$ ]] || die "GPUS=$GPUS: expected comma-separated GPU ids such as 0,1"
  ((VLLM_PORT <= 65535)) || die "VLLM_PORT=$VLLM_PORT out of range"
  local run
  for run in $BASELINES; do
    [[ $run == ?*=?* && -f ${run#*=} ]] || die "BASELINES: '$run' is not NAME=<judgments file that exists>"
  done
  find_checkpoints
}

build_commands() {  # per checkpoint i: SERVE_CMDS[i], GEN_CMDS[i], JUDGE_CMDS[i]; then REPORT_CMD
  read -r -a VLLM_WORDS <<<"$VLLM"
  read -r -a CDRA_WORDS <<<"$CDRA"
  read -r -a VLLM_EXTRA <<<"$VLLM_EXTRA_ARGS"
  IFS=, read -r -a GPU_LIST <<<"$GPUS"
  BACKEND="http://$VLLM_HOST:$VLLM_PORT/v1"
  local gen_args=(--data "$DATA" --backend "$BACKEND" --mode "$MODE" --n "$N_SAMPLES" --temperature "$TEMPERATURE"
    --max-tokens "$MAX_TOKENS" --seed "$SEED" --concurrency "$GEN_CONCURRENCY")
  [[ -z $LIMIT ]] || gen_args+=(--limit "$LIMIT")
  [[ $MODE != few-shot ]] || gen_args+=(--shots "$SHOTS" --k "$K")
  local judge_args=(--judge "$JUDGE_URL" --judge-model "$JUDGE_MODEL" --concurrency "$JUDGE_CONCURRENCY"
    --judge-input "$JUDGE_INPUT")
  [[ -z $JUDGE_API_KEY_ENV ]] || judge_args+=(--api-key-env "$JUDGE_API_KEY_ENV")
  [[ -z $CHECKS ]] || judge_args+=(--checks "$CHECKS")
  [[ -z $PROMPT_DIR ]] || judge_args+=(--prompt-dir "$PROMPT_DIR")
  SERVE_CMDS=()
  GEN_CMDS=()
  JUDGE_CMDS=()
  RUNS=()
  local i dir
  for i in "${!CKPTS[@]}"; do
    dir=$OUT_DIR/${NAMES[i]}
    SERVE_CMDS+=("$(printf '%q ' "${VLLM_WORDS[@]}" serve "${CKPTS[i]}" --served-model-name "${NAMES[i]}" \
      --host "$VLLM_HOST" --port "$VLLM_PORT" --tensor-parallel-size "${#GPU_LIST[@]}" \
      --gpu-memory-utilization "$GPU_MEMORY_UTILIZATION" --max-model-len "$MAX_MODEL_LEN" "${VLLM_EXTRA[@]}")")
    GEN_CMDS+=("$(printf '%q ' "${CDRA_WORDS[@]}" eval generate "${gen_args[@]}" --model "${NAMES[i]}" \
      --output "$dir/responses.jsonl")")
    JUDGE_CMDS+=("$(printf '%q ' "${CDRA_WORDS[@]}" eval judge "${judge_args[@]}" --responses "$dir/responses.jsonl" \
      --output "$dir/judgments.jsonl")")
    RUNS+=("${NAMES[i]}=$dir/judgments.jsonl")
  done
  read -r -a BASELINE_RUNS <<<"$BASELINES"
  REPORT_CMD=("${CDRA_WORDS[@]}" eval report --runs "${BASELINE_RUNS[@]}" "${RUNS[@]}" --output "$OUT_DIR/report"
    --bootstrap "$BOOTSTRAP" --seed "$SEED" --select-by "$SELECT_BY")
}

SERVER_PID=""
JUDGE_PIDS=()
cleanup() {
  local pid
  for pid in $SERVER_PID "${JUDGE_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}

port_busy() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_healthy() {  # URL PID LOG: poll until URL answers 200, the process dies, or the timeout
  local url=$1 pid=$2 log=$3 deadline=$((SECONDS + HEALTH_TIMEOUT))
  until "$PYTHON" -c 'import sys, urllib.request; sys.exit(urllib.request.urlopen(sys.argv[1], timeout=5).status != 200)' "$url" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$log" >&2 || true
      die "the server for $url exited; its log: $log"
    fi
    ((SECONDS < deadline)) || die "$url not healthy after $HEALTH_TIMEOUT s (HEALTH_TIMEOUT); see $log"
    sleep 0.5
  done
}

generate() {  # I: serve checkpoint I, generate its responses, stop the server
  local i=$1 log="$LOG_DIR/vllm_${NAMES[i]}.log"
  ! port_busy "$VLLM_HOST" "$VLLM_PORT" || die "port $VLLM_PORT on $VLLM_HOST is in use (VLLM_PORT)"
  echo "$RECIPE: [${NAMES[i]}] serving ${CKPTS[i]} on GPU(s) $GPUS (log $log)"
  CUDA_VISIBLE_DEVICES=$GPUS bash -c "exec ${SERVE_CMDS[i]}" >"$log" 2>&1 &
  SERVER_PID=$!
  wait_healthy "$BACKEND/models" "$SERVER_PID" "$log"
  echo "$RECIPE: [${NAMES[i]}] generating"
  bash -c "${GEN_CMDS[i]}" || die "generation for ${NAMES[i]} failed (above); rerun to resume"
  kill "$SERVER_PID"
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}

check_inputs
build_commands
if [[ $DRY_RUN == 1 ]]; then
  for i in "${!CKPTS[@]}"; do
    echo "CUDA_VISIBLE_DEVICES=$GPUS ${SERVE_CMDS[i]}"
    echo "${GEN_CMDS[i]}"
    echo "${JUDGE_CMDS[i]}"
  done
  printf '%q ' "${REPORT_CMD[@]}"
  echo
  exit 0
fi
command -v "${VLLM_WORDS[0]}" >/dev/null || die "'${VLLM_WORDS[0]}' is not on PATH (VLLM): activate the environment (source ~/.venvs/cdra-plugin/bin/activate)"
command -v "${CDRA_WORDS[0]}" >/dev/null || die "'${CDRA_WORDS[0]}' is not on PATH (CDRA): pip install -e . in the environment"

mkdir -p "$LOG_DIR"
trap cleanup EXIT
trap 'exit 130' INT TERM
for i in "${!CKPTS[@]}"; do
  dir=$OUT_DIR/${NAMES[i]}
  mkdir -p "$dir"
  # responses.done holds the generate command that completed; results of other settings are never mixed in
  if [[ -f $dir/responses.done ]]; then
    [[ $(<"$dir/responses.done") == "${GEN_CMDS[i]}" ]] ||
      die "$dir holds responses generated with other settings ($dir/responses.done): set another OUT_DIR"
    echo "$RECIPE: [${NAMES[i]}] responses complete ($dir/responses.jsonl)"
  else
    generate "$i"
    echo "${GEN_CMDS[i]}" >"$dir/responses.done"
  fi
  echo "$RECIPE: [${NAMES[i]}] judging in the background (log $LOG_DIR/judge_${NAMES[i]}.log)"
  bash -c "${JUDGE_CMDS[i]}" >"$LOG_DIR/judge_${NAMES[i]}.log" 2>&1 &
  JUDGE_PIDS+=($!)
done
for i in "${!JUDGE_PIDS[@]}"; do
  if ! wait "${JUDGE_PIDS[i]}"; then
    tail -n 5 "$LOG_DIR/judge_${NAMES[i]}.log" >&2 || true
    die "judging ${NAMES[i]} failed; its log: $LOG_DIR/judge_${NAMES[i]}.log (rerun to resume)"
  fi
  tail -n 1 "$LOG_DIR/judge_${NAMES[i]}.log"
done
JUDGE_PIDS=()

"${REPORT_CMD[@]}" | tee "$OUT_DIR/report.txt"
best=$(sed -n 's/^best: \([^ ]*\) .*/\1/p' "$OUT_DIR/report.txt")
for i in "${!NAMES[@]}"; do
  if [[ ${NAMES[i]} == "$best" ]]; then
    echo "${CKPTS[i]}" >"$OUT_DIR/best_checkpoint.txt"
    echo "$RECIPE: best checkpoint by $SELECT_BY: ${CKPTS[i]} ($(grep '^best: ' "$OUT_DIR/report.txt" | cut -d' ' -f3))"
    echo "$RECIPE: report in $OUT_DIR/report (report.md, radar.png); the path is in $OUT_DIR/best_checkpoint.txt"
    exit 0
  fi
done
echo "$RECIPE: no checkpoint won by $SELECT_BY (the best run is '${best:-none}'); report in $OUT_DIR/report"
