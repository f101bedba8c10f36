"""Counts and distributions written to ``stats.json`` by ``cdra data prepare``.

Per topic: records (``scenarios`` or ``pairs``), distinct ones held out (``eval``) or kept (``train``), repeated
(P, q) pairs (``duplicates``), and for DeepPref the paths, steps (summed over paths), distinct nodes, PRM and RFT
examples. Overall: the distribution of the annotated scores r^j of the PRM training examples (summary, quantiles, a
histogram over [-1, 1] plus the counts outside it), path lengths and paths per scenario (all scenarios), and R(tau)
of the RFT paths. The caller adds inputs, options and skipped records.

An annotation outside the Fig. 15 scale [-1, 1] is kept as annotated here, but its PRM SFT target is written at the
nearest end of the scale (``prompts.prm_target``: the gateway's ``parse_score`` refuses off-scale scores, so a
target beyond them would teach the PRM answers the gateway cannot read); ``prm_scores.clipped`` counts those targets.
"""

import math
from collections import Counter, defaultdict

from cdra_plugin.cdpa.prompts import SCORE_MAX, SCORE_MIN
from cdra_plugin.data.paths import ReasoningPath

HIST_BINS = 10


def summary(values: list[float]) -> dict:
    """count, min, max, mean, std (population) and the 5/25/50/75/95th percentiles (nearest rank), 6 decimals."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    n = len(ordered)
    mean = sum(ordered) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in ordered) / n)
    quantiles = {f"p{q}": ordered[min(n - 1, max(0, math.ceil(q / 100 * n) - 1))] for q in (5, 25, 50, 75, 95)}
    values = {"min": ordered[0], "max": ordered[-1], "mean": mean, "std": std, **quantiles}
    # Rounded for reading: sums of step scores carry float noise (2.5100000000000002).
    return {"count": n, **{k: round(v, 6) for k, v in values.items()}}


def histogram(values: list[float], bins: int = HIST_BINS) -> dict:
    """Counts in ``bins`` equal bins over [-1, 1] (the last bin includes 1.0) and outside that range."""
    counts = [0] * bins
    below = above = 0
    for v in values:
        if v < -1:
            below += 1
        elif v > 1:
            above += 1
        else:
            counts[min(bins - 1, int((v + 1) / 2 * bins))] += 1
    edges = [round(-1 + 2 * i / bins, 6) for i in range(bins + 1)]
    return {"edges": edges, "counts": counts, "below_-1": below, "above_1": above}


class Stats:
    """Accumulates counts while rows are generated; :meth:`to_dict` gives the ``stats.json`` body."""

    def __init__(self):
        self.topics: dict[str, Counter] = defaultdict(Counter)
        self.prm_scores: list[float] = []
        self.path_lengths: list[int] = []
        self.paths_per_scenario: list[int] = []
        self.rft_returns: list[float] = []

    def add_scenario(self, topic: str, split: str, paths: list[ReasoningPath], first: bool) -> None:
        counts = self.topics[topic]
        counts["scenarios"] += 1
        counts[split] += first
        counts["duplicates"] += not first
        counts["paths"] += len(paths)
        counts["steps"] += sum(len(p.steps) for p in paths)
        counts["nodes"] += len({i for p in paths for i in p.node_ids})
        self.paths_per_scenario.append(len(paths))
        self.path_lengths.extend(len(p.steps) for p in paths)

    def add_pair(self, topic: str, split: str, first: bool) -> None:
        counts = self.topics[topic]
        counts["pairs"] += 1
        counts[split] += first
        counts["duplicates"] += not first

    def add_prm_example(self, topic: str, score: float) -> None:
        self.topics[topic]["prm_sft"] += 1
        self.prm_scores.append(score)

    def add_rft_example(self, topic: str, total: float) -> None:
        self.topics[topic]["rft"] += 1
        self.rft_returns.append(total)

    def total(self, key: str) -> int:
        return sum(counts[key] for counts in self.topics.values())

    def to_dict(self) -> dict:
        keys = sorted({key for counts in self.topics.values() for key in counts})
        body = {"topics": {topic: {k: c[k] for k in keys} for topic, c in sorted(self.topics.items())}}
        if self.path_lengths:
            body["paths"] = {
                "total": len(self.path_lengths),
                "per_scenario": summary(self.paths_per_scenario),
                "length": summary(self.path_lengths),
            }
        if self.prm_scores:
            scores = self.prm_scores
            clipped = sum(not SCORE_MIN <= score <= SCORE_MAX for score in scores)
            body["prm_scores"] = {**summary(scores), "clipped": clipped, "histogram": histogram(scores)}
        if self.rft_returns:
            body["rft_returns"] = summary(self.rft_returns)
        return body
