"""The command-line options of an LLM endpoint, declared once, and the ``LLMClient`` built from them.

``cdra prm serve|score`` (the PRM), ``cdra eval generate`` (the model under evaluation), ``cdra eval judge`` (the
judge) and ``cdra build`` (generator and evaluator) each call OpenAI-compatible endpoints through
``cdra_plugin.llm.LLMClient``. Each command keeps the option names its users know; an ``Endpoint`` says what they are,
and the types, defaults, help texts and checks of the client options (``OPTIONS``) are written here once:

    PRM = Endpoint("--backend", "--model", "the PRM", names={"max_tokens": "--max-critique-tokens"})
    JUDGE = Endpoint("--judge", "--judge-model", "the judge")
    GENERATOR = Endpoint("--generator", "--generator-model", "the generator", own=("api_key", "temperature"))

    PRM.add_endpoint(group)                                     # --backend URL[,URL...] --model NAME (required)
    PRM.add_options(group, ("api_key", "timeout"), timeout=45.0)  # a command's own defaults where they differ
    client = PRM.client(args, metrics=metrics)                  # ValueError naming the option of a bad value

An ``own`` option is spelt after the endpoint's URL option (``--generator-temperature``), for a command with two
endpoints; the others keep their plain name (``--timeout``) and are shared by the command's endpoints. The API key
comes from the environment variable that ``--api-key-env`` names and never appears in an error. The client's
module (``aiohttp``) is imported only when a client is built, so ``--help`` stays instant.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cdra_plugin.llm.client import LLMClient


# What a client option's value must be, as errors say it.
RULES = {
    ">= 0": lambda value: value >= 0,
    ">= 1": lambda value: value >= 1,
    "> 0": lambda value: value > 0,
    "in (0, 1]": lambda value: 0 < value <= 1,
}


@dataclass(frozen=True)
class Option:
    """One ``LLMClient`` keyword as a command-line option: its spelling, type, default, help and rule."""

    flag: str  # without the leading "--" and without an endpoint's prefix
    type: type
    default: object
    help: str  # "(default X)" is added
    metavar: str | None = None
    rule: str | None = None  # a key of RULES
    choices: tuple[str, ...] | None = None


# LLMClient keywords, in the order --help lists them.
# fmt: off
OPTIONS = {
    "api_key": Option("api-key-env", str, None, "environment variable holding the API key (never logged); without "
                      "it the key 'EMPTY' is sent, as vLLM expects", "VAR"),
    "prompt_format": Option("prompt-format", str, "chat", "chat: the prompt as one user message (the server applies "
                            "the chat template); completion: the raw prompt", choices=("chat", "completion")),
    "temperature": Option("temperature", float, 0.0, "sampling temperature", "T", ">= 0"),
    "top_p": Option("top-p", float, 1.0, "nucleus sampling", "P", "in (0, 1]"),
    "max_tokens": Option("max-tokens", int, 1024, "length limit of one answer, in tokens", "N", ">= 1"),
    "concurrency": Option("concurrency", int, 64, "calls in flight per base URL", "N", ">= 1"),
    "timeout": Option("timeout", float, 60.0, "seconds per call", "S", "> 0"),
    "retries": Option("retries", int, 3, "retries of a failed call or an unusable answer", "N", ">= 0"),
    "backoff": Option("backoff", float, 0.5, "base of the exponential backoff, s", "S", ">= 0"),
    "backoff_max": Option("backoff-max", float, 8.0, "cap of one backoff wait, s", "S", ">= 0"),
}
# fmt: on


def connect(urls: str | Sequence[str], model: str, option: str = "--backend", **client_kwargs) -> LLMClient:
    """An ``LLMClient`` for base URL(s) ``urls`` (comma-separated, or a list); a bad URL is an error naming ``option``.

    ``client_kwargs`` are ``LLMClient``'s keywords (``temperature``, ``concurrency``, ``api_key`` (the key itself),
    ...): the Python API of ``cdra eval`` passes its callers' keywords through here.
    """
    from cdra_plugin.llm.client import LLMClient, normalize_base_url, split_urls

    urls = split_urls(urls, option) if isinstance(urls, str) else list(urls)
    if not urls:
        raise ValueError(f"{option}: at least one base URL is needed")
    return LLMClient([normalize_base_url(url, option) for url in urls], model, **client_kwargs)


@dataclass(frozen=True)
class Endpoint:
    """The options of one endpoint of a command: its URL and model options, and how it spells ``OPTIONS``."""

    urls: str  # the base URL(s) option, e.g. "--backend"
    model: str  # the model name option, e.g. "--model"
    what: str  # for the help texts, e.g. "the judge"
    own: tuple[str, ...] = ()  # OPTIONS keys spelt "<urls>-<flag>" (e.g. --generator-temperature)
    names: Mapping[str, str] = field(default_factory=dict)  # other spellings: {"max_tokens": "--max-critique-tokens"}

    def option(self, key: str) -> str:
        """The command-line spelling of the ``LLMClient`` keyword ``key`` for this endpoint."""
        if key in self.names:
            return self.names[key]
        return f"{self.urls}-{OPTIONS[key].flag}" if key in self.own else f"--{OPTIONS[key].flag}"

    def add_endpoint(self, group, note: str = "") -> None:
        """Declare the URL and model options (both required) in the argparse ``group``."""
        group.add_argument(self.urls, required=True, metavar="URL[,URL...]", help=f"OpenAI-compatible base URL(s) "
                           f"of {self.what}, comma-separated; a URL without a path gets /v1{note}")  # fmt: skip
        group.add_argument(self.model, required=True, metavar="NAME", help=f"the model name {self.what} is served "
                           "under (vllm serve --served-model-name)")  # fmt: skip

    def add_options(self, group, keys: Sequence[str] = tuple(OPTIONS), helps: Mapping[str, str] | None = None,
                    **defaults) -> None:  # fmt: skip
        """Declare the client options ``keys`` in ``group``; ``defaults`` and ``helps`` replace the shared ones."""
        helps = helps or {}
        if {*defaults, *helps} - {*keys}:
            raise TypeError(f"add_options: {sorted({*defaults, *helps} - {*keys})} are not in keys {keys}")
        for key in keys:
            spec = OPTIONS[key]
            default = defaults.get(key, spec.default)
            shown = f"{default:g}" if isinstance(default, float) else default
            text = helps.get(key, spec.help) + ("" if default is None else f" (default {shown})")
            group.add_argument(self.option(key), type=spec.type, default=default, metavar=spec.metavar,
                               choices=spec.choices, help=text)  # fmt: skip

    def client_kwargs(self, args, **overrides) -> dict:
        """``LLMClient`` keywords from the options the command declared, then ``overrides``; each value checked.

        A value of ``None`` (an option not given and without a default) is left to ``LLMClient``'s default. The
        ``api_key`` option names an environment variable: the key is read from it.
        """
        from cdra_plugin.llm.client import api_key_from_env

        kwargs = {key: getattr(args, _dest(self.option(key)), None) for key in OPTIONS}
        kwargs["api_key"] = api_key_from_env(kwargs["api_key"], self.option("api_key"))
        kwargs = {key: value for key, value in {**kwargs, **overrides}.items() if value is not None}
        for key, value in kwargs.items():
            spec = OPTIONS.get(key)
            if spec is not None and spec.rule is not None and not RULES[spec.rule](value):
                raise ValueError(f"{self.option(key)} must be {spec.rule}, got {value}")
        return kwargs

    def client(self, args, **overrides) -> LLMClient:
        """The ``LLMClient`` the parsed ``args`` describe (``overrides``: ``LLMClient`` keywords that win)."""
        urls, model = getattr(args, _dest(self.urls)), getattr(args, _dest(self.model))
        return connect(urls, model, self.urls, **self.client_kwargs(args, **overrides))


def _dest(option: str) -> str:
    """The attribute argparse stores ``option`` under."""
    return option.lstrip("-").replace("-", "_")
