"""What happens to a sample whose PRM scoring failed (``--failure-policy``), applied after the client's retries.

A sample fails when any of its steps has no score after the retries (one unjudged step leaves the step rewards, and
so R_dense and the CDPA advantages, undefined):

- ``fail``    : the gateway answers HTTP 502 naming the sample, its steps and the failure kinds (OpenRLHF then
                retries the request, and stops the rollout with an error if it keeps failing);
- ``drop``    : the sample is marked invalid: carrier ``cdpa_failed = 1``, reward 0.0 and score 0.5 as
                placeholders. Only ``cdra-train`` (the ``cdpa`` estimator) honours the mark and excludes the sample
                from the update; plain OpenRLHF estimators would train on the placeholder, so use ``fail`` or
                ``score=X`` with them;
- ``score=X`` : each failed step gets the value X the user chose; the sample is kept and its failures counted.

Every failed step is counted (``prm_failures`` in the sample's extra_logs, ``cdra_prm_step_failures_total`` by kind
in /metrics); no failure ever becomes a score silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cdra_plugin.prm.scoring import SampleResult


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
