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
  local status=0 answer probe=(--option REWARD_URL)
  [[ -z ${AUTH_TOKEN_ENV:-} ]] || probe+=(--token-env "$AUTH_TOKEN_ENV")
  [[ -z $REWARD_AGGREGATION ]] || probe+=(--aggregation "$REWARD_AGGREGATION")
  [[ -z ${1:-} ]] || probe+=(--no-drop "$1")
  # cdra_plugin.prm.probe: the GET /health check the TRL entry point makes too (0 usable, 1 not, 3 no answer)
  answer=$("$PYTHON" -m cdra_plugin.prm.probe "$REWARD_URL" "${probe[@]}") || status=$?
  if ((status == 0)); then
    note "PRM gateway at $REWARD_URL: $answer"
  elif ((status == 3)) && [[ $DRY_RUN == 1 ]]; then
    note "warning: no PRM gateway answers at $REWARD_URL ($answer): DRY_RUN=1 goes on"
  else
    die "the PRM gateway at $REWARD_URL is not usable: ${answer:-'$PYTHON' cannot run cdra_plugin.prm.probe (activate the environment)}"
  fi
}
