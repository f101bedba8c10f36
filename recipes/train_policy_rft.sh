#!/usr/bin/env bash
# Policy initialisation pi_0 (paper Section 2.4, step 1): rejection-sampling fine-tuning of Qwen2.5-7B-Instruct on
# rft.jsonl, the D_RFT subset of Appendix E (per scenario the DeepPref path(s) with the highest R = sum_j r_j).
#
# Each example is the Fig. 14 prompt for (P, q) -> "Step 1: ...\nStep N: <answer>", the format the PRM gateway
# segments during RL. openrlhf.cli.train_sft with --data.input_key input --data.output_key output
# --data.apply_chat_template trains on the answer tokens only. The result is the --model of the RL stage.
#
#   cdra data prepare --input path/to/deeppref/ --output data/deeppref
#   bash recipes/train_policy_rft.sh                            # 1 node, all its GPUs
#   DRY_RUN=1 bash recipes/train_policy_rft.sh                  # check inputs, print the command, launch nothing
#   DATA=my/rft.jsonl MODEL=/models/qwen7b LR=1e-5 bash recipes/train_policy_rft.sh
#   HOSTFILE=hosts.txt bash recipes/train_policy_rft.sh         # multi-node (DeepSpeed hostfile)
#   EXTRA_ARGS="--ds.lora.rank 64 --ds.lora.alpha 128" bash recipes/train_policy_rft.sh
#
# Every value below is an environment variable with a default. Hyper-parameters are not given in the paper;
# the defaults are ordinary full-parameter SFT settings for a 7B model on 8 x 80 GB GPUs.
set -euo pipefail

RECIPE=train_policy_rft.sh
DATA_NAME=rft.jsonl
DATA=${DATA:-data/deeppref/rft.jsonl}
SAVE_PATH=${SAVE_PATH:-checkpoints/policy-rft}
EPOCHS=${EPOCHS:-3}
BATCH_SIZE=${BATCH_SIZE:-32}
LR=${LR:-1e-5}

# shellcheck source=lib/sft.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/sft.sh"
