#!/usr/bin/env bash
# The paper's "GRPO (with PRM)" baseline (Table 1): the same data, policy and PRM gateway as recipes/train_cdpa.sh,
# but OpenRLHF's own group_norm estimator on the gateway's scalar reward: run by OpenRLHF's train_ppo_ray unchanged
# (STREAM_SCORING=0, the default), or by cdra-train with streaming step scoring (STREAM_SCORING=1: the host's
# estimator and trainer code, the same rewards, scored sooner).
#
#   REWARD_AGGREGATION=sum FAILURE_POLICY=fail bash recipes/serve_prm.sh &   # the gateway this baseline needs
#   bash recipes/train_grpo_baseline.sh                                       # same variables as train_cdpa.sh
#
# The paper's reward here is R_dense = sum_j r_j (Section 2.3), so the gateway must run --reward-aggregation sum,
# which is not its default: a sum grows with the number of steps, so a policy can raise it by splitting the same
# text into more steps (the README's gateway section), and the gateway defaults to min, which no splitting,
# padding, repetition or reordering raises. This recipe reads the aggregation from the gateway's GET /health and
# refuses any other; set REWARD_AGGREGATION=min (or mean, weighted_mean) to train GRPO on that reward knowingly,
# which is not the paper's row.
# OpenRLHF's group_norm cannot leave a sample out either: start the gateway with FAILURE_POLICY=fail (or an explicit
# `score=X`), never `drop`, whose 0.0 reward would otherwise be normalised into the advantages; that is checked too.
set -euo pipefail
export ESTIMATOR=group_norm RECIPE=train_grpo_baseline.sh
export REWARD_AGGREGATION=${REWARD_AGGREGATION:-sum}
export SAVE_PATH=${SAVE_PATH:-checkpoints/policy-grpo}
exec bash "$(dirname "$0")/train_cdpa.sh" "$@"
