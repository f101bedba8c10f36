"""``python -m cdra_plugin.trl.train``: CDPA with TRL from the command line (``recipes/train_cdpa_trl.sh`` launches it
with ``accelerate launch``). The paper's own training code is built on TRL and vLLM (its Sec. 3.1).

    accelerate launch --config_file zero3.yaml -m cdra_plugin.trl.train \\
        --model_name_or_path checkpoints/policy-rft --prompts data/deeppref/rl_prompts.jsonl \\
        --reward_url http://127.0.0.1:5000/get_reward --output_dir checkpoints/policy-cdpa-trl \\
        --num_generations 5 --temperature 1.0 --max_steps 400 --cdpa_mode token_position

Options: this script's (``ScriptArguments`` below), TRL's ``GRPOConfig`` (with ``TrainingArguments``) and
``CDPAConfig``'s ``--cdpa_mode``, ``--cdpa_eps``, ``--cdpa_outcome_aggregation``, all parsed by Hugging Face's
``HfArgumentParser`` (``--help`` lists them). ``--estimator grpo`` trains TRL's own ``GRPOTrainer`` on the gateway's
R_dense instead: the paper's GRPO baseline.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field


@dataclass
class ScriptArguments:
    model_name_or_path: str = field(metadata={"help": "the policy to train (the RFT checkpoint, paper Step 1)"})
    prompts: str = field(metadata={"help": "RL prompts JSONL (rl_prompts.jsonl from `cdra data prepare`)"})
    reward_url: str = field(
        default="http://127.0.0.1:5000/get_reward", metadata={"help": "the `cdra prm serve` gateway's /get_reward"}
    )
    input_key: str = field(default="input", metadata={"help": "prompt column: chat messages or text"})
    label_key: str = field(default="label", metadata={"help": 'column with the {"preference", "question"} label'})
    auth_token_env: str | None = field(
        default=None, metadata={"help": "environment variable with the gateway's bearer token (--auth-token-env)"}
    )
    estimator: str = field(
        default="cdpa", metadata={"help": "cdpa (CDPAGRPOTrainer) or grpo (TRL's GRPOTrainer on R_dense)"}
    )


def load_prompts(path: str, input_key: str, label_key: str):
    """The prompts as a ``datasets.Dataset`` with TRL's ``prompt`` column; a clear error for a wrong file."""
    from datasets import load_dataset

    dataset = load_dataset("json", data_files=path, split="train")
    for key, option in ((input_key, "--input_key"), (label_key, "--label_key")):
        if key not in dataset.column_names:
            raise SystemExit(
                f"{path}: no column {key!r} ({option}); columns are {dataset.column_names}. Use rl_prompts.jsonl "
                "from `cdra data prepare` or set the option."
            )
    return dataset.rename_column(input_key, "prompt") if input_key != "prompt" else dataset


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoTokenizer, HfArgumentParser
    from trl import GRPOTrainer

    from cdra_plugin.trl.reward import GatewayReward
    from cdra_plugin.trl.trainer import CDPAConfig, CDPAGRPOTrainer

    parser = HfArgumentParser((ScriptArguments, CDPAConfig))
    script, config = parser.parse_args_into_dataclasses(argv)
    if script.estimator not in ("cdpa", "grpo"):
        parser.error(f"--estimator must be cdpa or grpo, got {script.estimator!r}")
    dataset = load_prompts(script.prompts, script.input_key, script.label_key)
    tokenizer = AutoTokenizer.from_pretrained(script.model_name_or_path)
    reward = GatewayReward(
        script.reward_url, tokenizer, label_key=script.label_key, auth_token_env=script.auth_token_env
    )
    trainer_cls = CDPAGRPOTrainer if script.estimator == "cdpa" else GRPOTrainer
    trainer = trainer_cls(
        script.model_name_or_path, reward_funcs=[reward], args=config, train_dataset=dataset,
        processing_class=tokenizer,
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    trainer.save_model(config.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
