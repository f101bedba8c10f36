"""``cdra eval generate``: the responses of the model under evaluation to every (P, q) of an evaluation file.

Input: an ``eval.jsonl`` or ``rl_prompts.jsonl`` from ``cdra data prepare`` (DeepPref or PrefEval), or any JSONL with
``id``, ``topic`` and ``preference``/``question`` (as keys or inside ``label``). The prompt is rebuilt from (P, q) for
the chosen ``mode`` (``cdra_plugin.eval.baselines``), so ``policy`` sends exactly the Fig. 14 text training used.

Output, one row per sample: ``id``, ``topic``, ``preference``, ``question``, ``response``, ``mode``, ``model``,
``sample`` (0..n-1) and ``generation``: the settings that produced it (``temperature``, ``top_p``, ``max_tokens``,
``prompt_format``, ``seed``, ``n``, ``shots`` {file, sha256, k} or null, ``cdra_plugin``), which ``cdra eval judge``
carries into its rows and ``cdra eval report`` shows. Resumable (``cdra_plugin.io.resumable``): samples already in
the output are skipped, each prompt's samples are appended and fsync'ed as soon as they arrive, and an output holding
another model's, mode's or setting's rows is refused (``n`` may grow). A prompt whose call still fails after the
client's retries writes nothing (never an empty stand-in response): it is counted by failure kind, and the next run
asks it again; a failure no retry fixes stops the run (``cdra_plugin.eval.calls``).

    generate("out/sample/eval.jsonl", "out/eval/policy.jsonl", backend="http://127.0.0.1:8000/v1", model="policy")
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from cdra_plugin import __version__
from cdra_plugin.eval.baselines import MODES, build_prompt, load_shots, pair_key, row_fields
from cdra_plugin.eval.calls import Stopped, is_fatal, preflight
from cdra_plugin.io.jsonl import read_rows
from cdra_plugin.io.pool import for_each
from cdra_plugin.io.resumable import ResumableOutput
from cdra_plugin.llm.client import LLMCallError, LLMClient, connect

# generation settings that may differ between the runs writing one output (more samples per prompt)
_MAY_GROW = ("n", "cdra_plugin")


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


def generation_settings(client: LLMClient, *, n: int, seed: int | None, shots: dict | None) -> dict:
    """The ``generation`` field of every row this run writes."""
    return {**client.sampling, "prompt_format": client.prompt_format, "seed": seed, "n": n, "shots": shots,
            "cdra_plugin": __version__}  # fmt: skip


def _consistent(output: Path, model: str, mode: str, settings: dict):
    def check(rows: list[dict]) -> None:
        for row in rows:
            if row.get("model") != model or row.get("mode") != mode:
                raise ValueError(
                    f"--output {output} holds responses of model {row.get('model')!r} in mode "
                    f"{row.get('mode')!r}, not {model!r} in {mode!r}: write this run to another file"
                )
            recorded = row.get("generation") if isinstance(row.get("generation"), dict) else {}
            changed = [k for k in settings if k not in _MAY_GROW and _same(k, recorded) != _same(k, settings)]
            if changed:
                detail = ", ".join(f"{k}: {recorded.get(k, 'not recorded')!r} there, {settings[k]!r} now"
                                   for k in changed)  # fmt: skip
                raise ValueError(
                    f"--output {output} holds responses generated with other settings ({detail}): use the same "
                    "settings to resume, or write this run to another file"
                )

    return check


def _same(key: str, settings: dict):
    """What must match between runs writing one output, for the setting ``key``."""
    value = settings.get(key, "not recorded")
    if key == "shots" and isinstance(value, dict):  # the same file may be reached by another path
        return value.get("sha256"), value.get("k")
    return value


def responses_output(output: Path, model: str, mode: str, settings: dict) -> ResumableOutput:
    return ResumableOutput(
        output,
        key=lambda row: (str(row["id"]), int(row["sample"])),
        what="a response row of `cdra eval generate`",
        required=("id", "sample"),
        check=_consistent(output, model, mode, settings),
    )


async def generate_rows(
    client: LLMClient,
    items: list[Item],
    output: Path,
    *,
    mode: str,
    n: int,
    seed: int | None,
    shots: list,
    shots_file: dict | None = None,
    health_check: bool = True,
    progress: bool = True,
) -> dict:
    """Sample the missing responses of ``items`` into ``output``; returns the counts of the run (``Stopped`` at a
    failure no retry fixes, with the counts so far)."""
    settings = generation_settings(client, n=n, seed=seed, shots=shots_file)
    counts = Counter()
    failures: Counter = Counter()
    sampling = {} if seed is None else {"seed": seed}

    def result() -> dict:
        return {
            **{k: counts[k] for k in ("written", "skipped", "prompt_tokens", "completion_tokens")},
            "failed": dict(failures),
        }

    with responses_output(output, client.model, mode, settings) as out:
        todo = [(item, [s for s in range(n) if (item.id, s) not in out.done]) for item in items]
        todo = [(item, missing) for item, missing in todo if missing]
        counts["skipped"] = len(items) * n - sum(len(m) for _, m in todo)
        if todo and health_check:
            await preflight(client, "--backend", "--model")
        total = sum(len(m) for _, m in todo)
        bar = tqdm(total=total, desc=f"generate ({mode})", unit="resp", disable=None if progress else True)

        async def one(job: tuple[Item, list[int]]) -> None:
            item, missing = job
            prompt = build_prompt(mode, item.preference, item.question, shots)
            try:
                completion = await client.sample(prompt, n=len(missing), **sampling)
            except LLMCallError as exc:
                failures[exc.kind] += 1
                if is_fatal(exc):
                    raise
                return
            for sample, text in zip(missing, completion.texts, strict=True):
                out.write({"id": item.id, "topic": item.topic, "preference": item.preference,
                           "question": item.question, "response": text, "mode": mode, "model": client.model,
                           "sample": sample, "generation": settings})  # fmt: skip
            counts["written"] += len(missing)
            counts["prompt_tokens"] += completion.usage.prompt_tokens
            counts["completion_tokens"] += completion.usage.completion_tokens
            bar.update(len(missing))

        try:
            await for_each(todo, one, client.concurrency * len(client.backends))
        except LLMCallError as exc:
            raise Stopped(exc, result()) from None
        finally:
            bar.close()
    return result()


def _shots_file(path: Path, k: int) -> dict:
    return {"file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "k": k}


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
    health_check: bool = True,
    progress: bool = True,
    **client_options,
) -> dict:
    """Generate ``n`` responses per item of ``data`` into ``output`` (resumable); returns the run's counts.

    ``backend``: base URL(s), comma-separated or a list; ``client_options``: ``LLMClient`` keywords (``temperature``,
    ``max_tokens``, ``concurrency``, ``api_key``, ``timeout``, ``retries``, ...). ``shots``/``k``: few-shot only.
    ``health_check``: probe the backends before the first call (see ``cdra_plugin.eval.calls``); ``progress``: a
    progress bar on a terminal.
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
    chosen, refused, shots_file = [], 0, None
    if mode == "few-shot":  # against the whole file, so a later run without --limit cannot meet its own shots
        evaluated = {pair_key(item.preference, item.question) for item in every}
        chosen, refused = load_shots(Path(shots), k, evaluated, seed or 0)
        shots_file = _shots_file(Path(shots), k)
    client = connect(backend, model, "--backend", **client_options)

    async def run() -> dict:
        try:
            return await generate_rows(client, items, Path(output), mode=mode, n=n, seed=seed, shots=chosen,
                                       shots_file=shots_file, health_check=health_check,
                                       progress=progress)  # fmt: skip
        finally:
            await client.aclose()

    return {**asyncio.run(run()), "refused_shots": refused}
