"""The options of an LLM endpoint, declared and checked in one place: base URLs, API key, sampling, scheduling.

``LLMClient`` (``cdra_plugin.llm.client``) checks its keywords here (``check``), whoever builds it: a command,
the Python API (``connect``), a benchmark; a command checks them first, to name a bad one as its user typed it.
``cdra prm serve|score`` (the PRM), ``cdra eval generate`` (the model under evaluation), ``cdra eval judge`` (the
judge) and ``cdra build`` (generator and evaluator) each keep the option names their users know; an ``Endpoint``
says what they are, and the types, defaults, help texts and rules of the client options (``OPTIONS``) are written
here once:

    PRM = Endpoint("--backend", "--model", "the PRM", names={"max_tokens": "--max-critique-tokens"})
    JUDGE = Endpoint("--judge", "--judge-model", "the judge")
    GENERATOR = Endpoint("--generator", "--generator-model", "the generator", own=("api_key", "temperature"))

    PRM.add_endpoint(group)                                     # --backend URL[,URL...] --model NAME (required)
    PRM.add_options(group, ("api_key", "timeout"), timeout=45.0)  # a command's own defaults where they differ
    client = connect_endpoint(PRM, args, metrics=metrics)       # (llm.client) OptionError naming the option as typed

An ``own`` option is spelt after the endpoint's URL option (``--generator-temperature``), for a command with two
endpoints; the others keep their plain name (``--timeout``) and are shared by the command's endpoints. The API key
comes from the environment variable that ``--api-key-env`` names and never appears in an error. Nothing here imports
the client's HTTP stack, so ``--help`` stays instant.

The same check for a shell script (a recipe), one ``KEY:NAME=VALUE`` per value (``urls`` for base URLs; ``api_key``
takes the name of an environment variable, empty for none); silent with status 0 when all are fine, else one line
naming NAME and status 2:

    python -m cdra_plugin.llm.options "urls:GENERATOR_URL=$GENERATOR_URL" "concurrency:GENERATOR_CONCURRENCY=64"
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

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
    "retry_temperature": Option("retry-temperature", float, 0.7, "sampling temperature of a retry after an unusable "
                                "answer when the temperature is 0 (a greedy model would repeat it)", "T", "> 0"),
    "breaker_failures": Option("breaker-failures", int, 3, "consecutive failures of a base URL (no connection, 5xx, "
                               "a broken answer) that take it out of rotation; a 401/403/404, or a timeout while it "
                               "answered nothing and other URLs did (it hangs), takes it out at once", "N", ">= 1"),
    "breaker_cooldown": Option("breaker-cooldown", float, 5.0, "seconds until a base URL out of rotation is tried "
                               "again with one call (back in rotation when it answers)", "S", "> 0"),
}
# fmt: on


class OptionError(ValueError):
    """A bad value of the ``LLMClient`` keyword ``key`` (or ``urls``); the message names it as ``option``."""

    def __init__(self, key: str, problem: str, option: str | None = None):
        self.key, self.problem = key, problem
        self.option = option or ("--backend" if key == "urls" else f"--{OPTIONS[key].flag}")
        super().__init__(self.option + problem)

    def named(self, option: str) -> OptionError:
        """The same error, naming the value as ``option`` (the spelling the user typed)."""
        return OptionError(self.key, self.problem, option)


def check(values: Mapping[str, object]) -> None:
    """Raise ``OptionError`` for the first of ``values`` (``LLMClient`` keywords) that breaks its option's rule."""
    for key, value in values.items():
        spec = OPTIONS[key]
        if spec.choices is not None and value not in spec.choices:
            raise OptionError(key, f" must be one of {', '.join(spec.choices)}, got {value!r}")
        if spec.rule is not None and not RULES[spec.rule](value):
            raise OptionError(key, f" must be {spec.rule}, got {value}")


def parse_base_urls(urls: str | Sequence[str], option: str = "--backend") -> list[str]:
    """Base URL(s) (comma-separated, or a list), each normalised (``normalize_base_url``); at least one."""
    urls = [u.strip() for u in urls.split(",")] if isinstance(urls, str) else list(urls)
    urls = [u for u in urls if u]
    if not urls:
        raise OptionError("urls", ": at least one base URL is needed", option)
    return [normalize_base_url(url, option) for url in urls]


