"""Offline step-wise scoring of a JSONL file of responses (``cdra prm score``), for analysing a PRM.

Input, one JSON object per line, in any of three forms (``id`` optional, default ``line<N>``):

    {"id": ..., "preference": P, "question": q, "response": y}
    {"id": ..., "label": {"preference": P, "question": q, ...} or its JSON text, "response": y}
    {"id": ..., "prompt": ..., "query": prompt + y, "label": ...}            (OpenRLHF's remote RM form)

Output: one line per input record, ``{"id", "preference", "question", "response"}`` plus the gateway's ``/score``
result (steps with spans, texts, critiques, scores, failures; reward, score, outcome), through the same ``Gateway``
as ``cdra prm serve`` (``cdra_plugin.prm.gateway``). The whole input is validated before any PRM call; errors name
the file, line and field.

Resumable: ids already in the output are skipped; each record is appended, flushed and fsync'ed as it completes, so
an interruption loses at most the line being written. On the next run a torn last line is removed (with a warning)
and a complete last line without its newline gets one, before anything is appended. ``--retry-failed`` scores the
records whose outcome was ``dropped`` or ``fallback`` again (after an outage): they leave the output first. Those
repairs rewrite the output all-or-nothing (``cdra_plugin.data.writer.AtomicFiles``). Under ``--failure-policy
fail`` the first failed record stops the run (exit 1); Ctrl-C stops it (exit 130); either way what was written
stays, the summary says how much, and the next run resumes after it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

from tqdm import tqdm

from cdra_plugin.data.writer import AtomicFiles
from cdra_plugin.prm.gateway import Gateway
from cdra_plugin.prm.policy import SampleFailed
from cdra_plugin.prm.protocol import (
    BadRequest,
    PayloadTooLarge,
    Sample,
    check_text,
    parse_label,
    parse_reward_request,
    shorten,
)

logger = logging.getLogger("cdra.prm")
RETRIED_OUTCOMES = ("dropped", "fallback")


def _sample_of(record: dict, n: int) -> Sample:
    if "query" in record:
        body = {"query": [record["query"]], "prompts": [record.get("prompt", "")], "labels": [record.get("label")]}
        return parse_reward_request(body)[0]
    label = parse_label(record["label"], "label") if "label" in record else record
    for key, where in (("preference", label), ("question", label), ("response", record)):
        if not isinstance(where.get(key), str):
            raise BadRequest(f"field '{key}' is {'missing' if key not in where else 'not a string'}")
        check_text(where[key], f"field '{key}'")
    raw = record.get("label", {"preference": label["preference"], "question": label["question"]})
    return Sample(label["preference"], label["question"], record["response"], "", raw, f"line {n}")


def read_samples(path: Path, gateway: Gateway) -> list[tuple[str, Sample]]:
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
                gateway.admit([sample])
            except (json.JSONDecodeError, BadRequest, PayloadTooLarge) as exc:
                msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc).replace("[0]", "")
                raise ValueError(f"{path}:{n}: {msg}") from None
            rid = str(record.get("id", f"line{n}"))
            if rid in seen:
                raise ValueError(
                    f"{path}:{n}: duplicate id {shorten(rid)} (first on line {seen[rid]}); ids must be unique"
                )
            seen[rid] = n
            samples.append((rid, sample))
    return samples


def repair_output(path: Path, retry_failed: bool = False) -> set[str]:
    """Ids done in the output, after making it safe to append to (see module docstring)."""
    if not path.exists():
        return set()
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept, done = [], set()
    for n, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            rid = str(record["id"])
        except (json.JSONDecodeError, KeyError, TypeError):
            if n != len(lines) or line.endswith("\n"):
                raise ValueError(f"{path}:{n}: not a scored record; is --output the right file?") from None
            logger.warning("%s: removing the torn last line (an interrupted write) before resuming", path)
            continue
        if retry_failed and record.get("outcome") in RETRIED_OUTCOMES:
            continue
        kept.append(line if line.endswith("\n") else line + "\n")
        done.add(rid)
    if kept != lines:
        with AtomicFiles(path.parent) as files, files.open(path.name) as f:
            f.writelines(kept)
    return done


class OfflineRun:
    """One ``cdra prm score`` run; ``summary()`` says what was saved, also after an interruption."""

    def __init__(
        self, gateway: Gateway, input_path: Path, output_path: Path, *, parallel: int = 64,
        retry_failed: bool = False, progress: bool = True,
    ):  # fmt: skip
        if parallel < 1:
            raise ValueError(f"--parallel must be >= 1, got {parallel}")
        self.gateway = gateway
        self.input_path = input_path
        self.output_path = output_path
        self.parallel = parallel
        self.retry_failed = retry_failed
        self.progress = progress
        self.skipped = 0
        self.saved: dict[str, int] = {}  # records written by this run, by outcome
        self.todo = 0

    def summary(self) -> str:
        saved = sum(self.saved.values())
        outcomes = ", ".join(f"{n} {k}" for k, n in sorted(self.saved.items()))
        text = f"{saved} of {self.todo} record(s) scored and saved" + (f" ({outcomes})" if outcomes else "")
        text += f", {self.skipped} already in {self.output_path}"
        return text + ("" if saved == self.todo else "; run the same command again to resume")

    async def score(self) -> None:
        """Score every record of the input not yet in the output (see module docstring)."""
        try:
            samples = read_samples(self.input_path, self.gateway)
            done = repair_output(self.output_path, self.retry_failed)
            todo = [(rid, s) for rid, s in samples if rid not in done]
            self.skipped, self.todo = len(samples) - len(todo), len(todo)
            if todo:
                await self._score_all(todo)
        finally:
            await self.gateway.scorer.client.aclose()

    async def _score_all(self, todo: list[tuple[str, Sample]]) -> None:
        queue = iter(todo)
        bar = tqdm(total=len(todo), desc="PRM scoring", unit="resp", disable=not self.progress)
        with self.output_path.open("a", encoding="utf-8") as out:

            async def worker() -> None:
                for rid, sample in queue:  # the shared iterator hands each record to one worker
                    entry = self.gateway.detail(sample, await self.gateway.result(sample))
                    if entry["outcome"] == "failed":
                        raise SampleFailed(f"{self.input_path}: record {shorten(rid)}: {entry['error']}")
                    record = {"id": rid, "preference": sample.preference, "question": sample.question}
                    record.update(response=sample.response, **entry)
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                    out.flush()
                    os.fsync(out.fileno())
                    self.saved[entry["outcome"]] = self.saved.get(entry["outcome"], 0) + 1
                    bar.update()

            tasks = [asyncio.ensure_future(worker()) for _ in range(min(self.parallel, len(todo)))]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            finally:  # also on Ctrl-C: stop the others before the file closes, then re-raise the first error
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                bar.close()
            for task in tasks:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()
