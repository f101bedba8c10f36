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
# a local vLLM). Every value below is an environment variable with a default.
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
CDRA=${CDRA:-cdra}
DRY_RUN=${DRY_RUN:-0}

RECIPE=$(basename "$0")
die() {
  echo "$RECIPE: error: $*" >&2
  exit 2
}
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

check_inputs() {
  [[ -e $INPUT ]] || die "INPUT=$INPUT not found: a PrefEval JSON file or folder, or JSONL rows {preference, question, topic?}"
  [[ ! -e $OUTPUT || -d $OUTPUT ]] || die "OUTPUT=$OUTPUT exists and is not a directory"
  local role urls model key url var
  for role in GENERATOR EVALUATOR; do
    urls="${role}_URL" model="${role}_MODEL" key="${role}_KEY_ENV"
    IFS=, read -r -a URL_LIST <<<"${!urls}"
    ((${#URL_LIST[@]} >= 1)) || die "$urls is empty: the OpenAI-compatible base URL(s) of the $role"
    for url in "${URL_LIST[@]}"; do
      [[ $url =~ ^https?://[^/]+ ]] || die "$urls=${!urls}: '$url' is not an http(s) URL"
    done
    [[ -n ${!model} ]] || die "$model is empty: the model name the server serves"
    var=${!key}
    [[ -z $var || -n ${!var:-} ]] || die "$key=$var names an unset or empty variable (set it, or $key= for no key)"
  done
  local name
  for name in BRANCH DEPTH KEEP_TOP GENERATOR_CONCURRENCY EVALUATOR_CONCURRENCY RETRIES; do
    is_uint "${!name}" || die "$name=${!name}: expected a non-negative integer"
  done
  ((BRANCH >= 1 && DEPTH >= 1)) || die "BRANCH and DEPTH must be >= 1"
  [[ -z $PARALLEL ]] || { is_uint "$PARALLEL" && ((PARALLEL >= 1)); } || die "PARALLEL=$PARALLEL: expected a positive integer"
  [[ -z $LIMIT ]] || is_uint "$LIMIT" || die "LIMIT=$LIMIT: expected a non-negative integer"
  [[ $PRUNE_BELOW == off || $PRUNE_BELOW =~ ^-?[0-9]*\.?[0-9]+$ ]] || die "PRUNE_BELOW=$PRUNE_BELOW: a number in [-1, 1] or off"
  [[ $SEED == none ]] || is_uint "$SEED" || die "SEED=$SEED: a non-negative integer or none"
  [[ $PERSONAS != *.json || -f $PERSONAS ]] || die "PERSONAS=$PERSONAS not found"
}

build_command() {
  read -r -a EXTRA <<<"$EXTRA_ARGS"
  CMD=("$CDRA" build --input "$INPUT" --output "$OUTPUT"
    --generator "$GENERATOR_URL" --generator-model "$GENERATOR_MODEL" --generator-concurrency "$GENERATOR_CONCURRENCY"
    --evaluator "$EVALUATOR_URL" --evaluator-model "$EVALUATOR_MODEL" --evaluator-concurrency "$EVALUATOR_CONCURRENCY"
    --branch "$BRANCH" --depth "$DEPTH" --prune-below "$PRUNE_BELOW" --keep-top "$KEEP_TOP" --seed "$SEED"
    --timeout "$TIMEOUT" --retries "$RETRIES")
  [[ -z $PARALLEL ]] || CMD+=(--parallel "$PARALLEL")
  [[ -z $GENERATOR_KEY_ENV ]] || CMD+=(--generator-api-key-env "$GENERATOR_KEY_ENV")
  [[ -z $EVALUATOR_KEY_ENV ]] || CMD+=(--evaluator-api-key-env "$EVALUATOR_KEY_ENV")
  [[ -z $PERSONAS ]] || CMD+=(--personas "$PERSONAS")
  [[ -z $LIMIT ]] || CMD+=(--limit "$LIMIT")
  CMD+=("${EXTRA[@]}")
}

check_inputs
build_command
if [[ $DRY_RUN == 1 ]]; then
  printf '%q ' "${CMD[@]}"
  echo
  exit 0
fi
command -v "$CDRA" >/dev/null || die "'$CDRA' is not on PATH (CDRA): activate the environment (source ~/.venvs/cdra-plugin/bin/activate)"
"${CMD[@]}"
echo "$RECIPE: next: $CDRA data prepare --input $OUTPUT --output data/deeppref"
