"""Root-to-leaf path enumeration, R(tau) and top-k on hand-built DeepPref trees (cdra_plugin.data.paths).

``record``/``write_deeppref`` build DeepPref-format input for the other test_data_* files too.
"""

import json

import pytest

from cdra_plugin.data.paths import enumerate_paths, path_return, top_k_paths
from cdra_plugin.data.schema import parse_scenario


def record(edges: dict, scores: dict | None = None, preference="I like quiet places.", question="Where to go?"):
    """A DeepPref record from ``{node: [children]}`` (root "0"); node n gets thought "s<n>", critique "c<n>"."""
    scores = scores or {}
    tree = {"0": {"thought": question, "children": list(edges.get("0", []))}}
    nodes = {str(c) for children in edges.values() for c in children} | (set(edges) - {"0"})
    for n in sorted(nodes):
        tree[n] = {
            "thought": f"s{n}",
            "reasoning": f"c{n}",
            "score": scores.get(n, 0.5),
            "children": list(edges.get(n, [])),
        }
    return {"user_profile": preference, "initial_question": question, "thought_tree": tree}


def write_deeppref(directory, topic: str, records: list) -> str:
    path = directory / f"cot_{topic}_preferences.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return str(path)


def paths_of(raw) -> list:
    return list(enumerate_paths(parse_scenario(raw, "T/0", "T")))


def test_branching_tree_gives_every_root_to_leaf_path_in_depth_first_order():
    #        0
    #      /   \
    #     1     2
    #    / \    |
    #   3   4   5
    #       |
    #       6
    raw = record({"0": ["1", "2"], "1": ["3", "4"], "4": ["6"], "2": ["5"]})
    paths = paths_of(raw)
    assert [p.node_ids for p in paths] == [("1", "3"), ("1", "4", "6"), ("2", "5")]
    assert [p.thoughts for p in paths] == [["s1", "s3"], ["s1", "s4", "s6"], ["s2", "s5"]]
    assert [[n.critique for n in p.steps] for p in paths][1] == ["c1", "c4", "c6"]


def test_single_chain_and_single_step():
    assert [p.node_ids for p in paths_of(record({"0": ["1"], "1": ["2"], "2": ["3"]}))] == [("1", "2", "3")]
    assert [p.node_ids for p in paths_of(record({"0": ["7"]}))] == [("7",)]


def test_integer_child_ids_name_the_same_nodes_as_strings():
    raw = record({"0": ["1", "2"], "1": ["3"]})
    raw["thought_tree"]["0"]["children"] = [1, 2]
    raw["thought_tree"]["1"]["children"] = [3]
    assert [p.node_ids for p in paths_of(raw)] == [("1", "3"), ("2",)]


def test_node_with_two_parents_is_on_both_paths():
    raw = record({"0": ["1", "2"], "1": ["3"], "2": ["3"]})
    assert [p.node_ids for p in paths_of(raw)] == [("1", "3"), ("2", "3")]


def test_deep_chain_does_not_hit_the_recursion_limit():
    depth = 3000
    raw = record({str(i): [str(i + 1)] for i in range(depth)})
    (path,) = paths_of(raw)
    assert len(path.steps) == depth


def test_path_return_is_the_sum_of_step_scores():
    raw = record({"0": ["1", "2"], "1": ["3", "4"]}, scores={"1": 0.5, "3": -0.25, "4": 0.75, "2": 0.9})
    totals = {p.node_ids: p.total for p in paths_of(raw)}
    assert totals == {("1", "3"): pytest.approx(0.25), ("1", "4"): pytest.approx(1.25), ("2",): pytest.approx(0.9)}
    assert path_return([0.1, 0.2, -0.3]) == pytest.approx(0.0)
    assert path_return([]) == 0.0


def test_top_k_orders_by_return_and_breaks_ties_by_depth_first_order():
    raw = record({"0": ["1", "2", "3"], "1": ["4"]}, scores={"1": 0.2, "4": 0.3, "2": 0.5, "3": 0.9})
    paths = paths_of(raw)  # returns: (1,4)=0.5, (2)=0.5, (3)=0.9
    assert [p.node_ids for p in top_k_paths(paths, 1)] == [("3",)]
    assert [p.node_ids for p in top_k_paths(paths, 2)] == [("3",), ("1", "4")]
    assert [p.node_ids for p in top_k_paths(paths, 10)] == [("3",), ("1", "4"), ("2",)]
    with pytest.raises(ValueError, match="top-k"):
        top_k_paths(paths, 0)


def test_longer_paths_win_when_all_scores_are_positive():
    # R(tau) is a sum (Appendix E), not a mean: this is the paper's definition, kept as is.
    raw = record({"0": ["1", "2"], "1": ["3"]}, scores={"1": 0.4, "3": 0.4, "2": 0.7})
    assert top_k_paths(paths_of(raw), 1)[0].node_ids == ("1", "3")
