"""``cdra-train``: OpenRLHF's ``train_ppo_ray`` with the CDPA advantage estimator (paper Section 2.4).

    cdra-train --algo.advantage.estimator cdpa --cdpa.mode token_position \\
        --reward.remote_url http://127.0.0.1:5000/get_reward --rollout.n_samples_per_prompt 5 ...  # + any host option
    cdra-train --help                  # the --cdpa.* options at once, then OpenRLHF's (the host takes a while to load)
    python -m cdra_plugin.train --help

Every host option is OpenRLHF's own, parsed and validated by OpenRLHF's own code. The host builds its parser under
``if __name__ == "__main__":`` (no function to call), so this command runs that very module as ``__main__``
(``runpy``) after three steps of its own:

1. ``--cdpa.*`` options are parsed here into a ``CDPAConfig`` (``cdra_plugin.cdpa.config``) and removed from
   what the host sees; they are refused without ``--algo.advantage.estimator cdpa``, where they would do nothing;
2. ``--algo.advantage.estimator cdpa`` is shown to the host's parser as ``group_norm``, the host estimator with the
   same requirements (groups of ``n_samples_per_prompt >= 2``, no critic), so the host validates everything else;
3. for the length of the run, the trainer classes ``train()`` imports at call time are launchers of the CDPA
   variants (``cdra_plugin.openrlhf.trainer``); when ``train()`` starts the trainer they put ``cdpa`` back as the
   estimator and attach the config as ``args.cdpa``.

``--cdpa.stream_scoring`` (any estimator) scores each completed step while the policy writes the next
(``cdra_plugin.openrlhf.stream``): the host gets ``--train.agent_func_path`` set to the streaming executor, and the
launcher binds each rollout actor's executor to a gateway of ``--reward.remote_url`` before the trainer starts (and
gives the URLs back to ``args.reward.remote_url``, which the host sets to "agent" for an agent path). If the installed
host does not stream as the executor expects, ``cdra-train`` refuses to start, in one line.

The trainer attributes are restored when the run ends; importing ``cdra_plugin`` changes nothing in OpenRLHF. This
module imports OpenRLHF only inside ``run``, after printing its own help.
"""

import argparse
import contextlib
import os
import re
import runpy
import sys
from pathlib import Path

from cdra_plugin.cdpa.config import PREFIX, CDPAConfig

ESTIMATOR_OPTION = "--algo.advantage.estimator"
HOST_STAND_IN = "group_norm"
HOST_MODULE = "openrlhf.cli.train_ppo_ray"
STREAM_OPTION = PREFIX + "stream_scoring"
AGENT_OPTION = "--train.agent_func_path"
REWARD_OPTION = "--reward.remote_url"
STREAM_AGENT_FILE = str(Path(__file__).resolve().with_name("stream.py"))  # cdra_plugin.openrlhf.stream.AGENT_FILE


def build_cdpa_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdra-train",
        add_help=False,
        allow_abbrev=False,  # a prefix of a --cdpa.* option is not that option
        description="OpenRLHF train_ppo_ray plus `--algo.advantage.estimator cdpa` (CDRA). CDPA options below; "
        "all other options are OpenRLHF's (listed after them).",
    )
    CDPAConfig.add_arguments(parser)
    return parser


def split_argv(argv: list[str]) -> tuple[CDPAConfig, list[str], bool]:
    """``(CDPA config, argv for the host, whether the estimator is cdpa)``; errors name the option."""
    parser = build_cdpa_parser()
    known, host_argv = parser.parse_known_args(argv)
    unknown = [t.split("=")[0] for t in host_argv if t.startswith(PREFIX)]
    if unknown:
        parser.error(f"unknown option {unknown[0]}; the CDPA options are {', '.join(CDPAConfig.option_names())}")
    config = CDPAConfig.from_namespace(known, parser, "openrlhf")
    is_cdpa = False
    for i, token in enumerate(host_argv):
        if token == ESTIMATOR_OPTION and i + 1 < len(host_argv) and host_argv[i + 1] == "cdpa":
            host_argv[i + 1], is_cdpa = HOST_STAND_IN, True
        elif token == f"{ESTIMATOR_OPTION}=cdpa":
            host_argv[i], is_cdpa = f"{ESTIMATOR_OPTION}={HOST_STAND_IN}", True
    given = [t.split("=")[0] for t in argv if t.startswith(PREFIX) and t.split("=")[0] != STREAM_OPTION]
    if given and not is_cdpa:
        parser.error(f"{given[0]} applies only with {ESTIMATOR_OPTION} cdpa (it would change nothing here)")
    if is_cdpa and _option_value(host_argv, "--rollout.n_samples_per_prompt", "1") in ("0", "1"):
        parser.error(f"{ESTIMATOR_OPTION} cdpa normalises within groups: set --rollout.n_samples_per_prompt >= 2")
    if is_cdpa and not any(t.split("=")[0] in ("--reward.remote_url", "--train.agent_func_path") for t in host_argv):
        parser.error(
            f"{ESTIMATOR_OPTION} cdpa needs per-step PRM scores: set --reward.remote_url to the "
            "`cdra prm serve` gateway (http://HOST:PORT/get_reward)"
        )
    if config.stream_scoring:
        host_argv = _streaming(parser, host_argv)
    return config, host_argv, is_cdpa


