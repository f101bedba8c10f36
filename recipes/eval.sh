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
#   MODE=few-shot SHOTS=data/deeppref/rft.jsonl CHECKPOINT=Qwen/Qwen2.5-7B-Instruct ... bash recipes/eval.sh
#   DRY_RUN=1 CHECKPOINT=... JUDGE_URL=... JUDGE_MODEL=... bash recipes/eval.sh                # check, print commands
#
# CHECKPOINT: a Hugging Face checkpoint (a folder with config.json, or a hub id), or the SAVE_PATH of
# recipes/train_cdpa.sh, whose ckpt/global_step<N>_hf folders (--ckpt.save_hf) and final model are evaluated in step
# order. Each checkpoint's responses and judgments go to OUT_DIR/<name>/; a rerun resumes (a checkpoint whose
# responses are complete is not served again). OUT_DIR/report holds report.md/.json/.csv, radar.png and errors.png;
# OUT_DIR/best_checkpoint.txt names the best checkpoint. Every value below is an environment variable. Before
# launching it checks every value and input, the commands, the port and that torch sees the GPUs in GPUS (GPU_CHECK=0
# skips that one, for a CPU build of vLLM or a stand-in given as VLLM); DRY_RUN=1 checks all but the last three.
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
PROMPT_DIR=${PROMPT_DIR:-}                          # judge prompts replacing the built-in ones (PrefEval's four
                                                    # check_*.txt for numbers comparable with the paper's PrefEval rows)
JUDGE_INPUT=${JUDGE_INPUT:-full}                    # full | final (the last step only)

# --- report and selection
SELECT_BY=${SELECT_BY:-acc_da}
BASELINES=${BASELINES:-}                            # more runs for the report: "NAME=JUDGMENTS.jsonl ..."
ALLOW_MIXED=${ALLOW_MIXED:-0}                       # 1: report runs judged with other judges or prompts (marked)

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
# shellcheck source=lib/checks.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/checks.sh"
# shellcheck source=lib/servers.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/servers.sh"

