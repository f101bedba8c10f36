"""Typed records for DeepPref scenarios and PrefEval pairs, and their validation (paper Section 2.2, Appendix E).

A DeepPref record is one scenario (P, q) with its reasoning tree::

    {"user_profile": P, "initial_question": q,
     "thought_tree": {"0": {"children": ["1", "2"]},                       # root: the (P, q) itself
                      "1": {"thought": s, "reasoning": c, "score": r, "children": [...]}, ...}}

A node's ``thought`` is the step s^j, its ``reasoning`` the critique c^j and its ``score`` the reward r^j; the root's
children start the root-to-leaf paths tau_i. Other fields (``response_list``, the root's own text) are not used.
Child ids may be strings or integers (both name the same node). A node without ``children`` is a leaf.

Validation raises :class:`RecordError`, which names the file, the record index (0-based position in the file) and
the field, e.g. ``trees.json: record 3: thought_tree['7'].score: must be a number, got str '0.8'``.
"""

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

ROOT_ID = "0"


class RecordError(ValueError):
    """A malformed input record: where it is (file, record index, field) and what is wrong with it."""

    def __init__(self, file: str, index: int | None, field: str | None, message: str):
        self.file, self.index, self.field, self.message = file, index, field, message
        where = [file] + ([f"record {index}"] if index is not None else []) + ([field] if field else [])
        super().__init__(": ".join([*where, message]))

    def as_dict(self) -> dict:
        return {"file": self.file, "record": self.index, "field": self.field, "error": self.message}


class FieldError(ValueError):
    """A problem inside one record; the loader adds the file and record index to make a :class:`RecordError`."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class Node:
    """One reasoning step of a tree: s^j (``thought``), c^j (``critique``, the node's "reasoning"), r^j."""

    thought: str
    critique: str
    score: float
    children: tuple[str, ...]


@dataclass(frozen=True)
class Scenario:
    """One DeepPref record: (P, q) and its validated reasoning tree (node id -> :class:`Node`, root excluded)."""

    id: str
    topic: str
    preference: str
    question: str
    root_children: tuple[str, ...]
    nodes: Mapping[str, Node]


@dataclass(frozen=True)
class PreferencePair:
    """One PrefEval record: an explicit preference P, a query q and PrefEval's explanation (may be empty)."""

    id: str
    topic: str
    preference: str
    question: str
    explanation: str


def _describe(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40] + '...' if len(text) > 40 else text}"


def require_text(record: Mapping, key: str, field: str | None = None) -> str:
    """``record[key]`` as a non-blank string."""
    field = field or key
    if key not in record:
        found = ", ".join(sorted(map(str, record))) or "none"
        raise FieldError(field, f"missing (keys present: {found})")
    value = record[key]
    if not isinstance(value, str):
        raise FieldError(field, f"must be a string, got {_describe(value)}")
    if not value.strip():
        raise FieldError(field, "is empty")
    return value


def require_score(node: Mapping, field: str) -> float:
    """A finite number (bools and numeric strings are refused: a score must be written as a JSON number)."""
    if "score" not in node:
        raise FieldError(field, "missing")
    value = node["score"]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FieldError(field, f"must be a number, got {_describe(value)}")
    if not math.isfinite(value):
        raise FieldError(field, f"must be finite, got {value}")
    return float(value)


def child_ids(node: Mapping, field: str) -> tuple[str, ...]:
    """The node's children as string ids (a missing or null ``children`` is a leaf)."""
    children = node.get("children")
    if children is None:
        return ()
    if not isinstance(children, list):
        raise FieldError(field, f"must be a list of node ids, got {_describe(children)}")
    ids = []
    for child in children:
        if isinstance(child, bool) or not isinstance(child, str | int):
            raise FieldError(field, f"node ids must be strings or integers, got {_describe(child)}")
        ids.append(str(child))
    return tuple(ids)


def parse_node(tree: Mapping, node_id: str) -> Node:
    field = f"thought_tree[{node_id!r}]"
    raw = tree[node_id]
    if not isinstance(raw, Mapping):
        raise FieldError(field, f"must be an object, got {_describe(raw)}")
    return Node(
        thought=require_text(raw, "thought", f"{field}.thought"),
        critique=require_text(raw, "reasoning", f"{field}.reasoning"),
        score=require_score(raw, f"{field}.score"),
        children=child_ids(raw, f"{field}.children"),
    )


def parse_scenario(raw, scenario_id: str, topic: str) -> Scenario:
    """Validate one DeepPref record; every node reachable from the root is checked, with cycles and dangling ids."""
    if not isinstance(raw, Mapping):
        raise FieldError("record", f"must be an object, got {_describe(raw)}")
    if "user_profile" not in raw and "preference" in raw and "thought_tree" not in raw:
        raise FieldError("user_profile", "missing: this looks like a PrefEval record (use --prefeval for those)")
    preference = require_text(raw, "user_profile")
    question = require_text(raw, "initial_question")
    tree = raw.get("thought_tree")
    if not isinstance(tree, Mapping):
        raise FieldError("thought_tree", "missing" if tree is None else f"must be an object, got {_describe(tree)}")
    tree = {str(k): v for k, v in tree.items()}
    root = tree.get(ROOT_ID)
    if not isinstance(root, Mapping):
        raise FieldError(f"thought_tree[{ROOT_ID!r}]", "missing root node (the (P, q) root must have id '0')")
    root_children = child_ids(root, f"thought_tree[{ROOT_ID!r}].children")
    if not root_children:
        raise FieldError(f"thought_tree[{ROOT_ID!r}].children", "the root has no children, so there is no path")
    nodes = _reachable_nodes(tree, root_children)
    return Scenario(scenario_id, topic, preference, question, root_children, nodes)


def _reachable_nodes(tree: Mapping, root_children: tuple[str, ...]) -> dict[str, Node]:
    """Parse every node reachable from the root, refusing dangling child ids and cycles (iterative DFS).

    A node reached again after its subtree was fully explored (a node with two parents) is not walked twice:
    a cycle through it would have been found the first time.
    """
    nodes: dict[str, Node] = {}
    stack: list[tuple[str, Iterator[str]]] = [(ROOT_ID, iter(root_children))]
    on_stack: set[str] = {ROOT_ID}
    while stack:
        parent, children = stack[-1]
        child = next(children, None)
        if child is None:
            on_stack.discard(parent)
            stack.pop()
            continue
        field = f"thought_tree[{parent!r}].children"
        if child not in tree:
            raise FieldError(field, f"child id {child!r} is not a node of the tree")
        if child in on_stack:
            cycle = " -> ".join([*(node for node, _ in stack), child])
            raise FieldError(field, f"cycle: {cycle}")
        if child in nodes:
            continue
        nodes[child] = parse_node(tree, child)
        on_stack.add(child)
        stack.append((child, iter(nodes[child].children)))
    return nodes


def parse_pair(raw, pair_id: str, topic: str) -> PreferencePair:
    """Validate one PrefEval record (``preference`` and ``question`` required, ``explanation`` optional)."""
    if not isinstance(raw, Mapping):
        raise FieldError("record", f"must be an object, got {_describe(raw)}")
    if "preference" not in raw and "user_profile" in raw:
        raise FieldError("preference", "missing: this looks like a DeepPref record (use --input for those)")
    explanation = raw.get("explanation", "")
    if not isinstance(explanation, str):
        raise FieldError("explanation", f"must be a string, got {_describe(explanation)}")
    return PreferencePair(pair_id, topic, require_text(raw, "preference"), require_text(raw, "question"), explanation)
