"""Reasoning paths of a DeepPref tree and their returns (paper Section 2.2 and Appendix E).

Every root-to-leaf path of a validated tree is a chain tau_i = (s^1, ..., s^T) with its critiques c^j and scores
r^j. The path return is R(tau) = sum_j r^j (Appendix E, "Dataset Assembly"); the RFT subset D_RFT keeps, per
scenario, the paths with the highest R. Paths are listed in depth-first order, children in the order the file
gives them, so "first" is well defined and ties in R are broken by that order.
"""

from collections.abc import Iterator
from dataclasses import dataclass

from cdra_plugin.data.schema import Node, Scenario


@dataclass(frozen=True)
class ReasoningPath:
    """One root-to-leaf chain: node ids and the nodes (steps) in order."""

    node_ids: tuple[str, ...]
    steps: tuple[Node, ...]

    @property
    def thoughts(self) -> list[str]:
        return [node.thought for node in self.steps]

    @property
    def scores(self) -> list[float]:
        return [node.score for node in self.steps]

    @property
    def total(self) -> float:
        """R(tau) = sum_j r^j."""
        return path_return(self.scores)


def path_return(scores: list[float]) -> float:
    """R(tau) = sum_j r^j: the RFT selection score of a path."""
    return float(sum(scores))


def enumerate_paths(scenario: Scenario) -> Iterator[ReasoningPath]:
    """Every root-to-leaf path, depth first. The tree was validated: no cycles, no dangling ids."""
    stack = [(child,) for child in reversed(scenario.root_children)]
    while stack:
        ids = stack.pop()
        children = scenario.nodes[ids[-1]].children
        if not children:
            yield ReasoningPath(ids, tuple(scenario.nodes[i] for i in ids))
        stack.extend(ids + (child,) for child in reversed(children))


def top_k_paths(paths: list[ReasoningPath], k: int) -> list[ReasoningPath]:
    """The k paths with the highest R(tau), best first; equal returns keep depth-first order (stable sort)."""
    if k < 1:
        raise ValueError(f"top-k must be >= 1, got {k}")
    return sorted(paths, key=lambda path: -path.total)[:k]