def gateway_urls(host_argv: list[str]) -> list[str]:
    """The gateways of ``--reward.remote_url`` (comma-separated, as the host splits them)."""
    return [url for url in _option_value(host_argv, REWARD_OPTION, "").split(",") if url]


def _streaming(parser: argparse.ArgumentParser, host_argv: list[str]) -> list[str]:
    """``host_argv`` with the streaming executor as the host's agent path; the gateway URLs it needs checked."""
    if any(t.split("=")[0] == AGENT_OPTION for t in host_argv):
        parser.error(
            f"{STREAM_OPTION} sets {AGENT_OPTION} itself (the plugin's streaming executor): drop {AGENT_OPTION}"
        )
    urls = gateway_urls(host_argv)
    if not urls or not all(re.fullmatch(r"https?://[^/]+/get_reward", url) for url in urls):
        parser.error(
            f"{STREAM_OPTION} sends completed steps to the gateways of {REWARD_OPTION}: set it to "
            "http://HOST:PORT/get_reward of `cdra prm serve` (comma-separated for several)"
        )
    return [*host_argv, AGENT_OPTION, STREAM_AGENT_FILE]


def _option_value(argv: list[str], option: str, default: str) -> str:
    value = default
    for i, token in enumerate(argv):
        if token == option and i + 1 < len(argv):
            value = argv[i + 1]
        elif token.startswith(option + "="):
            value = token.split("=", 1)[1]
    return value


class CDPATrainerLauncher:
    """Stands where ``train()`` looks up its trainer class: sets ``args.cdpa`` and the estimator, binds the streaming
    executors to their gateways (``--cdpa.stream_scoring``), then starts it."""

    def __init__(self, actor_class, config: CDPAConfig, is_cdpa: bool, gateway_urls: list[str] = ()):
        self.actor_class = actor_class
        self.config = config
        self.is_cdpa = is_cdpa
        self.gateway_urls = list(gateway_urls)

    def remote(self, pretrain, strategy, *args, **kwargs):
        strategy.args.cdpa = self.config
        if self.is_cdpa:
            strategy.args.algo.advantage.estimator = "cdpa"
        if self.config.stream_scoring:
            from cdra_plugin.openrlhf.stream import bind_rollout_actors

            strategy.args.reward.remote_url = self.gateway_urls  # the host set "agent" there; the tracer reads them
            bind_rollout_actors(_vllm_engines(*args, **kwargs), self.gateway_urls)
        return self.actor_class.remote(pretrain, strategy, *args, **kwargs)


def _vllm_engines(actor_model_group, critic_model_group, reward_model_group, reference_model_group, vllm_engines, **_):
    """The ``vllm_engines`` argument of the host trainers' constructors (after ``pretrain, strategy``)."""
    return vllm_engines


@contextlib.contextmanager
def _handed_to_host(module, name: str, value):
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


def _run_host(argv: list[str]) -> None:
    saved_argv = sys.argv
    sys.argv = ["cdra-train", *argv]
    try:
        runpy.run_module(HOST_MODULE, run_name="__main__", alter_sys=True)
    finally:
        sys.argv = saved_argv


def run(argv: list[str]) -> None:
    if "-h" in argv or "--help" in argv:
        _print_help()
        return
    config, host_argv, is_cdpa = split_argv(argv)

    from cdra_plugin.openrlhf import require_host_version

    require_host_version()
    if config.stream_scoring:
        _require_streaming_host()
    import openrlhf.trainer.ppo_trainer as sync_module
    import openrlhf.trainer.ppo_trainer_async as async_module

    from cdra_plugin.openrlhf.trainer import CDPAPPOTrainer, CDPAPPOTrainerAsync

    urls = gateway_urls(host_argv)
    with (
        _handed_to_host(sync_module, "PPOTrainer", CDPATrainerLauncher(CDPAPPOTrainer, config, is_cdpa, urls)),
        _handed_to_host(
            async_module, "PPOTrainerAsync", CDPATrainerLauncher(CDPAPPOTrainerAsync, config, is_cdpa, urls)
        ),
    ):
        _run_host(host_argv)


def _print_help() -> None:
    """The CDPA options at once, then the host's (loading it takes seconds). A reader that stops early (``| head``)
    ends the listing quietly: the rest goes to /dev/null, so neither Python's exit flush nor the host complains."""
    try:
        build_cdpa_parser().print_help()
        print(f"\nOpenRLHF train_ppo_ray options ({ESTIMATOR_OPTION}: the host's choices, plus cdpa):\n", flush=True)
        _run_host(["--help"])  # the host's parser prints its options and exits
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _require_streaming_host() -> None:
    """One line and exit status 2 when the installed host does not stream as the streaming executor expects."""
    from cdra_plugin.openrlhf.stream import BUILT_FOR, host_mismatches

    missing = host_mismatches()
    if missing:
        print(f"cdra-train: error: {STREAM_OPTION} was built for {BUILT_FOR}, and the installed host does not "
              f"stream as it expects: {'; '.join(missing)}. Install that version, or train without {STREAM_OPTION} "
              "(the recipes: STREAM_SCORING=0)", file=sys.stderr, flush=True)  # fmt: skip
        raise SystemExit(2)


def main() -> None:
    run(sys.argv[1:])
