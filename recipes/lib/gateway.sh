# The PRM gateway (`cdra prm serve`, recipes/serve_prm.sh) that a training recipe's rollouts are scored by
# (train_cdpa.sh, train_cdpa_trl.sh): its variables, and its GET /health, checked before launching, dry runs included.
# Sourced after checks.sh; reads the recipe's REWARD_URL, AUTH_TOKEN_ENV, REWARD_AGGREGATION (empty: any),
# SKIP_HEALTH_CHECK and DRY_RUN.

check_gateway_values() {
  need_choice SKIP_HEALTH_CHECK 0 1
  need_aggregation REWARD_AGGREGATION
  [[ $REWARD_URL =~ ^https?://[^/]+/get_reward$ ]] || die "REWARD_URL=$REWARD_URL must be the gateway's http://HOST:PORT/get_reward"
  need_env_var_name AUTH_TOKEN_ENV
}

check_gateway() {  # [NO_DROP]: every PRM backend up, the aggregation REWARD_AGGREGATION names and, given NO_DROP (why
  # this run cannot leave a dropped sample out), not --failure-policy drop. Unreachable: a dry run warns and goes on.
  if [[ $SKIP_HEALTH_CHECK == 1 ]]; then
    note "SKIP_HEALTH_CHECK=1: the PRM gateway at $REWARD_URL is not checked"
    return 0
  fi
  local status=0 answer
  answer=$("$PYTHON" - "${REWARD_URL%/get_reward}/health" "${AUTH_TOKEN_ENV:-}" "$REWARD_AGGREGATION" "${1:-}" <<'PY'
import json, os, sys, urllib.error, urllib.request
url, token_env, aggregation, no_drop = sys.argv[1:]
def fail(reason, status=1):  # 3: nothing answered; 1: it answered, but cannot serve this run
    print(reason)
    sys.exit(status)
request = urllib.request.Request(url)
if token_env:
    request.add_header("Authorization", "Bearer " + os.environ[token_env])
try:
    with urllib.request.urlopen(request, timeout=10) as r:
        health = json.load(r)
except urllib.error.HTTPError as e:  # it answered: 503 when its backends are down, 401 without the token
    try:
        health = json.load(e)
    except ValueError:
        fail(f"GET {url}: HTTP {e.code}")
except Exception as e:
    fail(f"GET {url}: {getattr(e, 'reason', e)}; start it with recipes/serve_prm.sh, or set REWARD_URL", 3)
policy = health.get("failure_policy")
if health.get("status") != "ok":
    fail(f"status {health.get('status')}, backends {health.get('backends')}; check its PRM backends (its log)")
if no_drop and policy == "drop":
    fail(f"it runs --failure-policy drop, which {no_drop}: restart it with FAILURE_POLICY=fail")
served = health.get("reward_aggregation")
if aggregation and served != aggregation:
    why = " (R_dense = the sum of the step scores, the paper's GRPO (with PRM) reward)" if aggregation == "sum" else ""
    instead = f", or set REWARD_AGGREGATION={served} to train on its reward" if served else ""
    fail(f"its reward aggregation is {served or 'not reported'}, not REWARD_AGGREGATION={aggregation}{why}: "
         f"restart it with REWARD_AGGREGATION={aggregation} bash recipes/serve_prm.sh{instead}")
print(f"ok, model {health.get('model')}, failure policy {policy}, reward aggregation {served}")
PY
  ) || status=$?
  if ((status == 0)); then
    note "PRM gateway at $REWARD_URL: $answer"
  elif ((status == 3)) && [[ $DRY_RUN == 1 ]]; then
    note "warning: no PRM gateway answers at $REWARD_URL ($answer): DRY_RUN=1 goes on"
  else
    die "the PRM gateway at $REWARD_URL is not usable: ${answer:-'$PYTHON' failed}"
  fi
}
