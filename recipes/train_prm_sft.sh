#!/usr/bin/env bash
# Pers-GenPRM (paper Section 2.3): SFT of Qwen2.5-7B-Instruct on prm_sft.jsonl with OpenRLHF's own trainer.
#
# Each example is (P, q, tau<=j) -> "Reasoning: <critique c_j>\nSCORE: <r_j>" (Eq. 1). The loss is Eq. 2: the
# log-likelihood of the critique and score tokens only, which is what openrlhf.cli.train_sft does with
# --data.input_key input --data.output_key output --data.apply_chat_template (prompt tokens are masked out).
#
#   cdra data prepare --input path/to/deeppref/ --output data/deeppref
#   bash recipes/train_prm_sft.sh                               # 1 node, all its GPUs
#   DRY_RUN=1 bash recipes/train_prm_sft.sh                     # check inputs, print the command, launch nothing
#   DATA=my/prm_sft.jsonl MODEL=/models/qwen7b LR=1e-5 bash recipes/train_prm_sft.sh
#   HOSTFILE=hosts.txt bash recipes/train_prm_sft.sh            # multi-node (DeepSpeed hostfile)
#   EXTRA_ARGS="--ds.lora.rank 64 --ds.lora.alpha 128" bash recipes/train_prm_sft.sh
#
# Every value below is an environment variable with a default. Hyper-parameters are not given in the paper;
# the defaults are ordinary full-parameter SFT settings for a 7B model on 8 x 80 GB GPUs.
set -euo pipefail

RECIPE=train_prm_sft.sh
DATA_NAME=prm_sft.jsonl
DATA=${DATA:-data/deeppref/prm_sft.jsonl}
SAVE_PATH=${SAVE_PATH:-checkpoints/pers-genprm}
EPOCHS=${EPOCHS:-2}
BATCH_SIZE=${BATCH_SIZE:-64}
LR=${LR:-5e-6}

# shellcheck source=lib/sft.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/sft.sh"
