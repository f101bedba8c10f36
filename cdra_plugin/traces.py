"""Critique traces: the natural-language feedback behind CDPA's numbers, kept for people to read.

The PRM writes a critique c_j before each score r_j (paper Section 2.3); CDPA trains on the scores only. A trace
record keeps, for a sampled response, its prompt id, step texts, the gateway's critiques, step scores and the mean
CDPA advantage each step received, so that "why did this step get pushed down?" has an answer.

    cdra-train ... --cdpa.trace_path traces.jsonl --cdpa.trace_sample_rate 0.02
    cdra traces show traces.jsonl --index -1        # the last traced response, steps coloured by score

The file is JSON Lines, appended; past ``--cdpa.trace_max_mb`` it is rotated to ``<path>.1`` (one generation kept),
so a long run never fills the disk. Critiques come from the gateway's per-step result (``POST /score`` with
``cache_only``: the result cached when the reward was computed; nothing is scored twice). When that is gone from
the cache the record says ``"critiques": null``.
"""

import json
import os
import random
from pathlib import Path

import httpx
import torch

from cdra_plugin.prm.protocol import first_critiques, score_request

SCORE_COLOURS = ((0.7, "\033[32m"), (0.4, "\033[36m"), (0.0, "\033[33m"), (-2.0, "\033[31m"))
RESET = "\033[0m"


class CritiqueTracer:
    def __init__(self, path: str, sample_rate: float, max_mb: float, gateway_urls: list[str], seed: int = 0):
        self.path = Path(path)
        self.sample_rate = sample_rate
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.score_urls = [_score_url(u) for u in gateway_urls if u.startswith("http")]
        self.rng = random.Random(seed)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_args(cls, args) -> "CritiqueTracer | None":
        cdpa = getattr(args, "cdpa", None)
        if cdpa is None or not cdpa.trace_path or args.algo.advantage.estimator != "cdpa":
            return None
        return cls(cdpa.trace_path, cdpa.trace_sample_rate, cdpa.trace_max_mb, args.reward.remote_url or [])

    def trace(self, experiences, rows, layout, advantages: torch.Tensor, tokenizer) -> int:
        """Write the sampled responses of one batch; returns how many were written."""
        written = 0
        for exp, exp_rows in zip(experiences, rows, strict=True):
            for i, row in enumerate(exp_rows):
                if self.rng.random() >= self.sample_rate:
                    continue
                index = exp.index[i]
                record = {
                    "prompt_id": _prompt_id(exp.labels[i]),
                    "failed": row.failed,
                    "steps": [s.body(row.text) for s in row.steps],
                    "scores": [round(float(x), 4) for x in row.step_scores],
                    "mean_advantage": _mean_per_step(advantages[index], row.step_of_token, len(row.steps)),
                    "critiques": self._critiques(exp, i, tokenizer),
                }
                self._append(record)
                written += 1
        return written

    def _critiques(self, exp, i: int, tokenizer) -> list[str] | None:
        if not self.score_urls:
            return None
        length = int(exp.attention_mask[i].sum())
        query = tokenizer.decode(exp.sequences[i, :length].tolist(), skip_special_tokens=False)
        body = score_request([query], [exp.prompts[i]], [exp.labels[i]], cache_only=True)
        for url in self.score_urls:  # OpenRLHF spreads reward calls over the gateways: ask each cache in turn
            try:
                response = httpx.post(url, json=body, timeout=10.0)
            except httpx.HTTPError:
                continue
            if response.status_code == 200:
                (result,) = response.json()["results"]
                critiques = first_critiques(result)
                if critiques is not None:
                    return critiques
        return None

    def _append(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        if self.path.exists() and self.path.stat().st_size + len(line) > self.max_bytes:
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)


def _score_url(reward_url: str) -> str:
    base = reward_url.rsplit("/get_reward", 1)[0] if reward_url.endswith("/get_reward") else reward_url.rstrip("/")
    return base + "/score"


def _prompt_id(label: str):
    try:
        return json.loads(label).get("id")
    except (TypeError, ValueError, AttributeError):
        return None


def _mean_per_step(advantage_row: torch.Tensor, step_of_token: torch.Tensor, num_steps: int) -> list[float | None]:
    n = len(step_of_token)
    sums = torch.zeros(num_steps).index_add_(0, step_of_token, advantage_row[:n].float())
    counts = torch.bincount(step_of_token, minlength=num_steps)
    return [round(float(s / c), 4) if c else None for s, c in zip(sums, counts, strict=True)]


def format_trace(record: dict, colour: bool = True) -> str:
    """One traced response as text, each step coloured by its score (green high ... red negative)."""
    lines = [
        f"prompt {record.get('prompt_id')}" + ("  [FAILED: excluded from the update]" if record["failed"] else "")
    ]
    critiques = record.get("critiques") or [None] * len(record["steps"])
    for j, (text, score, adv) in enumerate(
        zip(record["steps"], record["scores"], record["mean_advantage"], strict=True)
    ):
        tint = next(c for bound, c in SCORE_COLOURS if score >= bound) if colour else ""
        end = RESET if colour else ""
        adv_text = "n/a" if adv is None else f"{adv:+.3f}"
        lines.append(f"{tint}Step {j + 1}  score {score:+.2f}  advantage {adv_text}{end}\n  {text}")
        if j < len(critiques) and critiques[j]:
            lines.append(f"  critique: {critiques[j]}")
    return "\n".join(lines)


def show(path: str, index: int = -1, colour: bool | None = None) -> str:
    records = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not records:
        raise ValueError(f"{path}: no trace records")
    if not -len(records) <= index < len(records):
        raise IndexError(f"{path}: --index {index} out of range ({len(records)} records)")
    try:
        record = json.loads(records[index])
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: record {index % len(records)} is not valid JSON ({e})") from e
    return format_trace(record, colour=os.isatty(1) if colour is None else colour)
