"""Helpers for the OpenRLHF-side tests: host args from the host's own parser, experiences built the host's way."""

import json
from types import SimpleNamespace

import pytest


class _ParsedByHost(Exception):
    pass


def host_args(monkeypatch, argv: list[str]):
    """``cdra-train`` argv -> the args namespace the host's ``train()`` receives (stopped before anything starts)."""
    import openrlhf.utils
    import ray

    from cdra_plugin.openrlhf import train

    seen = {}

    def capture(args):
        seen["args"] = args
        raise _ParsedByHost

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(openrlhf.utils, "get_strategy", capture)
    with pytest.raises(_ParsedByHost):
        train.run(argv)
    return seen["args"]


def cdpa_args(monkeypatch, model_path, *extra: str, group_size: int = 2):
    """Host args for a CDPA run, with ``args.cdpa`` attached by the real launcher."""
    from cdra_plugin.openrlhf.train import CDPATrainerLauncher, split_argv

    argv = [
        "--actor.model_name_or_path",
        str(model_path),
        "--algo.advantage.estimator",
        "cdpa",
        "--reward.remote_url",
        "http://127.0.0.1:9/get_reward",
        "--rollout.n_samples_per_prompt",
        str(group_size),
        "--rollout.micro_batch_size",
        "8",
        *extra,
    ]
    args = host_args(monkeypatch, argv)
    config, _, is_cdpa = split_argv(argv)

    class Recorder:
        @staticmethod
        def remote(pretrain, strategy, *a, **kw):
            return strategy

    CDPATrainerLauncher(Recorder, config, is_cdpa).remote(str(model_path), SimpleNamespace(args=args))
    return args


def cdpa_maker(args, tokenizer, tracer=None):
    """The CDPA experience maker as the trainers install it: made from the host's own, built by the host."""
    from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker
    from openrlhf.trainer.ppo_utils.kl_controller import FixedKLController

    from cdra_plugin.openrlhf.experience_maker import CDPAExperienceMaker

    kl = FixedKLController(args.algo.kl.init_coef)
    host = RemoteExperienceMaker(None, None, None, None, kl, SimpleNamespace(args=args), tokenizer)
    return CDPAExperienceMaker.from_host(host, tracer=tracer)


def make_experience(tokenizer, prompt_text: str, response_text: str, reward_info: dict | None, label: dict):
    """One rollout sample as the host makes it: token ids as SingleTurnAgentExecutor stitches them, the reward
    response as its HTTP call returns it, turned into an Experience by SamplesGenerator's own method."""
    from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator

    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    action_ids = tokenizer(response_text, add_special_tokens=False)["input_ids"]
    response = {
        "prompt": prompt_text,
        "label": json.dumps(label),
        "images": None,
        "mm_train_inputs": None,
        "observation_tokens": prompt_ids + action_ids,
        "action_ranges": [(len(prompt_ids), len(prompt_ids) + len(action_ids))],
        "rollout_log_probs": None,
        "truncated": False,
        "reward": None if reward_info is None else reward_info["rewards"],
        "scores": None if reward_info is None else reward_info.get("scores"),
        "extra_logs": {} if reward_info is None else reward_info.get("extra_logs", {}),
    }
    generator = SamplesGenerator.__new__(SamplesGenerator)  # the method reads only its arguments
    return generator._process_response_into_experience(response, max_len=4096)


def query_text(tokenizer, prompt_text: str, response_text: str) -> str:
    """What SingleTurnAgentExecutor sends to the reward server as ``query``."""
    ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    ids += tokenizer(response_text, add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids, skip_special_tokens=False)
