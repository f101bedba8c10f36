# Servers and jobs a recipe starts in the background (serve_prm.sh, eval.sh): the vLLM command, free ports, waiting
# until a server answers, and stopping everything the recipe started when it exits (Ctrl-C and SIGTERM included).
# Sourced after checks.sh; reads the recipe's VLLM, VLLM_EXTRA_ARGS, VLLM_HOST, GPU_MEMORY_UTILIZATION, MAX_MODEL_LEN
# and HEALTH_TIMEOUT (check_vllm_values checks the last four).

STARTED=()  # pids of the servers and jobs started: stopped on exit

check_vllm_values() {
  need_host VLLM_HOST
  need_number GPU_MEMORY_UTILIZATION "x > 0 && x <= 1" "in (0, 1]"
  need_int MAX_MODEL_LEN 1
  need_int HEALTH_TIMEOUT 1
}

vllm_command() {  # MODEL NAME PORT TP [OPTION...]: the quoted `vllm serve` command line
  local words extra
  read -r -a words <<<"$VLLM"  # words are split: VLLM="python -m cdra_plugin.stub" works
  read -r -a extra <<<"$VLLM_EXTRA_ARGS"
  printf '%q ' "${words[@]}" serve "$1" --served-model-name "$2" --host "$VLLM_HOST" --port "$3" \
    --tensor-parallel-size "$4" --gpu-memory-utilization "$GPU_MEMORY_UTILIZATION" --max-model-len "$MAX_MODEL_LEN" \
    "${@:5}" "${extra[@]}"
}

need_free_port() {  # HOST PORT VAR: nothing listens on HOST:PORT yet
  ! (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null || die "port $2 on $1 is in use ($3): stop what listens there or set $3"
}

stop_started() {
  local pid
  for pid in "${STARTED[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}

stop_on_exit() {  # from here on, exiting (also on Ctrl-C or SIGTERM, status 130) stops what the recipe started
  trap stop_started EXIT
  trap 'exit 130' INT TERM
}

stop_one() {  # PID: stop one server the recipe started and forget it
  local pid keep=()
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  for pid in "${STARTED[@]}"; do [[ $pid == "$1" ]] || keep+=("$pid"); done
  STARTED=("${keep[@]}")
}

wait_healthy() {  # URL PID LOG [BEARER TOKEN]: poll until URL answers 200; stop if PID dies or HEALTH_TIMEOUT passes
  local url=$1 pid=$2 log=$3 deadline=$((SECONDS + HEALTH_TIMEOUT))
  until TOKEN=${4:-} "$PYTHON" - "$url" <<'PY' 2>/dev/null; do
import os, sys, urllib.request
request = urllib.request.Request(sys.argv[1])
if os.environ.get("TOKEN"):
    request.add_header("Authorization", "Bearer " + os.environ["TOKEN"])
with urllib.request.urlopen(request, timeout=5) as response:
    sys.exit(0 if response.status == 200 else 1)
PY
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$log" >&2 || true
      die "the server for $url exited; its log: $log"
    fi
    ((SECONDS < deadline)) || die "$url not healthy after $HEALTH_TIMEOUT s (HEALTH_TIMEOUT); see $log"
    sleep 0.5
  done
}
