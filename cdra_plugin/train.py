"""``cdra-train``: OpenRLHF's ``train_ppo_ray`` with the CDPA advantage estimator (paper Section 2.4).

    cdra-train --algo.advantage.estimator cdpa --cdpa.mode token_position \\
        --reward.remote_url http://127.0.0.1:5000/get_reward --rollout.n_samples_per_prompt 5 ...  # + any host option
    python -m cdra_plugin.train --help

Every host option is OpenRLHF's own, parsed and validated by OpenRLHF's own code. The host builds its parser under
``if __name__ == "__main__":`` (no function to call), so this command runs that very module as ``__main__``
(``runpy``) after three steps of its own:

1. ``--cdpa.*`` options are parsed here (and removed from what the host sees);
2. ``--algo.advantage.estimator cdpa`` is shown to the host's parser as ``group_norm``, the host estimator with the
   same requirements (groups of ``n_samples_per_prompt >= 2``, no critic), so the host validates everything else;
3. for the length of the run, the trainer classes ``train()`` imports at call time are launchers of the CDPA
   variants (``cdra_plugin.openrlhf.trainer``); when ``train()`` starts the trainer they put ``cdpa`` back as the
   estimator and attach ``args.cdpa`` (same namespace style as the host's ``hierarchize``).

The trainer attributes are restored when the run ends; importing ``cdra_plugin`` changes nothing in OpenRLHF.
"""

import argparse
import contextlib
import runpy
import sys
from types import SimpleNamespace

ESTIMATOR_OPTION = "--algo.advantage.estimator"
HOST_STAND_IN = "group_norm"
MODES = ("token_position", "group_steps", "process", "outcome")


def build_cdpa_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdra-train",
        add_help=False,
        description="OpenRLHF train_ppo_ray plus `--algo.advantage.estimator cdpa` (CDRA). CDPA options below; "
        "all other options are OpenRLHF's (listed after them).",
    )
    group = parser.add_argument_group("CDPA options (cdra-plugin; used with --algo.advantage.estimator cdpa)")
    group.add_argument(
        "--cdpa.mode",
        choices=MODES,
        default="token_position",
        help="token_position: Eq. 3, step scores normalised per token position over the group (paper); "
        "group_steps: normalise all step scores of the group; process: Appendix D process supervision (sum of the "
        "normalised scores of this and later steps); outcome: GRPO on the summed step scores (for comparison)",
    )
    group.add_argument("--cdpa.eps", type=float, default=1e-6, help="epsilon of Eq. 3: (r - mu) / (sigma + eps)")
    group.add_argument(
        "--cdpa.reward_aggregation",
        choices=("sum", "mean"),
        default="sum",
        help="a response's outcome reward from its step scores, for outcome mode and the zero-advantage "
        "diagnostic (the paper's R_dense is the sum)",
    )
    group.add_argument(
        "--cdpa.failure_policy",
        choices=("drop", "fail"),
        default="drop",
        help="samples whose PRM scoring failed: drop = zero advantage, left out of the group statistics and "
        "counted (cdpa_failed); fail = stop with an error",
    )
    group.add_argument("--cdpa.trace_path", default=None, help="JSONL file for critique traces (off when unset)")
    group.add_argument(
        "--cdpa.trace_sample_rate", type=float, default=0.01, help="fraction of responses traced (default 0.01)"
    )
    group.add_argument(
        "--cdpa.trace_max_mb", type=float, default=100.0, help="rotate the trace file to <path>.1 past this size"
    )
    return parser


def split_argv(argv: list[str]) -> tuple[SimpleNamespace, list[str], bool]:
    """``(cdpa options, argv for the host, whether the estimator is cdpa)``; errors name the option."""
    parser = build_cdpa_parser()
    known, host_argv = parser.parse_known_args(argv)
    cdpa = SimpleNamespace(**{k.split(".", 1)[1]: v for k, v in vars(known).items()})
    if cdpa.eps <= 0:
        parser.error(f"--cdpa.eps must be > 0, got {cdpa.eps}")
    if not 0.0 <= cdpa.trace_sample_rate <= 1.0:
        parser.error(f"--cdpa.trace_sample_rate must be within [0, 1], got {cdpa.trace_sample_rate}")
    is_cdpa = False
    for i, token in enumerate(host_argv):
        if token == ESTIMATOR_OPTION and i + 1 < len(host_argv) and host_argv[i + 1] == "cdpa":
            host_argv[i + 1], is_cdpa = HOST_STAND_IN, True
        elif token == f"{ESTIMATOR_OPTION}=cdpa":
            host_argv[i], is_cdpa = f"{ESTIMATOR_OPTION}={HOST_STAND_IN}", True
    if is_cdpa and _option_value(host_argv, "--rollout.n_samples_per_prompt", "1") in ("0", "1"):
        parser.error(
            "--algo.advantage.estimator cdpa normalises within groups: set --rollout.n_samples_per_prompt >= 2"
        )
    if is_cdpa and not any(t.split("=")[0] in ("--reward.remote_url", "--train.agent_func_path") for t in host_argv):
        parser.error(
            "--algo.advantage.estimator cdpa needs per-step PRM scores: set --reward.remote_url to the "
            "`cdra prm serve` gateway (http://HOST:PORT/get_reward)"
        )
    return cdpa, host_argv, is_cdpa


def _option_value(argv: list[str], option: str, default: str) -> str:
    value = default
    for i, token in enumerate(argv):
        if token == option and i + 1 < len(argv):
            value = argv[i + 1]
        elif token.startswith(option + "="):
            value = token.split("=", 1)[1]
    return value


class CDPATrainerLauncher:
    """Stands where ``train()`` looks up its trainer class: sets ``args.cdpa`` (and the estimator), then starts it."""

    def __init__(self, actor_class, cdpa: SimpleNamespace, is_cdpa: bool):
        self.actor_class = actor_class
        self.cdpa = cdpa
        self.is_cdpa = is_cdpa

    def remote(self, pretrain, strategy, *args, **kwargs):
        strategy.args.cdpa = self.cdpa
        if self.is_cdpa:
            strategy.args.algo.advantage.estimator = "cdpa"
        return self.actor_class.remote(pretrain, strategy, *args, **kwargs)


@contextlib.contextmanager
def _handed_to_host(module, name: str, value):
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


def run(argv: list[str]) -> None:
    cdpa, host_argv, is_cdpa = split_argv(argv)
    if "-h" in argv or "--help" in argv:
        build_cdpa_parser().print_help()
        print("\nOpenRLHF train_ppo_ray options (estimator choices: the host's, plus cdpa):\n")

    from cdra_plugin.openrlhf import require_host_version

    require_host_version()
    import openrlhf.trainer.ppo_trainer as sync_module
    import openrlhf.trainer.ppo_trainer_async as async_module

    from cdra_plugin.openrlhf.trainer import CDPAPPOTrainer, CDPAPPOTrainerAsync

    saved_argv = sys.argv
    sys.argv = ["cdra-train", *host_argv]
    try:
        with (
            _handed_to_host(sync_module, "PPOTrainer", CDPATrainerLauncher(CDPAPPOTrainer, cdpa, is_cdpa)),
            _handed_to_host(async_module, "PPOTrainerAsync", CDPATrainerLauncher(CDPAPPOTrainerAsync, cdpa, is_cdpa)),
        ):
            runpy.run_module("openrlhf.cli.train_ppo_ray", run_name="__main__", alter_sys=True)
    finally:
        sys.argv = saved_argv


def main() -> None:
    run(sys.argv[1:])


if __name__ == "__main__":
    main()
