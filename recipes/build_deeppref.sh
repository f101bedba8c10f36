#!/usr/bin/env bash
# DeepPref construction (paper Section 2.2, Appendix E): the persona council grows a Tree of Thoughts for every
# (preference, question) pair with a generator model (Fig. 11); an evaluator model critiques and scores every
# thought (Fig. 12) and every finished path (Fig. 13). Runs `cdra build`; the output is what `cdra data prepare`
# reads. Resumable: run it again after an interrupt and it continues where it stopped.
#
#   bash recipes/build_deeppref.sh                            # PrefEval pairs, a local vLLM generator, GPT-4.1 judge
#   DRY_RUN=1 bash recipes/build_deeppref.sh                  # check inputs, print the command, call nothing
#   INPUT=my_pairs.jsonl OUTPUT=data/my_trees LIMIT=50 bash recipes/build_deeppref.sh
#   EVALUATOR_URL=http://127.0.0.1:8001/v1 EVALUATOR_MODEL=qwen-72b EVALUATOR_KEY_ENV= bash recipes/build_deeppref.sh
#
# then: cdra data prepare --input $OUTPUT --output data/deeppref
# API keys are never written here: *_KEY_ENV name the environment variables that hold them (empty: no key, as for
# a local vLLM). Every value below is an environment variable with a default; all are checked before anything is
# called (DRY_RUN=1 then prints the command); `cdra build` probes the two servers before its first scenario.
set -euo pipefail

# --- data
INPUT=${INPUT:-../shared/data/prefeval_explicit}   # PrefEval JSON file/folder, or JSONL {preference, question, topic?}
OUTPUT=${OUTPUT:-data/deeppref_trees}
LIMIT=${LIMIT:-}                                   # build only the first N pairs (empty: all)