find_checkpoints() {  # CKPTS (paths or a hub id) and NAMES, in step order
  local dir found=()
  for dir in "$CHECKPOINT"/ckpt/*_hf "$CHECKPOINT"/*_hf; do  # train_cdpa.sh's --ckpt.save_hf folders
    if [[ -f $dir/config.json ]]; then found+=("$dir"); fi
  done
  CKPTS=()
  NAMES=()
  if ((${#found[@]})); then
    mapfile -t CKPTS < <(printf '%s\n' "${found[@]}" | sort -V)
    for dir in "${CKPTS[@]}"; do NAMES+=("$(basename "${dir%_hf}")"); done
    if [[ -f $CHECKPOINT/config.json ]]; then  # the final model, saved after the last step
      CKPTS+=("$CHECKPOINT")
      NAMES+=(final)
    fi
  else
    check_model CHECKPOINT "point it at a checkpoint folder, a hub id, or the SAVE_PATH of recipes/train_cdpa.sh (with ckpt/*_hf checkpoints)"
    CKPTS=("$CHECKPOINT")
    NAMES=("$(basename "$(realpath -m "$CHECKPOINT")")")
  fi
  [[ $(printf '%s\n' "${NAMES[@]}" | sort | uniq -d) == "" ]] || die "CHECKPOINT=$CHECKPOINT: two checkpoints are named alike (${NAMES[*]})"
}

check_pairs() {  # VAR HOW: a JSONL file whose first row has "preference" (and "question") or a "label" holding them
  check_jsonl "$1" "$2"
  local first
  first=$(head -n 1 "${!1}")
  [[ $first == *'"preference":'* || $first == *'"label":'* ]] ||
    die "${!1}: first row has neither \"preference\" nor \"label\" ($1); $2"
}

check_inputs() {
  need_choice DRY_RUN 0 1
  need_choice GPU_CHECK 0 1
  [[ -n $CHECKPOINT ]] || die "CHECKPOINT is empty: set it to a checkpoint, or to the SAVE_PATH of recipes/train_cdpa.sh"
  check_pairs DATA "$(prepare_hint DATA eval.jsonl)"
  [[ ! -e $OUT_DIR || -d $OUT_DIR ]] || die "OUT_DIR=$OUT_DIR exists and is not a folder"
  need_choice MODE policy zero-shot few-shot cot
  if [[ $MODE == few-shot ]]; then
    [[ -n $SHOTS ]] || die "MODE=few-shot needs SHOTS=<demonstrations JSONL>, such as the rft.jsonl of 'cdra data prepare'"
    check_pairs SHOTS "demonstrations are rows with preference, question and response (rft.jsonl of 'cdra data prepare' fits)"
    need_int K 1
  else
    [[ -z $SHOTS ]] || die "SHOTS is set but MODE=$MODE: demonstrations are for MODE=few-shot"
  fi
  need_int N_SAMPLES 1
  need_llm_values "the model" temperature:TEMPERATURE max_tokens:MAX_TOKENS concurrency:GEN_CONCURRENCY
  if ((N_SAMPLES > 1)) && awk -v x="$TEMPERATURE" 'BEGIN { exit !(x + 0 == 0) }'; then
    die "N_SAMPLES=$N_SAMPLES with TEMPERATURE=$TEMPERATURE samples identical responses: set TEMPERATURE > 0"
  fi
  [[ -z $LIMIT ]] || need_int LIMIT 1
  need_int SEED 0
  need_llm_values "the judge (such as https://api.deepseek.com/v1)" urls:JUDGE_URL api_key:JUDGE_API_KEY_ENV \
    concurrency:JUDGE_CONCURRENCY
  [[ -n $JUDGE_MODEL ]] || die "JUDGE_MODEL is empty: the judge's model name (the paper used DeepSeek-V3.2-Exp)"
  [[ -z $CHECKS ]] || need_choices CHECKS acknowledge violation hallucination helpful deep_mining innovative_expansion \
    thoughtfulness misleading
  [[ -z $PROMPT_DIR || -d $PROMPT_DIR ]] || die "PROMPT_DIR=$PROMPT_DIR is not a folder (of judge prompt files)"
  need_choice JUDGE_INPUT full final
  need_choice SELECT_BY acc_pf acc_da acc_mis m_th m_dm m_ie e_puv e_hp e_ir e_ur
  need_choice ALLOW_MIXED 0 1
  local run
  for run in $BASELINES; do
    [[ $run == ?*=?* && -f ${run#*=} ]] || die "BASELINES: '$run' is not NAME=<judgments file that exists>"
  done
  need_gpu_ids GPUS
  need_int VLLM_PORT 1 65535
  check_vllm_values
  [[ ! -e $LOG_DIR || -d $LOG_DIR ]] || die "LOG_DIR=$LOG_DIR exists and is not a folder"
  find_checkpoints
}

build_commands() {  # per checkpoint i: SERVE_CMDS[i], GEN_CMDS[i], JUDGE_CMDS[i]; then REPORT_CMD
  local cdra gpus baselines
  read -r -a cdra <<<"$CDRA"
  IFS=, read -r -a gpus <<<"$GPUS"
  BACKEND="http://$VLLM_HOST:$VLLM_PORT/v1"
  local gen_args=(--data "$DATA" --backend "$BACKEND" --mode "$MODE" --n "$N_SAMPLES" --temperature "$TEMPERATURE"
    --max-tokens "$MAX_TOKENS" --seed "$SEED" --concurrency "$GEN_CONCURRENCY")
  [[ -z $LIMIT ]] || gen_args+=(--limit "$LIMIT")
  [[ $MODE != few-shot ]] || gen_args+=(--shots "$SHOTS" --k "$K")
  local judge_args=(--judge "$JUDGE_URL" --judge-model "$JUDGE_MODEL" --concurrency "$JUDGE_CONCURRENCY"
    --judge-input "$JUDGE_INPUT" --retry-failed)
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
    SERVE_CMDS+=("$(vllm_command "${CKPTS[i]}" "${NAMES[i]}" "$VLLM_PORT" "${#gpus[@]}")")
    GEN_CMDS+=("$(printf '%q ' "${cdra[@]}" eval generate "${gen_args[@]}" --model "${NAMES[i]}" \
      --output "$dir/responses.jsonl")")
    JUDGE_CMDS+=("$(printf '%q ' "${cdra[@]}" eval judge "${judge_args[@]}" --responses "$dir/responses.jsonl" \
      --output "$dir/judgments.jsonl")")
    RUNS+=("${NAMES[i]}=$dir/judgments.jsonl")
  done
  read -r -a baselines <<<"$BASELINES"
  REPORT_CMD=("${cdra[@]}" eval report --runs "${baselines[@]}" "${RUNS[@]}" --output "$OUT_DIR/report"
    --select-by "$SELECT_BY")
  [[ $ALLOW_MIXED == 0 ]] || REPORT_CMD+=(--allow-mixed)
}

generate() {  # I: serve checkpoint I, generate its responses, stop the server
  local i=$1 log="$LOG_DIR/vllm_${NAMES[i]}.log" server
  need_free_port "$VLLM_HOST" "$VLLM_PORT" VLLM_PORT
  echo "$RECIPE: [${NAMES[i]}] serving ${CKPTS[i]} on GPU(s) $GPUS (log $log)"
  CUDA_VISIBLE_DEVICES=$GPUS bash -c "exec ${SERVE_CMDS[i]}" >"$log" 2>&1 &
  server=$!
  STARTED+=("$server")
  wait_healthy "$BACKEND/models" "$server" "$log"
  echo "$RECIPE: [${NAMES[i]}] generating"
  bash -c "${GEN_CMDS[i]}" || die "generation for ${NAMES[i]} failed (above); rerun to resume"
  stop_one "$server"
}

check_inputs
build_commands
if [[ $DRY_RUN == 1 ]]; then
  check_gpu_ids GPUS
  print_settings
  note "DRY_RUN=1: every value and input checked; vllm, cdra, the port and the GPUs are not. The commands:"
  for i in "${!CKPTS[@]}"; do
    echo "CUDA_VISIBLE_DEVICES=$GPUS ${SERVE_CMDS[i]}"
    echo "${GEN_CMDS[i]}"
    echo "${JUDGE_CMDS[i]}"
  done
  printf '%q ' "${REPORT_CMD[@]}"
  echo
  exit 0
fi
need_command VLLM
need_command CDRA
check_gpu_ids GPUS

mkdir -p "$LOG_DIR"
stop_on_exit
JUDGES=()
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
  STARTED+=($!)
  JUDGES+=($!)
done
for i in "${!JUDGES[@]}"; do
  if ! wait "${JUDGES[i]}"; then
    tail -n 5 "$LOG_DIR/judge_${NAMES[i]}.log" >&2 || true
    die "judging ${NAMES[i]} failed or left null verdicts; its log: $LOG_DIR/judge_${NAMES[i]}.log (rerun: finished judgments are kept, null verdicts are asked again)"
  fi
  tail -n 1 "$LOG_DIR/judge_${NAMES[i]}.log"
done
STARTED=()

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
