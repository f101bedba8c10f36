"""The CDPA configuration: every ``--cdpa.*`` option of both hosts, with its default, meaning and validation.

``CDPAConfig`` is the one place these choices live, for both hosts. ``cdra-train`` (OpenRLHF) and ``python -m
cdra_plugin.trl.train`` build their ``--cdpa.*`` argparse group from the fields (``add_arguments``) and turn the parsed
values into a config (``from_namespace``); OpenRLHF's trainer gets it as ``args.cdpa``, TRL's as
``CDPAGRPOTrainer(..., cdpa=config)``. Every value is checked here, once, and errors name the option. Modes are
``cdra_plugin.cdpa.advantage.MODES``, aggregations ``cdra_plugin.cdpa.aggregation``'s (old names read with a
FutureWarning), and ``eps`` follows ``cdpa_advantages``' rule (>= 0: a set with sigma = 0 already gets A = 0, so eps =
0 cannot divide by zero). An option only one host honours says so in its help, and the other host refuses a value
other than its default (``check_host``) rather than ignore it. Options are dotted like OpenRLHF's
(``--algo.kl.init_coef``). This module imports no host, so ``--help`` prints these options at once.

    config = CDPAConfig(mode="process", eps=1e-4)     # ValueError naming --cdpa.* on a bad value
"""

import argparse
from dataclasses import dataclass, field, fields

from cdra_plugin.cdpa.advantage import MODES
from cdra_plugin.cdpa.aggregation import AGGREGATIONS, DEFAULT_AGGREGATION, check_aggregation

PREFIX = "--cdpa."
FAILURE_POLICIES = ("drop", "fail")
HOSTS = {"openrlhf": "cdra-train (OpenRLHF)", "trl": "the TRL trainer (CDPAGRPOTrainer)"}


def _option(default, help: str, choices: tuple[str, ...] | None = None, host: str | None = None):
    """A field; ``host``: the one host that honours it (None: both)."""
    return field(default=default, metadata={"help": help, "choices": choices, "host": host})


@dataclass(frozen=True)
class CDPAConfig:
    mode: str = _option(
        "token_position",
        "token_position: Eq. 3, step scores normalised per token position over the group (the paper); "
        "group_steps: all step scores of the group normalised together; process: Appendix D process supervision "
        "(sum of the normalised scores of this and later steps); min_form: PURE's min-form credit (the minimum of "
        "the normalised scores of this and later steps); outcome: GRPO on each response's aggregated step scores "
        "(--cdpa.outcome_aggregation)",
        MODES,
    )
    eps: float = _option(1e-6, "epsilon of Eq. 3, A = (r - mu) / (sigma + eps); >= 0")
    outcome_aggregation: str = _option(
        DEFAULT_AGGREGATION,
        "a response's outcome reward from its step scores: min (its worst step; splitting, padding, repeating or "
        "reordering steps cannot raise it), weighted_mean (each step weighed by its tokens; padding the best step "
        "raises it), mean (repeating the best step raises it) or sum (the paper's R_dense; more steps earn more, so "
        "the policy learns to fragment); token_mean is read as weighted_mean, for one release. Used by --cdpa.mode "
        "outcome and by the zero-advantage diagnostic cdpa_zero_adv_group_frac. Not the reward the gateway returns "
        "(`cdra prm serve --reward-aggregation`)",
        AGGREGATIONS,
    )
    failure_policy: str = _option(
        "drop",
        "samples whose PRM scoring failed (or whose steps disagree with the gateway's): drop = zero advantage, left "
        "out of the group statistics and counted; fail = stop training with an error",
        FAILURE_POLICIES,
    )
    trace_path: str | None = _option(
        None, "JSONL file for critique traces, read by `cdra traces show`", host="openrlhf"
    )
    trace_sample_rate: float = _option(0.01, "fraction of responses traced, within [0, 1]", host="openrlhf")
    trace_max_mb: float = _option(
        100.0, "rotate the trace file to <path>.1 past this size in MiB (> 0)", host="openrlhf"
    )
    stream_scoring: bool = _option(
        False,
        "score each completed step while the policy writes the next (cdra_plugin.openrlhf.stream): sets "
        "--train.agent_func_path to the plugin's streaming executor, bound to the --reward.remote_url gateways; the "
        "rewards are the same, the PRM finishes almost with the policy and needs fewer replicas. Any estimator",
        host="openrlhf",
    )

    def __post_init__(self):
        aggregation = check_aggregation(self.outcome_aggregation, PREFIX + "outcome_aggregation")
        object.__setattr__(self, "outcome_aggregation", aggregation)  # frozen: the old name becomes the new
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

    def check_host(self, host: str) -> None:
        """ValueError naming the first option set to a value ``host`` would not honour (its default is fine)."""
        for f in fields(self):
            only = f.metadata["host"]
            if only not in (None, host) and getattr(self, f.name) != f.default:
                raise ValueError(
                    f"{PREFIX}{f.name} is honoured only by {HOSTS[only]}, not by {HOSTS[host]}: leave it unset"
                )

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, applies: str = "--algo.advantage.estimator cdpa") -> None:
        """The ``--cdpa.*`` options, one group; ``applies``: the option that makes them count, for the title.

        Choices are shown, not enforced by argparse: ``from_namespace`` checks them (and reads old names)."""
        group = parser.add_argument_group(f"CDPA options (cdra-plugin; apply with {applies})")
        for f in fields(cls):
            only, choices = f.metadata["host"], f.metadata["choices"]
            shown = "off" if f.default in (None, False) else f.default
            text = f"{f.metadata['help']}{f'; {HOSTS[only]} only' if only else ''} (default: {shown})"
            if isinstance(f.default, bool):  # a switch, like the host's *_enable options
                group.add_argument(PREFIX + f.name, action="store_true", help=text)
                continue
            group.add_argument(
                PREFIX + f.name,
                type=str if f.default is None else type(f.default),
                metavar="{" + ",".join(choices) + "}" if choices else f.name.upper(),
                default=f.default,
                help=text,
            )

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace, parser: argparse.ArgumentParser, host: str) -> "CDPAConfig":
        """The config of a namespace that ``parser``, given ``add_arguments``, parsed (dests are ``cdpa.<field>``)
        for ``host``; a bad value, or one ``host`` does not honour, exits through ``parser.error`` naming it."""
        try:
            config = cls(**{f.name: getattr(namespace, f"cdpa.{f.name}") for f in fields(cls)})
            config.check_host(host)
        except ValueError as e:
            parser.error(str(e))
        return config

    @classmethod
    def option_names(cls) -> list[str]:
        return [PREFIX + f.name for f in fields(cls)]
