"""What a scored sample becomes: the failure policy, the scalar reward, the [0, 1] score and the logs with the
per-step carrier block (paper Sec. 2.3), for the gateway's ``/get_reward`` and ``/score`` answers.

Failure policy (``--failure-policy``), applied after the client's retries. A sample fails when any of its steps has
no score (one unjudged step leaves the step rewards, and so the reward and the CDPA advantages, undefined):

- ``fail``    : the sample fails (``SampleFailed``): the gateway answers HTTP 502 naming the sample, its steps and
                the failure kinds (OpenRLHF retries the request, and stops the rollout if it keeps failing);
- ``drop``    : the sample is marked invalid: carrier ``cdpa_failed = 1``, reward 0.0 and score 0.5 as
                placeholders. Only ``cdra-train`` (the ``cdpa`` estimator) honours the mark and leaves the sample
                out of the update; plain OpenRLHF estimators would train on the placeholder, so use ``fail`` or
                ``score=X`` with them;
- ``score=X`` : each failed step gets the value X the user chose; the sample is kept and its failures counted.

Every failed step is counted (``prm_failures`` in the sample's extra_logs, ``cdra_prm_step_failures_total`` by kind
in /metrics); no failure ever becomes a score silently.

The reward (``--reward-aggregation``, the names of ``cdra_plugin.cdpa.aggregation``, which says what each can be
gamed by) of step scores r_1..r_T:

- ``min`` (default): min_j r_j, PURE's min-form credit: no splitting, padding, repeating or reordering raises it;
- ``mean``: the plain mean;
- ``weighted_mean``: the mean weighted by each step's letters and digits (``cdra_plugin.prm.content``): padding a
  step with punctuation, spaces or invisible characters adds no weight, splitting a step leaves it unchanged, but
  padding a good step with words does add weight, and so do bare step markers after it (an empty step joins the
  step before it, its "Step N" with it). A response whose steps have no letters or digits at all gets the plain
  mean;
- ``sum``: the paper's R_dense = sum_j r_j; more steps earn more.

``scores`` (OpenRLHF's dynamic filtering) is the same aggregation on the [0, 1] scale, (a + 1) / 2, with the mean
standing in for ``sum`` (which is not on the step scale).

extra_logs: the carrier block of ``cdra_plugin.cdpa.carrier`` (``cdpa_*`` keys, width ``--max-steps``, read by the
CDPA experience maker) and, for the training logs, ``prm_num_steps``, ``prm_mean_step_score``,
``prm_min_step_score`` (over the scores the sample is rewarded with; for a dropped sample, over its scored steps, 0.0
if none), ``prm_failures`` (failed steps), ``prm_empty`` (1.0 for a response with no content, scored -1 without a
PRM call) and ``prm_degenerate`` (steps the degenerate-step guard scored -1 without a PRM call).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cdra_plugin.cdpa.carrier import encode_step_scores
from cdra_plugin.prm.content import content_chars

if TYPE_CHECKING:
    from cdra_plugin.prm.scoring import SampleResult

LOG_KEYS = ("prm_num_steps", "prm_mean_step_score", "prm_min_step_score", "prm_failures", "prm_empty",
            "prm_degenerate")  # fmt: skip


class SampleFailed(Exception):
    """A sample that failed under the ``fail`` policy."""


@dataclass(frozen=True)
class FailurePolicy:
    mode: str  # "drop" | "fail" | "score"
    value: float | None = None

    @classmethod
    def parse(cls, text: str) -> FailurePolicy:
        text = text.strip()
        if text in ("drop", "fail"):
            return cls(text)
        if text.startswith("score="):
            try:
                value = float(text[len("score=") :])
            except ValueError:
                value = math.nan
            if math.isfinite(value):
                return cls("score", value)
        raise ValueError(f"--failure-policy {text!r}: expected drop, fail or score=X with a finite number X")

    def __str__(self) -> str:
        return f"score={self.value:g}" if self.mode == "score" else self.mode


@dataclass
class Outcome:
    """Step scores the sample is rewarded with (None: dropped), how many steps failed, and the outcome label."""

    step_scores: list[float] | None
    failures: int
    status: str  # "ok" | "dropped" | "fallback"


def describe_failure(result: SampleResult) -> str:
    return "; ".join(f"step {s.index + 1}: {s.error or s.failure}" for s in result.failed_steps)


def resolve(result: SampleResult, policy: FailurePolicy, sample: str = "sample") -> Outcome:
    """Apply ``policy`` to ``result``; raises ``SampleFailed`` (naming ``sample``) under ``fail``."""
    failed = result.failed_steps
    if not failed:
        return Outcome([s.score for s in result.steps], 0, "ok")
    if policy.mode == "fail":
        raise SampleFailed(
            f"{sample}: {len(failed)} of {len(result.steps)} step(s) have no PRM score after retries "
            f"({describe_failure(result)}); --failure-policy fail"
        )
    if policy.mode == "drop":
        return Outcome(None, len(failed), "dropped")
    scores = [policy.value if s.score is None else s.score for s in result.steps]
    return Outcome(scores, len(failed), "fallback")


def aggregate(scores: Sequence[float], how: str, texts: Sequence[str] = ()) -> float:
    """The reward of one response: ``scores[j]`` of step j, whose text ``texts[j]`` weighs it under weighted_mean."""
    if not scores:
        raise ValueError("a reward needs at least one step score")
    if how == "min":
        return float(min(scores))
    if how == "sum":
        return float(sum(scores))
    mean = statistics.fmean(scores)
    sizes = [content_chars(text) for text in texts] if how == "weighted_mean" else []
    if not sum(sizes):  # mean, or no step has a letter or digit
        return mean
    # the plain mean plus the weighted deviations from it: exact when all scores are equal (one step included)
    return mean + math.fsum((s - mean) * n for s, n in zip(scores, sizes, strict=True)) / sum(sizes)


def log_keys(width: int) -> list[str]:
    """Every extra_logs key of a reward answer, in order."""
    return [*encode_step_scores([], width), *LOG_KEYS]


def summarize(result: SampleResult, outcome: Outcome, how: str, width: int) -> dict[str, Any]:
    """reward, score and extra_logs of one sample (module docstring)."""
    scores, reward, score = outcome.step_scores, 0.0, 0.5  # the placeholders of a dropped sample
    if scores is not None:
        reward = aggregate(scores, how, [s.text for s in result.steps])
        on_scale = aggregate(scores, "mean") if how == "sum" else reward
        score = min(1.0, max(0.0, (on_scale + 1.0) / 2.0))
    logged = scores if scores is not None else [s.score for s in result.steps if s.score is not None]
    extra = encode_step_scores(scores, width)
    extra.update(
        prm_num_steps=float(len(result.steps)),
        prm_mean_step_score=statistics.fmean(logged) if logged else 0.0,
        prm_min_step_score=min(logged) if logged else 0.0,
        prm_failures=float(outcome.failures),
        prm_empty=float(result.empty),
        prm_degenerate=float(sum(s.degenerate is not None for s in result.steps)),
    )
    return {"reward": reward, "score": score, "extra_logs": extra}
