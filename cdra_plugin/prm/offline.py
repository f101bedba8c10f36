"""Offline step-wise scoring of a JSONL file of responses (``cdra prm score``), for analysing a PRM.

Input, one JSON object per line, in any of three forms (``id`` optional, default ``line<N>``):

    {"id": ..., "preference": P, "question": q, "response": y}
    {"id": ..., "label": {"preference": P, "question": q, ...} or its JSON text, "response": y}
    {"id": ..., "prompt": ..., "query": prompt + y, "label": ...}            (OpenRLHF's remote RM form)

Output: one line per input record, ``{"id", "preference", "question", "response"}`` plus the gateway's ``/score``
result (steps with spans, texts, critiques, scores, failures; reward, score, outcome), through the same ``Gateway``
as ``cdra prm serve`` (``cdra_plugin.prm.gateway``). The whole input is validated before any PRM call; errors name
the file, line and field.

Resumable (``cdra_plugin.io.resumable``): ids already in the output are skipped; each record is appended, flushed
and fsync'ed as it completes, so an interruption loses at most the line being written, a torn last line is repaired
on the next run, and a second run writing the same output at the same time is refused; an ``--output`` that is the
``--input`` file (by name, symlink or hard link) is refused before anything is read or written. ``--retry-failed``
scores the records whose outcome was ``dropped`` or ``fallback`` again (after an outage): they leave the output
first, in one atomic rewrite. Under ``--failure-policy fail`` the first failed record stops the run (exit 1); Ctrl-C
stops it (exit 130); either way what was written stays, the summary says how much, and the next run resumes after it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from cdra_plugin.io.jsonl import read_rows
from cdra_plugin.io.pool import for_each
from cdra_plugin.io.resumable import ResumableOutput
from cdra_plugin.prm.gateway import Gateway
from cdra_plugin.prm.protocol import (
    BadRequest,
    PayloadTooLarge,
    Sample,
    check_text,
    parse_label,
    parse_reward_request,
    shorten,
)
from cdra_plugin.prm.reward import SampleFailed

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
    for n, record in read_rows(path, "--input"):
        try:
            sample = _sample_of(record, n)
            gateway.admit([sample])
        except (BadRequest, PayloadTooLarge) as exc:
            raise ValueError(f"{path}:{n}: {str(exc).replace('[0]', '')}") from None
        rid = str(record.get("id", f"line{n}"))
        if rid in seen:
            raise ValueError(
                f"{path}:{n}: duplicate id {shorten(rid)} (first on line {seen[rid]}); ids must be unique"
            )
        seen[rid] = n
        samples.append((rid, sample))
    return samples


def scored_output(path: Path, retry_failed: bool = False) -> ResumableOutput:
    """The output, its records by id (with ``retry_failed``, those dropped or fallen back are removed to redo)."""
    retried = (lambda record: record.get("outcome") in RETRIED_OUTCOMES) if retry_failed else None
    return ResumableOutput(path, key=lambda record: str(record["id"]), what="a scored record", required=("id",),
                           redo=retried)  # fmt: skip


@dataclass
class OfflineRun:
    """One ``cdra prm score`` run; ``summary()`` says what was saved, also after an interruption."""

    gateway: Gateway
    input_path: Path
    output_path: Path
    parallel: int = 64
    retry_failed: bool = False
    progress: bool = True
    skipped: int = field(default=0, init=False)
    saved: Counter = field(default_factory=Counter, init=False)  # records written by this run, by outcome
    todo: int = field(default=0, init=False)

    def __post_init__(self):
        if self.parallel < 1:
            raise ValueError(f"--parallel must be >= 1, got {self.parallel}")
        if not self.input_path.is_file():
            raise ValueError(f"--input {self.input_path}: no such file")
        if self.output_path.resolve() == self.input_path.resolve() or (
            self.output_path.exists() and self.output_path.samefile(self.input_path)
        ):
            raise ValueError(
                f"--output {self.output_path} is the --input file {self.input_path} (or a link to it): scoring would "
                "write into the responses it reads; choose another --output"
            )

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
            with scored_output(self.output_path, self.retry_failed) as out:
                todo = [(rid, s) for rid, s in samples if rid not in out.done]
                self.skipped, self.todo = len(samples) - len(todo), len(todo)
                if todo:
                    await self._score_all(todo, out)
        finally:
            await self.gateway.scorer.client.aclose()

    async def _score_all(self, todo: list[tuple[str, Sample]], out: ResumableOutput) -> None:
        bar = tqdm(total=len(todo), desc="PRM scoring", unit="resp", disable=not self.progress)

        async def one(job: tuple[str, Sample]) -> None:
            rid, sample = job
            entry = self.gateway.detail(sample, await self.gateway.result(sample))
            if entry["outcome"] == "failed":
                raise SampleFailed(f"{self.input_path}: record {shorten(rid)}: {entry['error']}")
            record = {"id": rid, "preference": sample.preference, "question": sample.question}
            out.write({**record, "response": sample.response, **entry})
            self.saved[entry["outcome"]] += 1
            bar.update()

        try:
            await for_each(todo, one, self.parallel)  # also on Ctrl-C: the others stop before the file closes
        finally:
            bar.close()
