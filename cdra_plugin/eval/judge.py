"""``cdra eval judge``: the paper's LLM-as-a-judge protocol (Section 3.1, Appendix B) over a file of responses.

For each response every selected check (``cdra_plugin.eval.prompts``) is asked concurrently; ``hallucination``
follows PrefEval: it is asked only when ``acknowledge`` is Yes, with the sentence the acknowledgement quoted
(``<preference>``) as ``{assistant_restatement}``. ``{end_generation}`` is the whole response, or its last step with
``judge_input="final"`` (steps as ``cdra_plugin.cdpa.steps`` segments them). Every field is model output or user
data: it is inserted ``defuse``d (``cdra_plugin.eval.answers``), so neither role tokens nor an answer block inside a
response reach the judge as such.

Answers must be ``<answer>Yes|No</answer>`` (``cdra_plugin.eval.answers``). Anything else is retried by the shared
client (at its retry temperature when the judge runs at 0, so a deterministic judge is not asked the same question
twice); a check still without a verdict, or whose call failed, is recorded as ``null`` with its failure kind in
``failures`` and counted; it is never guessed. ``hallucination`` is ``null`` without a failure where it was not
asked (``acknowledge`` No or ``null``); the report needs it only where ``acknowledge`` is Yes. A failure no retry
fixes (an unknown model name, a refused key) stops the run at once (``cdra_plugin.eval.calls``), and the judge is
probed before the first call.

Output, one row per response: ``id``, ``topic``, ``mode``, ``model``, ``sample`` of the response, ``judge``,
``verdicts`` {check: true | false | null}, ``explanations`` {check: text}, ``restatement`` (the quote, or null),
``failures`` {check: kind}, ``protocol`` (``cdra_plugin.eval.protocol``: the judge's model and settings, each
check's prompt source and SHA-256, the judge input, the plugin version) and the response's ``generation`` settings.
Resumable (``cdra_plugin.io.resumable``): responses already judged are skipped, and an output judged by another
model or with other prompts is refused; ``retry_failed`` removes the rows with a null verdict that was asked for
and asks only those checks again (the verdicts they had are kept). Judge answers are cached by (prompt text, judge
model) in a JSONL file beside the output (appended and fsync'ed per answer, shared by concurrent identical
questions: ``cdra_plugin.io.singleflight``), so an interrupted or repeated run, or a response that occurs twice,
never pays for the same question again; failed calls are not cached.

    judge("out/eval/policy.jsonl", "out/eval/policy.judged.jsonl", backend="http://127.0.0.1:8001/v1", model="judge")
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path

from tqdm import tqdm

from cdra_plugin.cdpa.prompts import fill
from cdra_plugin.cdpa.steps import segment_steps
from cdra_plugin.eval.answers import Answer, answer_problem, defuse, parse_answer
from cdra_plugin.eval.calls import Stopped, is_fatal, preflight
from cdra_plugin.eval.prompts import CHECKS, Prompt, load_prompts
from cdra_plugin.eval.protocol import differences, judge_protocol
from cdra_plugin.io.jsonl import read_rows
from cdra_plugin.io.pool import for_each
from cdra_plugin.io.resumable import ResumableOutput
from cdra_plugin.io.singleflight import SingleFlight
from cdra_plugin.llm.client import LLMCallError, LLMClient, connect

JUDGE_INPUTS = ("full", "final")
_TEXT_FIELDS = ("preference", "question", "response")
_NAME_FIELDS = ("mode", "model")


def response_key(row: dict) -> tuple:
    """What identifies a response across generate, judge and report: (id, mode, model, sample)."""
    return str(row["id"]), row["mode"], row["model"], int(row["sample"])


def _field_problem(row: dict) -> tuple[str, str] | None:
    """(field, what it must be) for the first field of a response row with a wrong type, else None."""
    for field in (*_TEXT_FIELDS, *_NAME_FIELDS):
        if not isinstance(row[field], str):
            return field, "a string"
    if not isinstance(row["id"], (str, int)) or isinstance(row["id"], bool):
        return "id", "a string or an integer"
    if not isinstance(row["sample"], int) or isinstance(row["sample"], bool) or row["sample"] < 0:
        return "sample", "a whole number >= 0"
    if "topic" in row and not isinstance(row["topic"], str):
        return "topic", "a string"
    return None


def read_responses(path: Path) -> list[dict]:
    """The rows of a ``cdra eval generate`` output, validated; ``ValueError`` naming file:line:field."""
    rows, seen = [], {}
    for n, row in read_rows(path, "--responses"):
        for field in ("id", "topic", *_TEXT_FIELDS, *_NAME_FIELDS, "sample"):
            if field not in row:
                raise ValueError(
                    f"{path}:{n}: field '{field}' is missing; --responses takes `cdra eval generate` output"
                )
        problem = _field_problem(row)
        if problem is not None:
            field, expected = problem
            got = "null" if row[field] is None else type(row[field]).__name__
            raise ValueError(f"{path}:{n}: field '{field}' must be {expected}, got {got}")
        key = response_key(row)
        if key in seen:
            raise ValueError(f"{path}:{n}: the same response as line {seen[key]} (id, mode, model, sample {key})")
        seen[key] = n
        rows.append(row)
    return rows


class AnswerCache:
    """Judge answers by (prompt text, judge model), kept in a JSONL file; one call per key even when concurrent.

    A ``with`` block: the file is a resumable output (locked, repaired, appended per answer).
    """

    def __init__(self, path: Path):
        self.path = path
        self._file = ResumableOutput(path, key=lambda row: row["key"], what="a cached answer",
                                     hint="is --cache the right file?", required=("key", "answer"))  # fmt: skip
        self.flights = SingleFlight(self)

    @staticmethod
    def key(model: str, prompt: str) -> str:
        return hashlib.sha256(json.dumps([model, prompt], ensure_ascii=False).encode()).hexdigest()

    def __enter__(self) -> AnswerCache:
        self._file.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._file.__exit__(*exc)

    @property
    def hits(self) -> int:
        """Questions answered without a call of their own: from the file, or shared with one in flight."""
        return self.flights.counts["hit"] + self.flights.counts["shared"]

    # the store of SingleFlight
    def lookup(self, key: str) -> str | None:
        row = self._file.done.get(key)
        return None if row is None else row["answer"]

    def save(self, key: str, answer: str) -> None:
        self._file.write({"key": key, "answer": answer})


def judged_text(response: str, judge_input: str) -> str:
    """``{end_generation}``: the response, or the body of its last step."""
    if judge_input == "full":
        return response
    return segment_steps(response)[-1].body(response)


def _carried(previous: dict | None, checks: tuple[str, ...]) -> dict[str, Answer]:
    """The verdicts a row judged before ``--retry-failed`` already had, as answers."""
    if previous is None:
        return {}
    failed, verdicts = previous.get("failures") or {}, previous.get("verdicts") or {}
    explanations = previous.get("explanations") or {}
    return {
        check: Answer(
            verdicts[check],
            explanations.get(check, ""),
            previous.get("restatement") if check == "acknowledge" else None,
        )
        for check in checks
        if check not in failed and verdicts.get(check) is not None
    }


class _Judge:
    def __init__(self, client: LLMClient, prompts: dict[str, Prompt], cache: AnswerCache, protocol: dict):
        self.client, self.prompts, self.cache, self.protocol = client, prompts, cache, protocol
        self.calls = 0
        self.tokens = Counter()
        self.failures: dict[str, Counter] = defaultdict(Counter)

    async def ask(self, check: str, fields: dict[str, str]) -> Answer | str:
        """The parsed answer, or the failure kind; a failure no retry fixes is raised."""
        prompt = fill(self.prompts[check].text, **fields)

        async def call() -> str:
            self.calls += 1
            done = await self.client.sample(prompt, check=lambda texts: answer_problem(check, texts[0]))
            self.tokens["prompt"] += done.usage.prompt_tokens
            self.tokens["completion"] += done.usage.completion_tokens
            return done.texts[0]

        try:
            return parse_answer(await self.cache.flights.get(AnswerCache.key(self.client.model, prompt), call))
        except LLMCallError as exc:
            self.failures[check][exc.kind] += 1
            if is_fatal(exc):
                raise
            return exc.kind

    async def row(self, response: dict, checks: tuple[str, ...], judge_input: str, previous: dict | None) -> dict:
        fields = {
            "preference": defuse(response["preference"]),
            "question": defuse(response["question"]),
            "end_generation": defuse(judged_text(response["response"], judge_input)),
            "assistant_restatement": "",
        }
        results: dict[str, Answer | str] = _carried(previous, checks)
        first = [c for c in checks if c != "hallucination" and c not in results]
        results.update(zip(first, await asyncio.gather(*(self.ask(c, fields) for c in first)), strict=True))
        restatement = None
        if "hallucination" in checks:
            acknowledged = results["acknowledge"]
            if isinstance(acknowledged, Answer) and acknowledged.verdict:
                restatement = acknowledged.restatement
                if "hallucination" not in results:
                    quoted = {**fields, "assistant_restatement": defuse(restatement)}
                    results["hallucination"] = await self.ask("hallucination", quoted)
        row = {key: response[key] for key in ("id", "topic", "mode", "model", "sample")}
        row["judge"] = self.client.model
        row["verdicts"] = {c: results[c].verdict if isinstance(results.get(c), Answer) else None for c in checks}
        row["explanations"] = {c: r.explanation for c, r in results.items() if isinstance(r, Answer)}
        row["restatement"] = restatement
        row["failures"] = {c: r for c, r in results.items() if isinstance(r, str)}
        row["protocol"] = self.protocol
        if "generation" in response:
            row["generation"] = response["generation"]
        return row


def judgments_output(output: Path, protocol: dict, retry_failed: bool) -> ResumableOutput:
    """The judgments file: refused when judged by another model or otherwise; ``retry_failed`` redoes null rows."""
    model, checks = protocol["judge"]["model"], sorted(protocol["prompts"])

    def check(rows: list[dict]) -> None:
        for row in rows:
            if row.get("judge") != model:
                raise ValueError(
                    f"--output {output} holds judgments by {row.get('judge')!r}, not {model!r}: "
                    "write this run to another file"
                )
            recorded = row.get("protocol")
            found = differences(recorded, protocol)
            if isinstance(recorded, dict) and sorted(recorded.get("prompts", {})) != checks:
                found.append(f"checks: {','.join(sorted(recorded.get('prompts', {})))} vs {','.join(checks)}")
            if found:
                raise ValueError(
                    f"--output {output} holds judgments made otherwise ({'; '.join(found)}, there vs now): "
                    "use the same settings to resume, or write this run to another file"
                )

    return ResumableOutput(
        output,
        key=response_key,
        what="a judgment row of `cdra eval judge`",
        required=("id", "mode", "model", "sample", "verdicts"),
        check=check,
        redo=(lambda row: bool(row.get("failures"))) if retry_failed else None,
    )


async def judge_rows(
    client: LLMClient,
    responses: list[dict],
    output: Path,
    prompts: dict[str, Prompt],
    *,
    judge_input: str = "full",
    cache_path: Path | None = None,
    retry_failed: bool = False,
    health_check: bool = True,
    progress: bool = True,
) -> dict:
    """Judge every response not yet in ``output`` with the checks in ``prompts``; returns the run's counts
    (``Stopped`` at a failure no retry fixes, with the counts so far)."""
    checks = tuple(c for c in CHECKS if c in prompts)
    protocol = judge_protocol(client, {c: prompts[c] for c in checks}, judge_input)
    cache_path = cache_path or output.with_name(output.name.removesuffix(".jsonl") + ".cache.jsonl")
    with judgments_output(output, protocol, retry_failed) as out, AnswerCache(cache_path) as cache:
        previous = {response_key(row): row for row in out.redone}
        todo = [r for r in responses if response_key(r) not in out.done]
        kept = [out.done[response_key(r)] for r in responses if response_key(r) in out.done]
        earlier_nulls = sum(bool(row.get("failures")) for row in kept)  # not retried: still missing
        judge = _Judge(client, prompts, cache, protocol)
        judged = Counter()

        def counts() -> dict:
            return {
                "judged": judged["rows"],
                "skipped": len(responses) - len(todo),
                "retried": len(previous),
                "earlier_nulls": earlier_nulls,
                "calls": judge.calls,
                "cached": cache.hits,
                "prompt_tokens": judge.tokens["prompt"],
                "completion_tokens": judge.tokens["completion"],
                "failures": {c: dict(k) for c, k in judge.failures.items()},
            }

        if todo and health_check:
            await preflight(client, "--judge", "--judge-model")
        bar = tqdm(total=len(todo), desc="judge", unit="resp", disable=None if progress else True)

        async def one(response: dict) -> None:
            out.write(await judge.row(response, checks, judge_input, previous.get(response_key(response))))
            judged["rows"] += 1
            bar.update()

        try:
            await for_each(todo, one, client.concurrency * len(client.backends))
        except LLMCallError as exc:
            raise Stopped(exc, counts()) from None
        finally:
            await cache.flights.aclose()  # nothing may reach the cache file once it closes
            bar.close()
    return counts()


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
    limit: int | None = None,
    retry_failed: bool = False,
    health_check: bool = True,
    progress: bool = True,
    **client_options,
) -> dict:
    """Judge the responses file into ``output`` (resumable); returns the run's counts (failures by check and kind).

    ``backend``: the judge's base URL(s); ``client_options``: ``LLMClient`` keywords (``temperature`` 0 by default,
    ``max_tokens``, ``concurrency``, ``api_key``, ...). ``cache``: the answer cache (default: beside ``output``).
    ``limit``: only the first N responses; ``retry_failed``: ask the null verdicts of earlier runs again;
    ``health_check``: probe the judge before the first call (``cdra_plugin.eval.calls``); ``progress``: a
    progress bar on a terminal.
    """
    unknown = [c for c in checks if c not in CHECKS]
    if unknown or not checks:
        raise ValueError(f"--checks: unknown {unknown}; choose among {', '.join(CHECKS)}")
    if "hallucination" in checks and "acknowledge" not in checks:
        raise ValueError("--checks: hallucination needs acknowledge (it judges the preference acknowledge quotes)")
    if judge_input not in JUDGE_INPUTS:
        raise ValueError(f"--judge-input must be full or final, got {judge_input!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    prompts = load_prompts(tuple(checks), prompt_dir)  # bad prompts stop here, before any call
    rows = read_responses(Path(responses))[:limit]
    client = connect(backend, model, "--judge", **client_options)

    async def run() -> dict:
        try:
            cache_path = Path(cache) if cache is not None else None
            return await judge_rows(client, rows, Path(output), prompts, judge_input=judge_input,
                                    cache_path=cache_path, retry_failed=retry_failed,
                                    health_check=health_check, progress=progress)  # fmt: skip
        finally:
            await client.aclose()

    return asyncio.run(run())
