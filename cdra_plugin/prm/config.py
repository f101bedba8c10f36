"""The gateway's configuration: every option of ``cdra prm serve`` and ``cdra prm score``, with its default, meaning,
check, and every limit a client meets.

``GatewayConfig`` is the one place these choices live. The commands build their argparse groups from its fields
(``add_arguments``) and a config from the parsed values (``from_namespace``); the PRM's own client options
(``--backend``, ``--timeout``, ``--retries``, ...) are the LLM client's (``cdra_plugin.llm.options``, declared here as
``PRM``) and reach the config as ``client_options``. From Python, a config is built from keywords and checked once,
in ``__post_init__`` (a ``ValueError`` names the option):

    config = GatewayConfig(backend="http://127.0.0.1:8000/v1", model="pers-genprm", failure_policy="drop",
                           client_options={"timeout": 30.0, "retries": 2})  # LLMClient keywords (llm.client.connect)
    gateway = Gateway(config)                                   # cdra_plugin.prm.gateway
    app = create_app(gateway, auth_token=token)                 # cdra_plugin.prm.server

Limits. The gateway is attacked by the policy it rewards and reached by clients it does not control, so nothing a
request asks for is unbounded; a request over a limit gets a 4xx naming it, before any PRM call:

======================  =========  ==============================================================================
option                  default    bounds
======================  =========  ==============================================================================
--max-body-mb           16         bytes of one request body (413)
--max-samples           64         samples per scoring request; each costs up to --max-steps PRM calls (413)
--max-response-chars    100,000    characters per response (about 25k tokens); step j's prompt repeats steps
                                   1..j, so the text sent to the PRM grows with length x steps (413)
--cache-mb              256        memory held by cached results (LRU by estimated bytes, not entries)
--header-timeout        10 s       time to send a request's headers (the connection is closed)
--body-timeout          30 s       time to send the body once the headers arrived (408, connection closed); a
                                   body the server will not read (401, 404, GET) is refused at once
--max-connections       1,024      open connections (fewer if the file descriptor limit leaves less); over it the
                                   oldest connection not in a request (idle, or still sending headers) is closed
(fixed)                 64 KiB     size of a request's headers (431); 5 s idle keep-alive
======================  =========  ==============================================================================
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from cdra_plugin.cdpa.aggregation import AGGREGATIONS, DEFAULT_AGGREGATION, check_aggregation
from cdra_plugin.cdpa.prompts import DEFAULT_END_TOKENS, PRM_TEMPLATE, fill
from cdra_plugin.llm.options import RULES, Endpoint
from cdra_plugin.prm.reward import FailurePolicy

PRM = Endpoint("--backend", "--model", "the PRM", names={"max_tokens": "--max-critique-tokens"})
CLIENT_DEFAULTS = {"timeout": 45.0, "retries": 2}  # the gateway's, where they differ from LLMClient's: a sample must
# finish within OpenRLHF's 180 s per reward request
MAX_HEADER_BYTES = 64 << 10
KEEP_ALIVE_S = 5
DEFAULT_MAX_CONNECTIONS = 1024
TEMPLATE_FIELDS = ("preference", "question", "previous_steps", "current_step")


def _option(default, help: str, *, rule: str | None = None, serve: bool = False, **argparse_kw):
    """A field that is a command-line option (``--max-steps`` for ``max_steps``); ``serve``: of ``serve`` only."""
    return field(default=default, metadata={"help": help, "rule": rule, "serve": serve, "argparse": argparse_kw})


def _texts(value: str) -> tuple[str, ...]:
    return tuple(t for t in value.split(",") if t)


@dataclass(frozen=True)
class GatewayConfig:
    backend: str | Sequence[str]  # base URL(s) of the PRM: comma-separated, or a list (--backend)
    model: str  # the name the PRM is served under (--model)
    client_options: Mapping[str, Any] = field(default_factory=dict, repr=False)  # LLMClient keywords; may hold a key

    # step scoring (Pers-GenPRM, paper Sec. 2.3)
    template: str | None = _option(None, "PRM prompt template file overriding Fig. 15; fields {preference} "
                                   "{question} {previous_steps} {current_step}", metavar="FILE")  # fmt: skip
    max_steps: int = _option(32, "steps per response; later ones merge into the last (= the carrier width the "
                             "trainer reads)", rule=">= 1", metavar="N")  # fmt: skip
    k: int = _option(1, "critiques sampled per step (Appendix D)", rule=">= 1")
    k_aggregation: str = _option("mean", "how the k scores of a step combine", choices=("mean", "median"))
    end_tokens: tuple[str, ...] = _option(DEFAULT_END_TOKENS, "comma-separated end-of-sequence texts removed from "
                                          "the end of a response", type=_texts, metavar="TEXTS")  # fmt: skip
    failure_policy: str = _option(
        "fail", "a sample with a step unscored after retries: fail = the sample fails (serve: HTTP 502 naming it; "
        "score: the run stops); drop = mark it invalid, honoured by cdra-train only; score=X = give failed steps X",
        metavar="drop|fail|score=X",
    )  # fmt: skip
    reward_aggregation: str = _option(
        DEFAULT_AGGREGATION, "the scalar reward from the step scores (cdra_plugin.cdpa.aggregation): min = the worst "
        "step's score: splitting, padding, repeating or reordering steps cannot raise it; mean: raised by repeating "
        "a good step or by splitting good steps to dilute a bad one; weighted_mean = the mean weighted by each "
        "step's letters and digits: raised by padding a good step with words and shrinking a bad one; sum = the "
        "paper's R_dense: more steps earn more, use it only to reproduce the paper's GRPO (with PRM) row",
        metavar="{" + ",".join(AGGREGATIONS) + "}",
    )  # fmt: skip
    degenerate_guard: bool = _option(
        True, "a step that repeats an earlier step of its response (case, spacing, punctuation and format "
        "characters ignored) or is mostly not letters or digits gets the empty-step score -1 without a PRM call "
        "(counted in /metrics); --no-degenerate-guard where such steps are normal (code, maths)",
        action=argparse.BooleanOptionalAction,
    )  # fmt: skip
    max_response_chars: int = _option(100_000, "longest response scored, in characters; longer ones are refused "
                                      "(HTTP 413 / an input error)", rule=">= 1", metavar="N")  # fmt: skip
    cache_mb: float = _option(256.0, "memory for cached results, MiB (LRU; 0 = off)", rule=">= 0", metavar="MB")

    # server (serve only)
    host: str = _option("127.0.0.1", "bind address (127.0.0.1: this machine only)", serve=True)
    port: int = _option(5000, "port", serve=True)
    auth_token_env: str | None = _option(None, "require 'Authorization: Bearer <token>' with the token from this "
                                         "environment variable (basic auth with it as password is accepted too)",
                                         serve=True, metavar="VAR")  # fmt: skip
    max_body_mb: float = _option(16.0, "request size limit in MiB", rule="> 0", serve=True, metavar="MB")
    max_samples: int = _option(64, "samples per scoring request (OpenRLHF sends 1)", rule=">= 1", serve=True,
                               metavar="N")  # fmt: skip
    max_connections: int | None = _option(
        None, type=int, rule=">= 1", serve=True, metavar="N",
        help="open client connections; a new one over the cap closes the oldest connection that is not in a request "
        "(idle, or still sending its headers), so requests in progress are never cut; default: 1024, or what the "
        "file descriptor limit leaves beside the PRM connections if less",
    )  # fmt: skip
    header_timeout: float = _option(10.0, "seconds a client has to send a request's headers", rule="> 0",
                                    serve=True, metavar="S")  # fmt: skip
    body_timeout: float = _option(30.0, "seconds a client has to send a request's body once its headers arrived",
                                  rule="> 0", serve=True, metavar="S")  # fmt: skip

    # what the options above say, read once: the parsed policy and the template's text
    policy: FailurePolicy = field(init=False, repr=False, compare=False)
    prompt_template: str = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        for f in fields(self):
            if not f.init:
                continue
            value, meta = getattr(self, f.name), f.metadata
            choices = meta.get("argparse", {}).get("choices")
            if choices and value not in choices:
                raise ValueError(f"{_flag(f.name)} must be one of {', '.join(choices)}; got {value!r}")
            if meta.get("rule") and value is not None and not RULES[meta["rule"]](value):
                raise ValueError(f"{_flag(f.name)} must be {meta['rule']}, got {value}")
        tokens = self.end_tokens  # a comma-separated string, as on the command line, or a sequence of texts
        object.__setattr__(self, "end_tokens", _texts(tokens) if isinstance(tokens, str) else tuple(tokens))
        object.__setattr__(
            self, "reward_aggregation", check_aggregation(self.reward_aggregation, "--reward-aggregation")
        )
        if self.k > 1 and self.temperature == 0:
            raise ValueError("--k > 1 with --temperature 0 samples k identical critiques; set --temperature > 0")
        object.__setattr__(self, "policy", FailurePolicy.parse(self.failure_policy))
        object.__setattr__(
            self, "prompt_template", PRM_TEMPLATE if self.template is None else load_template(self.template)
        )

    @property
    def client_kwargs(self) -> dict[str, Any]:
        """The PRM client's ``LLMClient`` keywords: the gateway's defaults, ``client_options``, the temperature."""
        return {**CLIENT_DEFAULTS, **self.client_options, "temperature": self.temperature}

    @property
    def temperature(self) -> float:
        """The PRM's sampling temperature: ``client_options``' own, else greedy for one critique and 1 for k > 1."""
        given = self.client_options.get("temperature")
        return given if given is not None else (0.0 if self.k == 1 else 1.0)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * (1 << 20))

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, serve: bool) -> None:
        """The options of ``cdra prm serve`` (``serve``) or ``cdra prm score``, in argparse groups."""
        backend = parser.add_argument_group("PRM backend")
        PRM.add_endpoint(backend, "; vLLM/SGLang replicas or a hosted API")
        PRM.add_options(backend, ("api_key", "prompt_format", "concurrency", "timeout", "retries", "backoff",
                                  "backoff_max", "breaker_failures", "breaker_cooldown", "temperature", "top_p",
                                  "max_tokens", "retry_temperature"),
                        **CLIENT_DEFAULTS, temperature=None,
                        helps={"temperature": "sampling temperature (default 0 for k=1, else 1)",
                               "max_tokens": "length limit of one critique, in tokens"})  # fmt: skip
        groups = {False: parser.add_argument_group("step scoring and the reward (Pers-GenPRM, paper Sec. 2.3)")}
        if serve:
            groups[True] = parser.add_argument_group("server")
        for f in fields(cls):
            if "help" not in f.metadata or f.metadata["serve"] > serve:
                continue
            kw = dict(f.metadata["argparse"])
            if "action" not in kw:
                kw.setdefault("type", str if f.default is None else type(f.default))
            shown = _shown(f.default)
            help = f.metadata["help"] + ("" if f.default is None else f" (default {shown})")
            groups[f.metadata["serve"]].add_argument(_flag(f.name), dest=f.name, default=f.default, help=help, **kw)

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> GatewayConfig:
        """The config of options parsed by a parser given ``add_arguments`` (the LLM client options included)."""
        own = {f.name: getattr(args, f.name) for f in fields(cls) if "help" in f.metadata and hasattr(args, f.name)}
        return cls(backend=args.backend, model=args.model, client_options=PRM.client_kwargs(args), **own)


def load_template(path: str | Path) -> str:
    """A PRM prompt template from a file: ``{name}`` fields among TEMPLATE_FIELDS, ``{current_step}`` required."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--template {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        fill(text, **dict.fromkeys(TEMPLATE_FIELDS, ""))
    except KeyError as exc:
        raise ValueError(f"--template {path}: {exc.args[0]}; allowed fields: {list(TEMPLATE_FIELDS)}") from None
    if "{current_step}" not in text:
        raise ValueError(f"--template {path}: must contain {{current_step}} (the step to judge)")
    return text


def _shown(default) -> str:
    """A default as --help shows it."""
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, float):
        return f"{default:g}"
    return ",".join(default) if isinstance(default, tuple) else str(default)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")