# --- models (OpenAI-compatible servers; several comma-separated URLs are load-balanced)
GENERATOR_URL=${GENERATOR_URL:-http://127.0.0.1:8000/v1}
GENERATOR_MODEL=${GENERATOR_MODEL:-Qwen/Qwen2.5-72B-Instruct}
GENERATOR_KEY_ENV=${GENERATOR_KEY_ENV-}
EVALUATOR_URL=${EVALUATOR_URL:-https://api.openai.com/v1}
EVALUATOR_MODEL=${EVALUATOR_MODEL:-gpt-4.1}          # the paper's evaluator
EVALUATOR_KEY_ENV=${EVALUATOR_KEY_ENV-OPENAI_API_KEY}

# --- tree (Appendix E; the defaults give trees like the paper's Fig. 16, see the README)
PERSONAS=${PERSONAS:-}                             # empty: the paper's five; else names or a JSON file
BRANCH=${BRANCH:-2}
DEPTH=${DEPTH:-4}
PRUNE_BELOW=${PRUNE_BELOW:-0.4}
KEEP_TOP=${KEEP_TOP:-2}
SEED=${SEED:-0}

# --- throughput
PARALLEL=${PARALLEL:-}                             # scenarios in flight (empty: as many as the busier role's slots)
GENERATOR_CONCURRENCY=${GENERATOR_CONCURRENCY:-64} # calls in flight per generator URL
EVALUATOR_CONCURRENCY=${EVALUATOR_CONCURRENCY:-64} # calls in flight per evaluator URL
TIMEOUT=${TIMEOUT:-120}
RETRIES=${RETRIES:-3}
EXTRA_ARGS=${EXTRA_ARGS:-}
CDRA=${CDRA:-cdra}                                 # the cdra command (words are split: "python -m ..." works)
DRY_RUN=${DRY_RUN:-0}

RECIPE=$(basename "$0")
# shellcheck source=lib/checks.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/checks.sh"

check_personas() {  # empty (the paper's five), names among them ("Contrarian" or "The Contrarian"), or a JSON file
  local name names known="sociologist psychologist pragmatist pedagogue contrarian"
  if [[ $PERSONAS == *.json ]] || looks_local "$PERSONAS"; then
    [[ -f $PERSONAS ]] || die "PERSONAS=$PERSONAS not found: a JSON file of [{\"name\", \"description\"}], or names such as Sociologist,Contrarian"
    return 0
  fi
  IFS=, read -r -a names <<<"$PERSONAS"
  for name in "${names[@]}"; do
    read -r name <<<"${name,,}"  # trimmed, lower case
    [[ " $known " == *" ${name#the } "* ]] || die "PERSONAS=$PERSONAS: '$name' is not one of: $known (or a JSON file of personas)"
  done
}

check_inputs() {
  need_choice DRY_RUN 0 1
  [[ -n $INPUT ]] || die "INPUT is empty: a PrefEval JSON file or folder, or JSONL rows {preference, question, topic?}"
  [[ -e $INPUT ]] || die "INPUT=$INPUT not found: a PrefEval JSON file or folder, or JSONL rows {preference, question, topic?}"
  [[ -n $OUTPUT && (! -e $OUTPUT || -d $OUTPUT) ]] || die "OUTPUT=$OUTPUT: expected a folder for the trees"
  [[ -z $LIMIT ]] || need_int LIMIT 1
  need_llm_values "the generator" urls:GENERATOR_URL api_key:GENERATOR_KEY_ENV concurrency:GENERATOR_CONCURRENCY
  need_llm_values "the evaluator" urls:EVALUATOR_URL api_key:EVALUATOR_KEY_ENV concurrency:EVALUATOR_CONCURRENCY
  [[ -z $PARALLEL ]] || need_int PARALLEL 1
  need_llm_values "both" timeout:TIMEOUT retries:RETRIES
  check_personas
  need_int BRANCH 1
  need_int DEPTH 1
  [[ $PRUNE_BELOW == off ]] || need_number PRUNE_BELOW "x >= -1 && x <= 1" "in [-1, 1], or off"
  need_int KEEP_TOP 0
  [[ $SEED == none ]] || need_int SEED 0
}

build_command() {
  local cdra extra
  read -r -a cdra <<<"$CDRA"
  read -r -a extra <<<"$EXTRA_ARGS"
  CMD=("${cdra[@]}" build --input "$INPUT" --output "$OUTPUT"
    --generator "$GENERATOR_URL" --generator-model "$GENERATOR_MODEL" --generator-concurrency "$GENERATOR_CONCURRENCY"
    --evaluator "$EVALUATOR_URL" --evaluator-model "$EVALUATOR_MODEL" --evaluator-concurrency "$EVALUATOR_CONCURRENCY"
    --branch "$BRANCH" --depth "$DEPTH" --prune-below "$PRUNE_BELOW" --keep-top "$KEEP_TOP" --seed "$SEED"
    --timeout "$TIMEOUT" --retries "$RETRIES")
  [[ -z $PARALLEL ]] || CMD+=(--parallel "$PARALLEL")
  [[ -z $GENERATOR_KEY_ENV ]] || CMD+=(--generator-api-key-env "$GENERATOR_KEY_ENV")
  [[ -z $EVALUATOR_KEY_ENV ]] || CMD+=(--evaluator-api-key-env "$EVALUATOR_KEY_ENV")
  [[ -z $PERSONAS ]] || CMD+=(--personas "$PERSONAS")
  [[ -z $LIMIT ]] || CMD+=(--limit "$LIMIT")
  CMD+=("${extra[@]}")
}

check_inputs
build_command
if [[ $DRY_RUN == 1 ]]; then
  print_settings
  note "DRY_RUN=1: every value and input checked; cdra and the model servers are not (cdra build probes them). The command:"
  printf '%q ' "${CMD[@]}"
  echo
  exit 0
fi
need_command CDRA
"${CMD[@]}"
echo "$RECIPE: next: $CDRA data prepare --input $OUTPUT --output data/deeppref"
