# Checks shared by the recipes, sourced after the recipe has set RECIPE and its variables' defaults. Every value is
# checked before anything launches; a problem stops the recipe with one line, "<recipe>: error: <what is wrong and
# what to do>", status 2. Notes go to stderr, so that a dry run's stdout is the command alone.
#
# The recipe's variables are those it gives a default (NAME=${NAME:-default}), here and in the files it sourced: an
# environment variable that looks like one of them and is not (CDPA_MDOE, N_SAMPLE, n_samples, CDPA_EPS) stops it
# at once; recipes/lib/variables.py states the rule. print_settings shows them all as the run uses them.

PYTHON=${PYTHON:-python3}  # the environment's interpreter: imports torch for the GPU check
GPU_CHECK=${GPU_CHECK:-1}

die() {
  echo "$RECIPE: error: $*" >&2
  exit 2
}
note() { echo "$RECIPE: $*" >&2; }

# The recipe file first, then the lib files sourced on the way here (this one last).
_sources=()
for ((_i = ${#BASH_SOURCE[@]} - 1; _i >= 0; _i--)); do _sources+=("${BASH_SOURCE[_i]}"); done
RECIPE_VARIABLES=$("$PYTHON" "$(dirname "${BASH_SOURCE[0]}")/variables.py" "$RECIPE" "${_sources[@]}") ||
  die "${RECIPE_VARIABLES:-'$PYTHON' cannot run recipes/lib/variables.py (set PYTHON to a Python 3 interpreter)}"
unset _sources _i

print_settings() {  # the recipe's variables as this run uses them, one per line (stderr)
  local name
  note "settings:"
  for name in $RECIPE_VARIABLES; do printf '  %s=%s\n' "$name" "${!name}" >&2; done
}

need_choice() {  # VAR CHOICE...
  local var=$1 choice
  shift
  for choice; do [[ ${!var} == "$choice" ]] && return 0; done
  die "$var=${!var}: expected one of: $*"
}

need_aggregation() {  # VAR: empty (any, or the gateway's default) or a reward aggregation of `cdra prm serve`
  [[ -z ${!1} ]] || need_choice "$1" min mean weighted_mean sum
}

need_cdpa_mode() {  # CDPA_MODE: one of cdra_plugin.cdpa.advantage.MODES, asked of $PYTHON (loads torch: check it last)
  local modes
  modes=$("$PYTHON" -c 'from cdra_plugin.cdpa.advantage import MODES; print(*MODES)' 2>/dev/null) ||
    die "cdra_plugin is not importable by '$PYTHON' (it checks CDPA_MODE): activate the environment (source \"\${CDRA_VENV:-\$HOME/.venvs/cdra-plugin}/bin/activate\")"
  # shellcheck disable=SC2086  # one word per mode
  need_choice CDPA_MODE $modes
}

need_int() {  # VAR MIN [MAX]: a whole number in [MIN, MAX]
  local var=$1 min=$2 max=${3:-} value
  local range=">= $min${max:+ and <= $max}"
  [[ ${!var} =~ ^-?[0-9]{1,15}$ ]] || die "$var=${!var}: expected a whole number $range"
  value=$((10#${!var#-}))  # 10#: "08" is eight, not a bad octal number
  [[ ${!var} != -* ]] || value=$((-value))
  ((value >= min)) && { [[ -z $max ]] || ((value <= max)); } || die "$var=${!var}: expected a whole number $range"
  printf -v "$var" '%d' "$value"  # plain decimal from here on, for the recipe's arithmetic
}

need_number() {  # VAR CONDITION DESCRIPTION: a decimal number x (1e-6, 0.5, -3) for which the awk CONDITION holds
  local var=$1 condition=$2 description=$3
  [[ ${!var} =~ ^-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$ ]] &&
    awk -v x="${!var}" "BEGIN { x += 0; exit !($condition) }" ||
    die "$var=${!var}: expected a number $description"
}

need_choices() {  # VAR CHOICE...: a comma-separated list of one or more CHOICEs
  local var=$1 item items
  shift
  [[ ${!var} =~ ^[^,]+(,[^,]+)*$ ]] || die "$var=${!var}: expected a comma-separated list of: $*"
  IFS=, read -r -a items <<<"${!var}"
  for item in "${items[@]}"; do
    [[ " $* " == *" $item "* ]] || die "$var=${!var}: '$item' is not one of: $*"
  done
}

need_llm_values() {  # WHAT KEY:VAR...: values of an LLM client for WHAT (an endpoint), by the client's own rules
  local what=$1 spec name out args=()
  shift
  for spec; do
    name=${spec#*:}
    args+=("$spec=${!name}")
  done
  out=$("$PYTHON" -m cdra_plugin.llm.options "${args[@]}" 2>&1) && return 0
  [[ $out == *"No module named"* ]] &&
    die "cdra_plugin is not importable by '$PYTHON' (it checks the values of $what): activate the environment (source \"\${CDRA_VENV:-\$HOME/.venvs/cdra-plugin}/bin/activate\")"
  die "$out"
}

need_host() {  # VAR: the address a server binds, a host name or IPv4 address (127.0.0.1 keeps it on this machine)
  [[ ${!1} =~ ^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]] ||
    die "$1=${!1}: expected a host name or IPv4 address such as 127.0.0.1 (no scheme, no port)"
}

need_gpu_ids() {  # VAR: comma-separated GPU ids such as 0,1,2,3
  [[ ${!1} =~ ^[0-9]+(,[0-9]+)*$ ]] || die "$1=${!1}: expected comma-separated GPU ids such as 0,1,2,3"
}

need_command() {  # VAR: the first word of the command VAR names is on PATH
  local words
  read -r -a words <<<"${!1}"
  [[ -n ${words[0]:-} ]] || die "$1 is empty: the command to run"
  command -v "${words[0]}" >/dev/null ||
    die "'${words[0]}' is not on PATH ($1): activate the environment (source \"\${CDRA_VENV:-\$HOME/.venvs/cdra-plugin}/bin/activate\")"
}

need_env_var_name() {  # VAR: empty, or the name of a set, non-empty environment variable (holding a secret)
  local var=$1 holder=${!1}
  [[ -z $holder ]] && return 0
  [[ $holder =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "$var=$holder: expected the NAME of an environment variable"
  [[ -n ${!holder:-} ]] || die "$var=$holder names an unset or empty variable: export $holder first, or set $var= for no secret"
}

looks_local() {  # PATH: a path, never to be taken for a Hugging Face hub id ("name" or "org/name")
  # Absolute, ./ ../ ~ paths, anything that exists, the recipes' own checkpoints/ and paths with two slashes.
  [[ $1 == /* || $1 == .* || $1 == '~'* || $1 == checkpoints/* || $1 == */*/* || -e $1 ]]
}

check_model() {  # VAR HOW: a local checkpoint folder with config.json, or a Hugging Face hub id
  local var=$1 how=$2 value=${!1}
  [[ -n $value ]] || die "$var is empty: $how"
  if looks_local "$value"; then  # what looks local is local: never silently taken for a hub id
    [[ -d $value ]] || die "$var=$value: no such folder; $how"
    [[ -f $value/config.json ]] || die "$var=$value has no config.json: $how"
  elif [[ $value =~ ^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$ ]]; then
    note "$var=$value is no local folder: taken for a Hugging Face hub id (downloaded at launch unless cached)"
  else
    die "$var=$value is neither a local folder nor a hub id (org/name): $how"
  fi
}

prepare_hint() {  # VAR NAME: how to get the file VAR names, a NAME written by `cdra data prepare`
  local dir
  dir=$(dirname "${!1}")
  if [[ $(basename "${!1}") == "$2" && $dir != / ]]; then
    echo "write it with 'cdra data prepare --input <DeepPref files> --output $dir', or set $1 to an existing $2"
  else
    echo "set $1 to an existing $2 ('cdra data prepare --input <DeepPref files> --output DIR' writes DIR/$2)"
  fi
}

check_jsonl() {  # VAR HOW KEYVAR...: a non-empty JSONL file whose first row has the keys named by KEYVAR...
  local var=$1 how=$2 file=${!1} first keyvar
  shift 2
  [[ -n $file ]] || die "$var is empty: $how"
  [[ -f $file ]] || die "$var=$file not found: $how"
  [[ -s $file ]] || die "$var=$file is empty: no example (check the stats.json beside it)"
  # `cdra data prepare` commits its files as one set; a journal beside them means a crash cut a commit short.
  [[ ! -e $(dirname "$file")/.cdra-commit.json ]] ||
    die "$var=$file: a crash interrupted 'cdra data prepare' writing this folder (the files may mix two runs): run it again with the same --output, which completes the commit first"
  first=$(head -n 1 "$file")
  for keyvar; do
    [[ $first == *"\"${!keyvar}\":"* ]] ||
      die "$var=$file: first row has no \"${!keyvar}\" key ($keyvar); is it the file 'cdra data prepare' wrote?"
  done
}

check_gpus() {  # N WHAT [physical]: torch sees at least N CUDA GPUs (physical: ignoring CUDA_VISIBLE_DEVICES)
  local want=$1 what=$2 physical=${3:-} reason
  if [[ $DRY_RUN == 1 ]]; then
    note "DRY_RUN=1: not checking for $want GPU(s) ($what)"
    return 0
  elif [[ $GPU_CHECK == 0 ]]; then
    note "GPU_CHECK=0: not checking for $want GPU(s) ($what)"
    return 0
  fi
  # torch is what DeepSpeed, vLLM and Ray's workers use: a CPU-only build on a GPU machine fails here, not later.
  reason=$(${physical:+env -u CUDA_VISIBLE_DEVICES} "$PYTHON" - "$want" 2>/dev/null <<'PY'
import os, sys
want = int(sys.argv[1])
def fail(reason):
    print(reason)
    sys.exit(1)
try:
    import torch
except Exception as e:
    fail(f"cannot import torch ({type(e).__name__}: {e}): activate the environment (scripts/setup_env.sh)")
found = f"torch {torch.__version__}"
if torch.version.cuda is None and torch.version.hip is None:
    fail(f"{found} is a CPU-only build: run on a GPU machine with the GPU environment (scripts/setup_env.sh)")
have = torch.cuda.device_count() if torch.cuda.is_available() else 0
if have < want:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    fail(f"{found} sees {have} usable GPU(s)" + (f" with CUDA_VISIBLE_DEVICES={visible}" if visible is not None else ""))
PY
  ) || die "needs $want CUDA GPU(s) ($what): ${reason:-'$PYTHON' failed}; DRY_RUN=1 checks the inputs without GPUs"
}

check_gpu_ids() {  # VAR: every GPU id in VAR exists (physical ids: a server gets CUDA_VISIBLE_DEVICES=<its ids>)
  local id ids highest=0
  IFS=, read -r -a ids <<<"${!1}"
  for id in "${ids[@]}"; do ((10#$id < highest)) || highest=$((10#$id)); done
  check_gpus $((highest + 1)) "$1=${!1}" physical
}
