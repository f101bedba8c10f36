#!/usr/bin/env bash
# The paper's GRPO baseline (Table 1): the same data, policy and PRM gateway as recipes/train_cdpa.sh, but OpenRLHF's
# own group_norm estimator on the gateway's scalar reward (the dense reward R = sum_j r_j of Section 2.3), run by
# OpenRLHF's train_ppo_ray unchanged.
#
#   bash recipes/train_grpo_baseline.sh                      # same variables as train_cdpa.sh
#
# OpenRLHF's group_norm cannot leave a sample out: start the gateway with `--failure-policy fail` (or an explicit
# `score=X`), never `drop`, whose 0.0 reward would otherwise be normalised into the advantages.
set -euo pipefail
export ESTIMATOR=group_norm RECIPE=train_grpo_baseline.sh
export SAVE_PATH=${SAVE_PATH:-checkpoints/policy-grpo}
exec bash "$(dirname "$0")/train_cdpa.sh" "$@"
