"""``cdra eval judge``: the paper's LLM-as-a-judge protocol (Section 3.1, Appendix B) over a file of responses.

For each response every selected check (``cdra_plugin.eval.prompts``) is asked concurrently; ``hallucination``
follows PrefEval: it is asked only when ``acknowledge`` is Yes, with the sentence the acknowledgement quoted
(``<preference>``) as ``{assistant_restatement}``. ``{end_generation}`` is the whole response, or its last step with
``judge_input="final"`` (steps as ``cdra_plugin.cdpa.steps`` segments them).

Answers must be ``<answer>Yes|No</answer>`` (``cdra_plugin.eval.answers``). Anything else is retried by the shared
client (at its retry temperature when the judge runs at 0, so a deterministic judge is not asked the same question
twice); a check still without a verdict, or whose call failed, is recorded as ``null`` with its failure kind in
``failures`` and counted; it is never guessed. ``hallucination`` is ``null`` without a failure where it was not
asked (``acknowledge`` No or ``null``); the report needs it only where ``acknowledge`` is Yes.

Output, one row per response: ``id``, ``topic``, ``mode``, ``model``, ``sample`` of the response, ``judge``,
``verdicts`` {check: true | false | null}, ``explanations`` {check: text}, ``restatement`` (the quote, or null),
``failures`` {check: kind}. Resumable like ``generate``. Judge answers are cached by (prompt text, judge model) in a
JSONL file beside the output (appended and fsync'ed per answer), so an interrupted or repeated run, or a response that
occurs twice, never pays for the same question again; failed calls are not cached.

    judge("out/eval/policy.jsonl", "out/eval/policy.judged.jsonl", backend="http://127.0.0.1:8001/v1", model="judge")
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path

from tqdm import tqdm

from cdra_plugin.cdpa.prompts import fill
from cdra_plugin.cdpa.steps import segment_steps
from cdra_plugin.eval.answers import Answer, answer_problem, parse_answer
from cdra_plugin.eval.prompts import CHECKS, load_prompts
from cdra_plugin.io.jsonl import Appender, read_rows, resume_rows
from cdra_plugin.io.pool import for_each
from cdra_plugin.llm.client import LLMCallError, LLMClient
from cdra_plugin.llm.options import connect

JUDGE_INPUTS = ("full", "final")
_RESPONSE_FIELDS = ("id", "topic", "preference", "question", "response", "mode", "model", "sample")


def response_key(row: dict) -> tuple:
    """What identifies a response across generate, judge and report: (id, mode, model, sample)."""
    return str(row["id"]), row["mode"], row["model"], int(row["sample"])


def read_responses(path: Path) -> list[dict]:
    """The rows of a ``cdra eval generate`` output, validated; ``ValueError`` naming file:line:field."""
    rows, seen = [], {}
    for n, row in read_rows(path, "--responses"):
        for field in _RESPONSE_FIELDS:
            if field not in row:
                raise ValueError(
                    f"{path}:{n}: field '{field}' is missing; --responses takes `cdra eval generate` output"
                )
        for field in ("preference", "question", "response"):
            if not isinstance(row[field], str):
                raise ValueError(f"{path}:{n}: field '{field}' must be a string")
        key = response_key(row)
        if key in seen:
            raise ValueError(f"{path}:{n}: the same response as line {seen[key]} (id, mode, model, sample {key})")
        seen[key] = n
        rows.append(row)
    return rows


class AnswerCache:
    """Judge answers by (prompt text, judge model), kept in a JSONL file; one call per key even when concurrent."""

    def __init__(self, path: Path):
        self.path = path
        rows = resume_rows(path, required=("key", "answer"), what="a cached answer", hint="is --cache the right file?")
        self.answers = {row["key"]: row["answer"] for row in rows}
        self._pending: dict[str, asyncio.Future] = {}
        self.hits = 0

    @staticmethod
    def key(model: str, prompt: str) -> str:
        return hashlib.sha256(json.dumps([model, prompt], ensure_ascii=False).encode()).hexdigest()

    async def get(self, key: str, call: Callable[[], Awaitable[str]], out: Appender) -> str:
        if key in self.answers:
            self.hits += 1
            return self.answers[key]
        if key in self._pending:  # the same question in flight for another response: share its answer
            self.hits += 1
            return await asyncio.shield(self._pending[key])
        future = self._pending[key] = asyncio.get_running_loop().create_future()
        try:
            answer = await call()
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # mark it retrieved: the waiters re-raise it, nobody else has to
            raise
        finally:
            del self._pending[key]
        self.answers[key] = answer
        out.write({"key": key, "answer": answer})
        future.set_result(answer)
        return answer


def judged_text(response: str, judge_input: str) -> str:
    """``{end_generation}``: the response, or the body of its last step."""
    if judge_input == "full":
        return response
    return segment_steps(response)[-1].body(response)


class _Judge:
    def __init__(self, client: LLMClient, prompts: dict[str, str], cache: AnswerCache, cache_out: Appender):
        self.client, self.prompts, self.cache, self.cache_out = client, prompts, cache, cache_out
        self.calls = 0
        self.tokens = Counter()
        self.failures: dict[str, Counter] = defaultdict(Counter)

    async def ask(self, check: str, fields: dict[str, str]) -> Answer | str:
        """The parsed answer, or the failure kind."""
        prompt = fill(self.prompts[check], **fields)

        async def call() -> str:
            self.calls += 1
            done = await self.client.sample(prompt, check=lambda texts: answer_problem(check, texts[0]))
            self.tokens["prompt"] += done.usage.prompt_tokens
            self.tokens["completion"] += done.usage.completion_tokens
            return done.texts[0]

        try:
            return parse_answer(await self.cache.get(AnswerCache.key(self.client.model, prompt), call, self.cache_out))
        except LLMCallError as exc:
            self.failures[check][exc.kind] += 1
            return exc.kind

    async def row(self, response: dict, checks: tuple[str, ...], judge_input: str) -> dict:
        fields = {
            "preference": response["preference"],
            "question": response["question"],
            "end_generation": judged_text(response["response"], judge_input),
            "assistant_restatement": "",
        }
        first = [c for c in checks if c != "hallucination"]
        results = dict(zip(first, await asyncio.gather(*(self.ask(c, fields) for c in first)), strict=True))
        restatement = None
        if "hallucination" in checks:
            acknowledged = results["acknowledge"]
            if isinstance(acknowledged, Answer) and acknowledged.verdict:
                restatement = acknowledged.restatement
                results["hallucination"] = await self.ask(
                    "hallucination", {**fields, "assistant_restatement": restatement}
                )
        row = {key: response[key] for key in ("id", "topic", "mode", "model", "sample")}
        row["judge"] = self.client.model
        row["verdicts"] = {c: results[c].verdict if isinstance(results.get(c), Answer) else None for c in checks}
        row["explanations"] = {c: r.explanation for c, r in results.items() if isinstance(r, Answer)}
        row["restatement"] = restatement
        row["failures"] = {c: r for c, r in results.items() if isinstance(r, str)}
        return row


def _done(output: Path, judge_model: str) -> set[tuple]:
    done = set()
    for row in resume_rows(output):
        if row.get("judge") != judge_model:
            raise ValueError(
                f"--output {output} holds judgments by {row.get('judge')!r}, not {judge_model!r}: "
                "write this run to another file"
            )
        done.add(response_key(row))
    return done


async def judge_rows(
    client: LLMClient,
    responses: list[dict],
    output: Path,
    prompts: dict[str, str],
    *,
    judge_input: str = "full",
    cache_path: Path | None = None,
) -> dict:
    """Judge every response not yet in ``output`` with the checks in ``prompts``; returns the run's counts."""
    checks = tuple(c for c in CHECKS if c in prompts)
    done = _done(output, client.model)
    todo = [r for r in responses if response_key(r) not in done]
    cache_path = cache_path or output.with_name(output.name.removesuffix(".jsonl") + ".cache.jsonl")
    cache = AnswerCache(cache_path)
    bar = tqdm(total=len(todo), desc="judge", unit="resp", disable=None)
    with Appender(output) as out, Appender(cache_path) as cache_out:
        judge = _Judge(client, prompts, cache, cache_out)

        async def one(response: dict) -> None:
            out.write(await judge.row(response, checks, judge_input))
            bar.update()

        try:
            await for_each(todo, one, client.concurrency * len(client.backends))
        finally:
            bar.close()
    return {
        "judged": len(todo),
        "skipped": len(responses) - len(todo),
        "calls": judge.calls,
        "cached": cache.hits,
        "prompt_tokens": judge.tokens["prompt"],
        "completion_tokens": judge.tokens["completion"],
        "failures": {c: dict(k) for c, k in judge.failures.items()},
    }


