"""OpenRLHF's remote reward-model protocol, as the gateway reads and writes it (checked against openrlhf 0.11.2):
JSON in, JSON out, nothing about what the values mean (that is ``cdra_plugin.prm.reward``).

Request (``SingleTurnAgentExecutor._fetch_rewards_via_http``, one sample per request during rollouts)::

    {"query": [prompt + response text], "prompts": [prompt text], "labels": [label]}

``query`` is the decoded prompt+response tokens, so the response is ``query[len(prompt):]`` (a query that does not
start with its prompt is rejected: OpenRLHF truncated the prompt, or the caller mixed samples up). The label is
the JSON the DeepPref adapter writes, ``{"preference": P, "question": q, ...}`` (a string, or an object).
``/score`` also takes ``{"samples": [{"preference", "question", "response"}, ...]}`` and a ``cache_only`` flag.

Response: per-sample lists, like OpenRLHF's own ``serve_rm`` (the host turns each into ``torch.tensor([value])``)::

    {"rewards": [R], "scores": [s], "extra_logs": {name: [v], ...}}

Bad input is a ``BadRequest`` naming the field (invalid labels, lone surrogates, labels nested too deep, lists of
different lengths); the gateway's size limits are ``PayloadTooLarge``. Client-chosen ids are cut in messages.

``POST /score_prefix`` (the plugin's streaming executor, ``cdra_plugin.openrlhf.stream``) takes a ``/get_reward``
body whose query holds a response still being generated, and answers, once its completed steps are scored, one
result per sample::

    {"results": [{"completed_steps": 2, "scores": [0.5, null]}]}     # null: that step failed (scored again later)
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

ID_SHOWN = 64  # characters of a client-chosen id echoed in errors and logs
MAX_LABEL_DEPTH = 16  # nesting allowed inside a label object (DeepPref labels are flat)
_SURROGATE = re.compile("[\ud800-\udfff]")


class BadRequest(ValueError):
    """Invalid input; the message names the field."""


class PayloadTooLarge(ValueError):
    """A request over one of the gateway's size limits; the message names the option that sets it."""


@dataclass(frozen=True)
class Sample:
    preference: str
    question: str
    response: str
    prompt: str
    label: Any
    name: str  # how error messages refer to it, e.g. "sample 2 (id 'p17')"


def check_text(text: str, where: str) -> str:
    """``text``, refused when it holds a lone surrogate (valid JSON, but not Unicode that can be sent on)."""
    if not text.isascii() and _SURROGATE.search(text):
        raise BadRequest(f"{where} holds a lone surrogate (an unpaired \\ud800-\\udfff escape); send valid Unicode")
    return text