def normalize_base_url(url: str, option: str = "--backend") -> str:
    """``http://host:8000`` -> ``http://host:8000/v1``; rejects what is not an http(s) URL, naming ``option``.

    A query string is refused: the endpoint's path (``/chat/completions``) is appended to the base URL, so it would
    land inside the query. So is user info: the client authenticates with a bearer key, and HTTP clients refuse to
    send both. The message shows the URL without user info and query (they may hold keys).
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise OptionError("urls", f" {url!r}: expected an http(s) base URL such as http://127.0.0.1:8000/v1", option)
    shown = repr(public_url(url.strip()))
    if parts.query:
        raise OptionError("urls", f" {shown}: a base URL takes no query string (the client appends "
                          "/chat/completions or /completions to its path)", option)  # fmt: skip
    if parts.username is not None or parts.password is not None:
        raise OptionError("urls", f" {shown}: a base URL takes no user:password@; the key is sent as a bearer "
                          "token from the environment variable the api-key-env option names", option)  # fmt: skip
    path = parts.path.rstrip("/") or "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def public_url(url: str) -> str:
    """The URL without user info or query, safe to log and to use as a metrics label."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host  # an IPv6 address keeps its brackets
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def api_key_from_env(var: str | None, option: str = "--api-key-env") -> str | None:
    """The secret in environment variable ``var`` (None when no variable is named); never echoed in errors."""
    if var is None:
        return None
    value = os.environ.get(var)
    if not value:
        raise OptionError("api_key", f" {var}: the environment variable {var} is not set or empty", option)
    return value


@dataclass(frozen=True)
class Endpoint:
    """The options of one endpoint of a command: its URL and model options, and how it spells ``OPTIONS``."""

    urls: str  # the base URL(s) option, e.g. "--backend"
    model: str  # the model name option, e.g. "--model"
    what: str  # for the help texts, e.g. "the judge"
    own: tuple[str, ...] = ()  # OPTIONS keys spelt "<urls>-<flag>" (e.g. --generator-temperature)
    names: Mapping[str, str] = field(default_factory=dict)  # other spellings: {"max_tokens": "--max-critique-tokens"}

    def option(self, key: str) -> str:
        """The command-line spelling of the ``LLMClient`` keyword ``key`` (or ``urls``) for this endpoint."""
        if key == "urls":
            return self.urls
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
        """``LLMClient`` keywords from the options the command declared, then ``overrides``, checked (``check``; an
        ``OptionError`` names the option as this command spells it).

        A value of ``None`` (an option not given and without a default) is left to ``LLMClient``'s default. The
        ``api_key`` option names an environment variable: the key is read from it.
        """
        kwargs = {key: getattr(args, _dest(self.option(key)), None) for key in OPTIONS}
        kwargs["api_key"] = api_key_from_env(kwargs["api_key"], self.option("api_key"))
        kwargs = {key: value for key, value in {**kwargs, **overrides}.items() if value is not None}
        try:
            check({key: value for key, value in kwargs.items() if key in OPTIONS})
        except OptionError as exc:
            raise exc.named(self.option(exc.key)) from None
        return kwargs

    def target(self, args) -> tuple[str, str]:
        """The base URL(s) and the model name the parsed ``args`` give this endpoint."""
        return getattr(args, _dest(self.urls)), getattr(args, _dest(self.model))


def _dest(option: str) -> str:
    """The attribute argparse stores ``option`` under."""
    return option.lstrip("-").replace("-", "_")


def check_text(key: str, name: str, text: str) -> None:
    """``text`` (a shell variable ``name``'s value) as the value of ``key``: ``OptionError`` naming ``name``."""
    if key == "urls":
        parse_base_urls(text, name)
    elif key == "api_key":
        api_key_from_env(text or None, name)
    elif key not in OPTIONS:
        raise ValueError(f"{name}: unknown key {key!r}; expected urls or one of {', '.join(OPTIONS)}")
    else:
        spec = OPTIONS[key]
        try:
            value = spec.type(text)
        except ValueError:
            kind = {int: "a whole number", float: "a number"}.get(spec.type, "a value")
            raise OptionError(key, f"={text}: expected {kind}", name) from None
        try:
            check({key: value})
        except OptionError as exc:
            raise exc.named(name) from None


def main(argv: Sequence[str]) -> int:
    """``python -m cdra_plugin.llm.options KEY:NAME=VALUE ...`` (module docstring)."""
    for item in argv:
        spec, sep, text = item.partition("=")
        key, colon, name = spec.partition(":")
        try:
            if not (sep and colon and name):
                raise ValueError(f"{item!r}: expected KEY:NAME=VALUE, e.g. timeout:TIMEOUT=60")
            check_text(key, name, text)
        except ValueError as exc:
            print(exc)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
