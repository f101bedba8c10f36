"""Counts of a DeepPref build: calls, failures by kind, tokens, nodes generated and pruned (``build_stats.json``).

A :class:`Tally` is a nested dict of integer counters. Each scenario keeps its own (it is journaled with the
scenario), and ``build_stats.json`` is their sum over the journal, so a resumed build reports the same totals as an
uninterrupted one.

Stages and the role that serves them: ``thought`` (Fig. 11, generator), ``answer`` (the final answer, generator),
``node_score`` (Fig. 12, evaluator), ``path_score`` (Fig. 13, evaluator).
"""

from __future__ import annotations

STAGES = {"thought": "generator", "answer": "generator", "node_score": "evaluator", "path_score": "evaluator"}
# Why a generated node is not in the written tree.
PRUNE_REASONS = (
    "duplicate",  # same text as a sibling (not evaluated)
    "eval_failed",  # its Fig. 12 (or, for an answer, Fig. 13) evaluation failed after retries
    "below_threshold",  # score < --prune-below
    "not_top_k",  # not among the --keep-top best of its level
    "dead_end",  # kept, but no path through it reached a scored final answer
)


class Tally:
    """Nested integer counters: ``add("failures", "node_score", "timeout")``; ``merge`` sums another tally's dict."""

    def __init__(self, data: dict | None = None):
        self.data: dict = {}
        if data:
            self.merge(data)

    def add(self, *path: str, n: int = 1) -> None:
        *parents, leaf = path
        node = self.data
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = node.get(leaf, 0) + n

    def get(self, *path: str) -> int:
        node = self.data
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return 0
            node = node[key]
        return node if isinstance(node, int) else 0

    def merge(self, other: dict) -> None:
        _merge(self.data, other)

    def to_dict(self) -> dict:
        return _sorted(self.data)


def _merge(into: dict, other: dict) -> None:
    for key, value in other.items():
        if isinstance(value, dict):
            _merge(into.setdefault(key, {}), value)
        else:
            into[key] = into.get(key, 0) + value


def _sorted(node):
    return {k: _sorted(v) for k, v in sorted(node.items())} if isinstance(node, dict) else node
