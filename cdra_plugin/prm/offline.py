"""Offline step-wise scoring of a JSONL file of responses (``cdra prm score``), for analysing a PRM.

Input, one JSON object per line, in any of three forms (``id`` optional, default ``line<N>``):

    {"id": ..., "preference": P, "question": q, "response": y}
    {"id": ..., "label": {"preference": P, "question": q, ...} or its JSON text, "response": y}
    {"id": ..., "prompt": ..., "query": prompt + y, "label": ...}            (OpenRLHF's remote RM form)

Output: one line per input record, ``{"id", "preference", "question", "response"}`` plus the gateway's ``/score``
result (steps with spans, texts, critiques, scores, failures; reward, score, outcome). Resumable: ids already in
the output are skipped; each record is appended, flushed and fsync'ed as it completes, so an interruption loses at
most the line being written, and a torn last line is removed (with a warning) on the next run. The whole input is
validated before any PRM call; errors name the file, line and field. Under ``--failure-policy fail`` the first
failed record stops the run (exit 1); what was written stays and the next run resumes after it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from pathlib import Path

from tqdm import tqdm

from cdra_plugin.prm.policy import SampleFailed
from cdra_plugin.prm.protocol import BadRequest, Sample, parse_label, parse_reward_request
from cdra_plugin.prm.server import Gateway

logger = logging.getLogger("cdra.prm")


def _sample_of(record: dict, n: int) -> Sample:
    if "query" in record:
        body = {"query": [record["query"]], "prompts": [record.get("prompt", "")], "labels": [record.get("label")]}
        return parse_reward_request(body)[0]
    label = parse_label(record["label"], "label") if "label" in record else record
    for key, where in (("preference", label), ("question", label), ("response", record)):
        if not isinstance(where.get(key), str):
            raise BadRequest(f"field '{key}' is {'missing' if key not in where else 'not a string'}")
    raw = record.get("label", {"preference": label["preference"], "question": label["question"]})
    return Sample(label["preference"], label["question"], record["response"], "", raw, f"line {n}")


def read_samples(path: Path) -> list[tuple[str, Sample]]:
    """``(id, Sample)`` for every line of ``path``; ``ValueError`` naming file:line:field on bad input."""
    samples, seen = [], {}
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise BadRequest("a record must be a JSON object")
                sample = _sample_of(record, n)
            except (json.JSONDecodeError, BadRequest) as exc:
                msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc).replace("[0]", "")
                raise ValueError(f"{path}:{n}: {msg}") from None
            rid = str(record.get("id", f"line{n}"))
            if rid in seen:
                raise ValueError(f"{path}:{n}: duplicate id {rid!r} (first on line {seen[rid]}); ids must be unique")
            seen[rid] = n
            samples.append((rid, sample))
    return samples


def done_ids(path: Path) -> set[str]:
    """Ids already in the output; a torn last line (interrupted write) is removed atomically first."""
    if not path.exists():
        return set()
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    ids = set()
    for n, line in enumerate(lines, start=1):
        try:
            ids.add(str(json.loads(line)["id"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            if n != len(lines) or line.endswith("\n"):
                raise ValueError(f"{path}:{n}: not a scored record; is --output the right file?") from None
            logger.warning("%s: removing the torn last line (an interrupted write) before resuming", path)
            _atomic_write(path, "".join(lines[:-1]))
    return ids


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


async def score_file(gateway: Gateway, input_path: Path, output_path: Path, parallel: int = 64) -> dict:
    """Score every record of ``input_path`` not yet in ``output_path``; returns counts by outcome."""
    samples = read_samples(input_path)
    done = done_ids(output_path)
    todo = [(rid, s) for rid, s in samples if rid not in done]
    counts = {"skipped": len(samples) - len(todo)}
    queue = iter(todo)
    bar = tqdm(total=len(todo), desc="PRM scoring", unit="resp")
    try:
        with output_path.open("a", encoding="utf-8") as out:

            async def worker() -> None:
                for rid, sample in queue:  # the shared iterator hands each record to one worker
                    result = await gateway.result(sample)
                    entry = gateway.detail(sample, result)
                    if entry["outcome"] == "failed":
                        raise SampleFailed(f"{input_path}: record {rid!r}: {entry['error']}")
                    record = {"id": rid, "preference": sample.preference, "question": sample.question}
                    record.update(response=sample.response, **entry)
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                    out.flush()
                    os.fsync(out.fileno())
                    counts[entry["outcome"]] = counts.get(entry["outcome"], 0) + 1
                    bar.update()

            tasks = [asyncio.ensure_future(worker()) for _ in range(max(1, min(parallel, len(todo))))]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in tasks:  # stop the others before the file closes; then re-raise the first error
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for task in tasks:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()
    finally:
        bar.close()
        await gateway.scorer.client.aclose()
    return counts