def judge(
    responses: str | Path,
    output: str | Path,
    *,
    backend,
    model: str,
    checks: tuple[str, ...] | list[str] = CHECKS,
    prompt_dir: str | Path | None = None,
    judge_input: str = "full",
    cache: str | Path | None = None,
    **client_options,
) -> dict:
    """Judge the responses file into ``output`` (resumable); returns the run's counts (failures by check and kind).

    ``backend``: the judge's base URL(s); ``client_options``: ``LLMClient`` keywords (``temperature`` 0 by default,
    ``max_tokens``, ``concurrency``, ``api_key``, ...). ``cache``: the answer cache (default: beside ``output``).
    """
    unknown = [c for c in checks if c not in CHECKS]
    if unknown or not checks:
        raise ValueError(f"--checks: unknown {unknown}; choose among {', '.join(CHECKS)}")
    if "hallucination" in checks and "acknowledge" not in checks:
        raise ValueError("--checks: hallucination needs acknowledge (it judges the preference acknowledge quotes)")
    if judge_input not in JUDGE_INPUTS:
        raise ValueError(f"--judge-input must be full or final, got {judge_input!r}")
    prompts = load_prompts(tuple(checks), prompt_dir)  # bad prompts stop here, before any call
    rows = read_responses(Path(responses))
    client = connect(backend, model, "--judge", **client_options)

    async def run() -> dict:
        try:
            cache_path = Path(cache) if cache is not None else None
            return await judge_rows(
                client, rows, Path(output), prompts, judge_input=judge_input, cache_path=cache_path
            )
        finally:
            await client.aclose()

    return asyncio.run(run())
