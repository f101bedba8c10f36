"""The held-out evaluation split: by scenario, stratified by topic, deterministic for a seed.

The unit of the split is a distinct (P, q) pair, so a scenario that occurs twice in the input (PrefEval has a few
exact duplicates) can never be on both sides. Each topic gets a share of ``eval_size`` proportional to its number
of units (largest remainders, ties by topic name); inside a topic the units are ordered by
``sha256(seed, P, q)`` and the first ones go to eval. The result depends only on the set of (P, q, topic) and the
seed, not on file or record order, and adding scenarios to one topic moves few others.
"""

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass


class SplitError(ValueError):
    """An impossible split request (e.g. more eval scenarios than there are)."""


@dataclass(frozen=True)
class Unit:
    """A distinct (P, q) pair and the topic of its first occurrence."""

    preference: str
    question: str
    topic: str


def units_of(records: Iterable) -> list[Unit]:
    """Distinct (P, q) pairs in first-occurrence order (records need ``preference``, ``question``, ``topic``)."""
    seen: dict[tuple[str, str], Unit] = {}
    for record in records:
        key = (record.preference, record.question)
        seen.setdefault(key, Unit(record.preference, record.question, record.topic))
    return list(seen.values())


def topic_quotas(sizes: dict[str, int], eval_size: int) -> dict[str, int]:
    """Eval units per topic, proportional to topic size, summing exactly to ``eval_size``."""
    total = sum(sizes.values())
    exact = {topic: eval_size * n / total for topic, n in sizes.items()} if total else {}
    quotas = {topic: int(share) for topic, share in exact.items()}
    left = eval_size - sum(quotas.values())
    by_remainder = sorted(exact, key=lambda topic: (-(exact[topic] - quotas[topic]), topic))
    for topic in by_remainder[:left]:
        quotas[topic] += 1
    return quotas


def _rank(seed: int, unit: Unit) -> str:
    return hashlib.sha256(f"{seed}\0{unit.preference}\0{unit.question}".encode()).hexdigest()


def eval_units(units: list[Unit], eval_size: int, seed: int) -> set[tuple[str, str]]:
    """The (P, q) keys of the eval split."""
    if eval_size < 0:
        raise SplitError(f"--eval-size must be >= 0, got {eval_size}")
    if eval_size > len(units):
        suggestion = max(1, round(len(units) / 10)) if len(units) > 1 else 0  # about a tenth, some left to train
        raise SplitError(
            f"--eval-size {eval_size} is more than the {len(units)} distinct scenarios in the input: pass a smaller "
            f"one, e.g. --eval-size {suggestion} (about 10% held out; 0 holds none out)"
        )
    by_topic: dict[str, list[Unit]] = {}
    for unit in units:
        by_topic.setdefault(unit.topic, []).append(unit)
    quotas = topic_quotas({topic: len(members) for topic, members in by_topic.items()}, eval_size)
    chosen = set()
    for topic, members in by_topic.items():
        ranked = sorted(members, key=lambda unit: _rank(seed, unit))
        chosen.update((unit.preference, unit.question) for unit in ranked[: quotas[topic]])
    return chosen
