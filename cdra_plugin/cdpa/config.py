"""The CDPA configuration: every ``--cdpa.*`` option of ``cdra-train``, with its default, meaning and validation.

``CDPAConfig`` is the one place these choices live: ``cdra-train`` builds its ``--cdpa.*`` argparse group from the
fields (``add_arguments``), turns the parsed values into a config (``from_namespace``, errors name the option) and
hands it to the trainer as ``args.cdpa``; the experience maker and the tracer read it there. Modes and outcome
aggregations are ``cdra_plugin.cdpa.advantage``'s own tuples, and ``eps`` follows its rule (>= 0: a set with sigma = 0
already gets A = 0, so eps = 0 cannot divide by zero). Options are dotted like the host's (``--algo.kl.init_coef``).
This module imports no OpenRLHF, so ``cdra-train --help`` prints these options at once.

    config = CDPAConfig(mode="process", eps=1e-4)     # ValueError naming --cdpa.* on a bad value
"""

import argparse
from dataclasses import dataclass, field, fields

from cdra_plugin.cdpa.advantage import MODES, OUTCOME_AGGREGATIONS

PREFIX = "--cdpa."
FAILURE_POLICIES = ("drop", "fail")


def _option(default, help: str, choices: tuple[str, ...] | None = None):
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class CDPAConfig:
    mode: str = _option(
        "token_position",
        "token_position: Eq. 3, step scores normalised per token position over the group (the paper); "
        "group_steps: all step scores of the group normalised together; process: Appendix D process supervision "
        "(sum of the normalised scores of this and later steps); outcome: GRPO on each response's aggregated step "
        "scores (--cdpa.outcome_aggregation)",
        MODES,
    )
    eps: float = _option(1e-6, "epsilon of Eq. 3, A = (r - mu) / (sigma + eps); >= 0")
    outcome_aggregation: str = _option(
        "token_mean",
        "a response's outcome reward from its step scores: token_mean (each step weighed by its tokens; splitting "
        "steps cannot raise it), mean, or sum (the paper's R_dense; more steps earn more, so the policy learns to "
        "fragment); used by --cdpa.mode outcome and by the zero-advantage diagnostic cdpa_zero_adv_group_frac. Not "
        "the reward the gateway returns (`cdra prm serve --reward-aggregation`)",
        OUTCOME_AGGREGATIONS,
    )
    failure_policy: str = _option(
        "drop",
        "samples whose PRM scoring failed (or whose steps disagree with the gateway's): drop = zero advantage, left "
        "out of the group statistics, counted in cdpa_failed; fail = stop training with an error",
        FAILURE_POLICIES,
    )
    trace_path: str | None = _option(None, "JSONL file for critique traces, read by `cdra traces show`")
    trace_sample_rate: float = _option(0.01, "fraction of responses traced, within [0, 1]")
    trace_max_mb: float = _option(100.0, "rotate the trace file to <path>.1 past this size in MiB (> 0)")
    stream_scoring: bool = _option(
        False,
        "score each completed step while the policy writes the next (cdra_plugin.openrlhf.stream): sets "
        "--train.agent_func_path to the plugin's streaming executor, bound to the --reward.remote_url gateways; the "
        "rewards are the same, the PRM finishes almost with the policy and needs fewer replicas. Any estimator",
    )

    def __post_init__(self):
        for f in fields(self):
            value, choices = getattr(self, f.name), f.metadata["choices"]
            if choices and value not in choices:
                raise ValueError(f"{PREFIX}{f.name} must be one of {', '.join(choices)}; got {value!r}")
        if not self.eps >= 0:  # the rule of cdra_plugin.cdpa.advantage.cdpa_advantages
            raise ValueError(f"{PREFIX}eps must be >= 0 (the epsilon of Eq. 3); got {self.eps}")
        if not 0.0 <= self.trace_sample_rate <= 1.0:
            raise ValueError(f"{PREFIX}trace_sample_rate must be within [0, 1]; got {self.trace_sample_rate}")
        if not self.trace_max_mb > 0:
            raise ValueError(f"{PREFIX}trace_max_mb must be > 0; got {self.trace_max_mb}")

    @property
    def trace_max_bytes(self) -> int:
        return int(self.trace_max_mb * 1024 * 1024)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("CDPA options (cdra-plugin; apply with --algo.advantage.estimator cdpa)")
        for f in fields(cls):
            shown = "off" if f.default is None else f.default
            if isinstance(f.default, bool):  # a switch, like the host's *_enable options
                group.add_argument(PREFIX + f.name, action="store_true", help=f"{f.metadata['help']} (default: off)")
                continue
            group.add_argument(
                PREFIX + f.name,
                type=str if f.default is None else type(f.default),
                choices=f.metadata["choices"],
                metavar=None if f.metadata["choices"] else f.name.upper(),
                default=f.default,
                help=f"{f.metadata['help']} (default: {shown})",
            )

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace) -> "CDPAConfig":
        """The config of a namespace parsed by a parser given ``add_arguments`` (dests are ``cdpa.<field>``)."""
        return cls(**{f.name: getattr(namespace, f"cdpa.{f.name}") for f in fields(cls)})

    @classmethod
    def option_names(cls) -> list[str]:
        return [PREFIX + f.name for f in fields(cls)]
