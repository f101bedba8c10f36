"""``python -m cdra_plugin.trl.train``: CDPA with TRL from the command line (``recipes/train_cdpa_trl.sh`` launches it
with ``accelerate launch``). The paper's own training code is built on TRL and vLLM (its Sec. 3.1).

    accelerate launch --config_file zero3.yaml -m cdra_plugin.trl.train \\
        --model_name_or_path checkpoints/policy-rft --prompts data/deeppref/rl_prompts.jsonl \\
        --reward_url http://127.0.0.1:5000/get_reward --output_dir checkpoints/policy-cdpa-trl \\
        --num_generations 5 --temperature 1.0 --max_steps 400 --cdpa.mode token_position

Options: this script's (``ScriptArguments`` below), TRL's ``GRPOConfig`` (with ``TrainingArguments``), both parsed
by Hugging Face's ``HfArgumentParser``, and the ``--cdpa.*`` options of ``cdra_plugin.cdpa.config.CDPAConfig``, the
same as ``cdra-train``'s (one the TRL trainer does not honour, such as ``--cdpa.trace_path``, is refused); ``--help``
lists them all. ``--estimator grpo`` trains TRL's own ``GRPOTrainer`` on the gateway's reward instead (the paper's
GRPO baseline, on R_dense) and refuses ``--cdpa.*`` options.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field

from cdra_plugin import quiet_third_party

PROG = "python -m cdra_plugin.trl.train"


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


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action):  # the --cdpa.* options already name their default
        return action.help if "(default: " in (action.help or "") else super()._get_help_string(action)


def parse_args(argv: list[str] | None = None):
    """``(ScriptArguments, GRPOConfig, CDPAConfig)`` from the command line; a bad value exits with one line."""
    from transformers import HfArgumentParser
    from trl import GRPOConfig

    from cdra_plugin.cdpa.config import CDPAConfig

    parser = HfArgumentParser((ScriptArguments, GRPOConfig), prog=PROG, formatter_class=_HelpFormatter)
    CDPAConfig.add_arguments(parser, applies="--estimator cdpa")
    script, config, cdpa_options = parser.parse_args_into_dataclasses(argv)
    if script.estimator not in ("cdpa", "grpo"):
        parser.error(f"--estimator must be cdpa or grpo, got {script.estimator!r}")
    cdpa = CDPAConfig.from_namespace(cdpa_options, parser, "trl")
    if script.estimator == "grpo" and cdpa != CDPAConfig():
        parser.error("--cdpa.* options apply only with --estimator cdpa (they would change nothing here)")
    return script, config, cdpa


def check_gateway(argv: list[str]) -> None:
    """Exit with one line (status 2) when the gateway of ``--reward_url`` cannot score: read from ``argv`` before
    TRL is imported (10 s) and the model loaded, not in a traceback after them."""
    from cdra_plugin.prm.probe import GatewayUnusable, probe

    early = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    early.add_argument("--reward_url", "--reward-url", default=ScriptArguments.reward_url)
    early.add_argument("--auth_token_env", "--auth-token-env")
    given, _ = early.parse_known_args(argv)
    token = os.environ.get(given.auth_token_env) if given.auth_token_env else None
    try:
        if given.auth_token_env and not token:
            raise GatewayUnusable(f"--auth_token_env: environment variable {given.auth_token_env} is not set or empty")
        probe(given.reward_url, token)
    except GatewayUnusable as exc:
        print(f"{PROG}: error: the PRM gateway at {given.reward_url} is not usable: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    quiet_third_party()  # before transformers, TRL and DeepSpeed are imported
    if not {"-h", "--help"} & set(argv):
        check_gateway(argv)
    from transformers import AutoTokenizer
    from trl import GRPOTrainer

    from cdra_plugin.trl.reward import GatewayReward
    from cdra_plugin.trl.trainer import CDPAGRPOTrainer

    script, config, cdpa = parse_args(argv)
    dataset = load_prompts(script.prompts, script.input_key, script.label_key)
    tokenizer = AutoTokenizer.from_pretrained(script.model_name_or_path)
    reward = GatewayReward(
        script.reward_url, tokenizer, label_key=script.label_key, auth_token_env=script.auth_token_env
    )
    common = {"reward_funcs": [reward], "args": config, "train_dataset": dataset, "processing_class": tokenizer}
    if script.estimator == "cdpa":
        trainer = CDPAGRPOTrainer(script.model_name_or_path, cdpa=cdpa, **common)
    else:
        trainer = GRPOTrainer(script.model_name_or_path, **common)
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    trainer.save_model(config.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