def _check_object(value: Any, where: str) -> None:
    """Strings in ``value`` are valid Unicode and it nests at most ``MAX_LABEL_DEPTH`` levels (it gets hashed)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_LABEL_DEPTH:
            raise BadRequest(f"{where} nests deeper than {MAX_LABEL_DEPTH} levels")
        if isinstance(item, str):
            check_text(item, where)
        elif isinstance(item, dict):
            stack.extend((k, depth + 1) for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


def _string_list(body: dict, field: str, allow_objects: bool = False) -> list:
    if field not in body:
        raise BadRequest(f"missing field '{field}'")
    value = body[field]
    if not isinstance(value, list):
        raise BadRequest(f"field '{field}' must be a list, got {type(value).__name__}")
    for i, item in enumerate(value):
        if not (isinstance(item, str) or (allow_objects and isinstance(item, dict))):
            kind = "a string or an object" if allow_objects else "a string"
            raise BadRequest(f"{field}[{i}] must be {kind}, got {type(item).__name__}")
        _check_object(item, f"{field}[{i}]")
    return value


def parse_label(label: Any, where: str) -> dict:
    """The DeepPref label: a JSON object (or its text) with string ``preference`` and ``question``."""
    if isinstance(label, str):
        try:
            label = json.loads(label)
        except json.JSONDecodeError as exc:
            raise BadRequest(f"{where} is not valid JSON ({exc.msg} at char {exc.pos}); expected the DeepPref "
                             'label {"preference": ..., "question": ...}') from None  # fmt: skip
        except (ValueError, RecursionError):  # an integer too long to convert, or nesting too deep
            raise BadRequest(f"{where} is JSON this gateway does not read (too deep or too long a number)") from None
        _check_object(label, where)
    if not isinstance(label, dict):
        raise BadRequest(f"{where} must be a JSON object with 'preference' and 'question'")
    for key in ("preference", "question"):
        if key not in label:
            raise BadRequest(f"{where}.{key} is missing")
        if not isinstance(label[key], str):
            raise BadRequest(f"{where}.{key} must be a string, got {type(label[key]).__name__}")
    return label


def shorten(value: Any, limit: int = ID_SHOWN) -> str:
    """A client-chosen string or number for messages, cut to ``limit`` characters (other values: their type)."""
    if isinstance(value, str):
        return repr(value[:limit] + "...") if len(value) > limit else repr(value)
    if isinstance(value, int | float) or value is None:
        text = repr(value)
        return text[:limit] + "..." if len(text) > limit else text
    return f"<{type(value).__name__}>"


def _name(i: int, label: dict) -> str:
    return f"sample {i} (id {shorten(label['id'])})" if "id" in label else f"sample {i}"


def parse_reward_request(body: Any) -> list[Sample]:
    """Samples of a ``/get_reward`` body; ``BadRequest`` naming the field otherwise."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object with 'query', 'prompts' and 'labels'")
    queries = _string_list(body, "query")
    prompts = _string_list(body, "prompts")
    labels = _string_list(body, "labels", allow_objects=True)
    if not len(queries) == len(prompts) == len(labels):
        raise BadRequest(
            f"'query' ({len(queries)}), 'prompts' ({len(prompts)}) and 'labels' ({len(labels)}) must have the "
            "same length"
        )
    samples = []
    for i, (query, prompt, raw) in enumerate(zip(queries, prompts, labels, strict=True)):
        label = parse_label(raw, f"labels[{i}]")
        if not query.startswith(prompt):
            at = next(
                (j for j, (a, b) in enumerate(zip(query, prompt, strict=False)) if a != b),
                min(len(query), len(prompt)),
            )
            raise BadRequest(
                f"query[{i}] does not start with prompts[{i}] (they differ at char {at}); the response is the query "
                "minus its prompt. Was the prompt truncated (raise --data.max_len) or are the lists misaligned?"
            )
        samples.append(
            Sample(label["preference"], label["question"], query[len(prompt) :], prompt, raw, _name(i, label))
        )
    return samples


def parse_score_request(body: Any) -> list[Sample]:
    """``/score`` takes a ``/get_reward`` body or ``{"samples": [{"preference", "question", "response"}, ...]}``."""
    if not (isinstance(body, dict) and "samples" in body):
        return parse_reward_request(body)
    items = body["samples"]
    if not isinstance(items, list):
        raise BadRequest(f"field 'samples' must be a list, got {type(items).__name__}")
    samples = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise BadRequest(f"samples[{i}] must be an object with 'preference', 'question' and 'response'")
        for key in ("preference", "question", "response"):
            if not isinstance(item.get(key), str):
                raise BadRequest(f"samples[{i}].{key} is {'missing' if key not in item else 'not a string'}")
            check_text(item[key], f"samples[{i}].{key}")
        label = {"preference": item["preference"], "question": item["question"]}
        samples.append(Sample(item["preference"], item["question"], item["response"], "", label, _name(i, item)))
    return samples


def parse_cache_only(body: Any) -> bool:
    """The optional ``/score`` flag ``cache_only`` (answer from the cache, never score)."""
    value = body.get("cache_only", False) if isinstance(body, dict) else False
    if not isinstance(value, bool):
        raise BadRequest(f"field 'cache_only' must be true or false, got {shorten(value)}")
    return value


def score_request(queries: list[str], prompts: list[str], labels: list, *, cache_only: bool = False) -> dict:
    """A ``/score`` body for samples in the ``/get_reward`` form; ``cache_only`` answers from the cache alone."""
    return {"query": queries, "prompts": prompts, "labels": labels, "cache_only": cache_only}


def first_critiques(result: dict) -> list[str | None] | None:
    """The first critique of each step in one ``/score`` result; None when it holds no scored steps (not cached)."""
    steps = result.get("steps")
    if not steps:
        return None
    return [(step.get("critiques") or [None])[0] for step in steps]


def prefix_response(step_scores: list[list[float | None]]) -> dict[str, Any]:
    """The ``/score_prefix`` answer: per sample, how many completed steps were scored and their scores."""
    return {"results": [{"completed_steps": len(scores), "scores": scores} for scores in step_scores]}


def reward_response(answers: list[dict[str, Any]], log_keys: Sequence[str]) -> dict[str, Any]:
    """The /get_reward answer: per-sample lists of ``reward``, ``score`` and each extra_logs key of ``log_keys``."""
    return {
        "rewards": [a["reward"] for a in answers],
        "scores": [a["score"] for a in answers],
        "extra_logs": {k: [a["extra_logs"][k] for a in answers] for k in log_keys},
    }
