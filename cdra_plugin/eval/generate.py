"""``cdra eval generate``: the responses of the model under evaluation to every (P, q) of an evaluation file.

Input: an ``eval.jsonl`` or ``rl_prompts.jsonl`` from ``cdra data prepare`` (DeepPref or PrefEval), or any JSONL with
``id``, ``topic`` and ``preference``/``question`` (as keys or inside ``label``). The prompt is rebuilt from (P, q) for
the chosen ``mode`` (``cdra_plugin.eval.baselines``), so ``policy`` sends exactly the Fig. 14 text training used.

Output, one row per sample: ``id``, ``topic``, ``preference``, ``question``, ``response``, ``mode``, ``model``,
``sample`` (0..n-1). Resumable: samples already in the output are skipped, each prompt's samples are appended and
fsync'ed as soon as they arrive, and an output holding another model's or mode's rows is refused. A prompt whose
call still fails after the client's retries writes nothing (never an empty stand-in response): it is counted by
failure kind, and the next run asks it again.

    generate("out/sample/eval.jsonl", "out/eval/policy.jsonl", backend="http://127.0.0.1:8000/v1", model="policy")
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from cdra_plugin.eval.baselines import MODES, build_prompt, load_shots, pair_key, row_fields
from cdra_plugin.io.jsonl import Appender, read_rows, resume_rows
from cdra_plugin.io.pool import for_each
from cdra_plugin.llm.client import LLMCallError, LLMClient
from cdra_plugin.llm.options import connect


@dataclass(frozen=True)
class Item:
    id: str
    topic: str
    preference: str
    question: str


def read_items(path: Path) -> list[Item]:
    """The (P, q) items of an evaluation file; ``ValueError`` naming file:line."""
    items, seen = [], {}
    for n, row in read_rows(path, "--data"):
        where = f"{path}:{n}"
        fields = row_fields(row, where)
        rid = str(row.get("id", fields.get("id", f"line{n}")))
        if rid in seen:
            raise ValueError(f"{where}: duplicate id {rid!r} (first on line {seen[rid]}); ids must be unique")
        seen[rid] = n
        topic = str(row.get("topic", fields.get("topic", "unknown")))
        items.append(Item(rid, topic, fields["preference"], fields["question"]))
    return items


def _done_samples(output: Path, model: str, mode: str) -> set[tuple[str, int]]:
    done = set()
    for row in resume_rows(output):
        if row.get("model") != model or row.get("mode") != mode:
            raise ValueError(
                f"--output {output} holds responses of model {row.get('model')!r} in mode "
                f"{row.get('mode')!r}, not {model!r} in {mode!r}: write this run to another file"
            )
        try:
            done.add((str(row["id"]), int(row["sample"])))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"--output {output}: a row without id/sample; is --output the right file?") from None
    return done


async def generate_rows(
    client: LLMClient, items: list[Item], output: Path, *, mode: str, n: int, seed: int | None, shots: list
) -> dict:
    """Sample the missing responses of ``items`` into ``output``; returns the counts of the run."""
    done = _done_samples(output, client.model, mode)
    todo = [(item, [s for s in range(n) if (item.id, s) not in done]) for item in items]
    todo = [(item, missing) for item, missing in todo if missing]
    counts = Counter(skipped=len(items) * n - sum(len(m) for _, m in todo))
    failures: Counter = Counter()
    sampling = {} if seed is None else {"seed": seed}
    bar = tqdm(total=sum(len(m) for _, m in todo), desc=f"generate ({mode})", unit="resp", disable=None)

    async def one(job: tuple[Item, list[int]]) -> None:
        item, missing = job
        prompt = build_prompt(mode, item.preference, item.question, shots)
        try:
            completion = await client.sample(prompt, n=len(missing), **sampling)
        except LLMCallError as exc:
            failures[exc.kind] += 1
            return
        for sample, text in zip(missing, completion.texts, strict=True):
            out.write(
                {
                    "id": item.id,
                    "topic": item.topic,
                    "preference": item.preference,
                    "question": item.question,
                    "response": text,
                    "mode": mode,
                    "model": client.model,
                    "sample": sample,
                }
            )
        counts["written"] += len(missing)
        counts["prompt_tokens"] += completion.usage.prompt_tokens
        counts["completion_tokens"] += completion.usage.completion_tokens
        bar.update(len(missing))

    try:
        with Appender(output) as out:
            await for_each(todo, one, client.concurrency * len(client.backends))
    finally:
        bar.close()
    return {
        **{k: counts[k] for k in ("written", "skipped", "prompt_tokens", "completion_tokens")},
        "failed": dict(failures),
    }


def generate(
    data: str | Path,
    output: str | Path,
    *,
    backend,
    model: str,
    mode: str = "policy",
    n: int = 1,
    seed: int | None = None,
    limit: int | None = None,
    shots: str | Path | None = None,
    k: int = 3,
    **client_options,
) -> dict:
    """Generate ``n`` responses per item of ``data`` into ``output`` (resumable); returns the run's counts.

    ``backend``: base URL(s), comma-separated or a list; ``client_options``: ``LLMClient`` keywords (``temperature``,
    ``max_tokens``, ``concurrency``, ``api_key``, ``timeout``, ``retries``, ...). ``shots``/``k``: few-shot only.
    """
    if mode not in MODES:
        raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if n < 1 or (limit is not None and limit < 1):
        raise ValueError("--n and --limit must be >= 1")
    if n > 1 and not client_options.get("temperature"):
        raise ValueError(f"--n {n} with --temperature 0 samples {n} identical responses; set --temperature > 0")
    if (shots is not None) != (mode == "few-shot"):
        raise ValueError("--shots FILE goes with --mode few-shot (and only with it)")
    every = read_items(Path(data))
    items = every[:limit] if limit is not None else every
    chosen, refused = [], 0
    if mode == "few-shot":  # against the whole file, so a later run without --limit cannot meet its own shots
        evaluated = {pair_key(item.preference, item.question) for item in every}
        chosen, refused = load_shots(Path(shots), k, evaluated, seed or 0)
    client = connect(backend, model, "--backend", **client_options)

    async def run() -> dict:
        try:
            return await generate_rows(client, items, Path(output), mode=mode, n=n, seed=seed, shots=chosen)
        finally:
            await client.aclose()

    return {**asyncio.run(run()), "refused_shots": refused}
