"""The council's tree for one scenario (Appendix E): shape (K, b, D), pruning by threshold and top-k, failures by kind,
skipped scenarios. Every call goes through the real LLMClient to the scripted council on a loopback server."""

import asyncio
import json

import pytest

from cdra_plugin.construct.prompts import PERSONAS, Persona, hypothesis_prompt
from cdra_plugin.construct.tree import Council, Pair, Thought, TreeShape, prune_level
from cdra_plugin.llm.client import LLMClient
from cdra_plugin.stub import ScriptedLLM
from cdra_plugin.stub.council import ScriptedCouncil

Q = "Can you recommend some outdoor experiences for us in the countryside?"
P = "I want to avoid any activities that involve animals due to allergies in my family."


@pytest.fixture(scope="module")
def council_server():
    with ScriptedLLM(ScriptedCouncil(), model="council") as server:
        yield server


def build(server, shape=None, preference=P, retries=1, seed=0, timeout=60.0):
    async def go():
        generator = LLMClient(
            [server.base_url], "council", temperature=0.8, retries=retries, backoff=0.0, timeout=timeout
        )
        evaluator = LLMClient([server.base_url], "council", retries=retries, backoff=0.0)
        try:
            pair = Pair("k1", "Travel", preference, Q, {"file": "t.jsonl", "index": 0})
            return await Council(generator, evaluator, shape or TreeShape(), seed=seed).build(pair)
        finally:
            await generator.aclose()
            await evaluator.aclose()

    return asyncio.run(go())


def paths(tree: dict) -> list[list[str]]:
    """Root-to-leaf node-id paths of a thought_tree."""
    out, stack = [], [[c] for c in reversed(tree["0"]["children"])]
    while stack:
        ids = stack.pop()
        children = tree[ids[-1]]["children"]
        out += [ids] if not children else []
        stack += [ids + [c] for c in reversed(children)]
    return out


def test_tree_shape_follows_k_b_d_without_pruning(council_server):
    two = (Persona("The Economist", "Weighs costs."), Persona("The Historian", "Looks for precedent."))
    council_server.clear()
    built = build(council_server, TreeShape(two, branch=3, depth=3, prune_below=None, keep_top=None))
    record, tally = built.record, built.tally
    tree = record["thought_tree"]
    by_depth = {}
    for node_id, node in tree.items():
        if node_id != "0":
            by_depth.setdefault((node["depth"], node["kind"]), []).append(node)
    # K=2 hypotheses, then b=3 children per node for D=3 levels, and one answer per leaf
    assert {k: len(v) for k, v in by_depth.items()} == {
        (1, "hypothesis"): 2, (2, "hypothesis"): 6, (3, "hypothesis"): 18, (4, "answer"): 18
    }  # fmt: skip
    assert all(len(p) == 4 and tree[p[-1]]["kind"] == "answer" for p in paths(tree)) and len(paths(tree)) == 18
    for path in paths(tree):  # a branch keeps its level-1 persona
        assert len({tree[i]["persona"] for i in path}) == 1 and tree[path[0]]["persona"] in {p.name for p in two}
    # calls: K + K + K*b generator requests (n=b from level 2 on), one Fig. 12 per node, one answer + Fig. 13 per leaf
    assert tally["calls"]["thought"]["calls"] == 2 + 2 + 6
    assert tally["calls"]["node_score"]["calls"] == 2 + 6 + 18 + 18
    assert tally["calls"]["answer"]["calls"] == tally["calls"]["path_score"]["calls"] == 18
    follow_ups = [r for r in council_server.requests if "expand upon a given line of thought" in r.prompt]
    assert len(follow_ups) == 8 and {r.n for r in follow_ups} == {3}
    assert len(council_server.requests) == 10 + 44 + 18 + 18
    assert record["pruned_nodes"] == [] and len(record["response_list"]) == 18
    entry = record["response_list"][0]
    assert entry["response"][0].startswith("Step 1: [Economist]") and entry["response"][-1].startswith("Step 4: ")
    assert entry["path"] == paths(tree)[0] and entry["score"] == round(60 + 30 * (0.5 + 0.55 + 0.6) / 3)


def test_every_persona_is_asked_at_level_one_with_its_description(council_server):
    council_server.clear()
    build(council_server)
    firsts = [r.prompt for r in council_server.requests if "generate a single hypothesis" in r.prompt]
    assert sorted(firsts) == sorted(hypothesis_prompt(persona, P, Q) for persona in PERSONAS)


def test_default_tree_looks_like_fig16_and_prunes_by_threshold_and_top_k(council_server):
    built = build(council_server)  # K=5, b=2, D=4, X=0.4, k=2
    tree, pruned = built.record["thought_tree"], built.record["pruned_nodes"]
    level1 = {n["persona"].removeprefix("The "): n for n in pruned if n["depth"] == 1}
    # scripted scores: Psychologist 0.81, Sociologist 0.62, Pragmatist 0.55, Pedagogue 0.47, Contrarian 0.28
    assert level1["Contrarian"]["pruned"] == "below_threshold" and level1["Contrarian"]["score"] == 0.28
    assert level1["Pragmatist"]["pruned"] == level1["Pedagogue"]["pruned"] == "not_top_k"
    assert [tree[c]["persona"] for c in tree["0"]["children"]] == ["The Sociologist", "The Psychologist"]
    assert [len(p) for p in paths(tree)] == [5, 5]  # 4 levels plus the answer, two paths (Fig. 16 has two answers)
    for depth in range(2, 5):  # 2 parents x b=2 children per level, the 2 best kept
        level = [n for n in tree.values() if n.get("depth") == depth] + [n for n in pruned if n["depth"] == depth]
        assert len(level) == 4 and sum(n.get("pruned") == "not_top_k" for n in level) == 2
    assert built.tally["nodes"] == {
        "generated": {"hypothesis": 5 + 3 * 4, "answer": 2},
        "in_tree": {"hypothesis": 8, "answer": 2},
        "pruned": {"below_threshold": 1, "not_top_k": 2 + 3 * 2},
    }
    calls = {stage: c["calls"] for stage, c in built.tally["calls"].items()}
    assert calls == {"thought": 5 + 3 * 2, "node_score": 5 + 3 * 4 + 2, "answer": 2, "path_score": 2}
    assert sum(calls.values()) == 34


def test_threshold_alone_keeps_everything_above_it_and_never_expands_below(council_server):
    council_server.clear()
    built = build(council_server, TreeShape(depth=2, prune_below=0.5, keep_top=None))
    tree = built.record["thought_tree"]
    kept = [tree[c]["persona"] for c in tree["0"]["children"]]
    assert kept == ["The Sociologist", "The Psychologist", "The Pragmatist"]  # 0.62, 0.81, 0.55 >= 0.5
    assert all(n["score"] >= 0.5 for k, n in tree.items() if k != "0" and n["kind"] == "hypothesis")
    assert {n["pruned"] for n in built.record["pruned_nodes"]} == {"below_threshold"}
    deepened = " ".join(r.prompt for r in council_server.requests if "expand upon" in r.prompt)
    assert "[Sociologist]" in deepened and "[Pedagogue]" not in deepened and "[Contrarian]" not in deepened


def _node(score, pruned=None):
    return Thought(None, PERSONAS[0], "hypothesis", f"t{score}", 0, score=score, pruned=pruned)


def test_prune_level_by_hand():
    a, b, c, d, e = _node(0.9), _node(0.3), _node(0.7), _node(0.7), _node(None, "eval_failed")
    assert prune_level([a, b, c, d, e], 0.4, 2) == [a, c]  # ties keep generation order
    assert (b.pruned, d.pruned, e.pruned) == ("below_threshold", "not_top_k", "eval_failed")
    f, g = _node(-0.2), _node(0.1)
    assert prune_level([f, g], None, None) == [g, f] and f.pruned is None


def test_failures_are_counted_by_kind_and_prune_never_score(council_server):
    tags = "[council: node Contrarian=unparsable] [council: hypothesis Pedagogue=http500] [council: path all=flaky]"
    built = build(council_server, TreeShape(prune_below=None), preference=P + " " + tags)
    failures, calls = built.tally["failures"], built.tally["calls"]
    assert failures == {"node_score": {"unparsable": 1}, "thought": {"server_error": 1}}
    assert calls["node_score"]["attempts"] == calls["node_score"]["calls"] + 1  # the Contrarian's retry
    assert calls["path_score"]["attempts"] == 2 * calls["path_score"]["calls"]  # flaky: retried once, then parsed
    contrarian = [n for n in built.record["pruned_nodes"] if n["persona"] == "The Contrarian"]
    assert contrarian == [{"id": contrarian[0]["id"], "parent": "0", "depth": 1, "persona": "The Contrarian",
                           "kind": "hypothesis", "thought": contrarian[0]["thought"], "pruned": "eval_failed",
                           "failure": "unparsable"}]  # fmt: skip
    assert "The Pedagogue" not in json.dumps(built.record)  # its generation failed: no node at all
    assert all(isinstance(n.get("score", 0.5), float) for n in built.record["thought_tree"].values())


def test_a_malformed_fault_tag_is_refused_not_ignored(council_server):
    # a typo in a test's fault tag must not pass for a healthy council: the calls it reaches are HTTP 400
    built = build(council_server, TreeShape(depth=1), preference=P + " [council: node all=htp500]")
    assert built.record is None and built.tally["failures"] == {"thought": {"client_error": 5}}


def test_a_generator_that_hangs_is_a_counted_timeout(council_server):
    built = build(council_server, TreeShape(depth=1), preference=P + " [council: hypothesis Pragmatist=hang]",
                  timeout=0.2)  # fmt: skip
    assert built.tally["failures"] == {"thought": {"timeout": 1}}
    assert built.tally["calls"]["thought"] == {"calls": 5, "attempts": 6}
    assert "The Pragmatist" not in json.dumps(built.record)


def test_out_of_range_scores_are_unparsable_not_clipped(council_server):
    built = build(council_server, TreeShape(depth=1), preference=P + " [council: node Psychologist=out_of_range]")
    assert built.tally["failures"] == {"node_score": {"unparsable": 1}}
    assert all(n["score"] <= 1.0 for k, n in built.record["thought_tree"].items() if k != "0")
    psych = [n for n in built.record["pruned_nodes"] if n["persona"] == "The Psychologist"]
    assert psych[0]["pruned"] == "eval_failed" and "score" not in psych[0]


def test_level_one_failing_entirely_skips_the_scenario(council_server):
    built = build(council_server, preference=P + " [council: node all=unparsable]")
    assert built.record is None and built.skip_reason == "level1_failed"
    assert "unparsable x5" in built.skip_message
    assert built.tally["failures"] == {"node_score": {"unparsable": 5}}
    assert built.tally["nodes"]["pruned"] == {"eval_failed": 5}
    pruned = build(council_server, TreeShape(prune_below=0.9))
    assert pruned.record is None and pruned.skip_reason == "level1_pruned" and "best 0.81" in pruned.skip_message


def test_no_scored_answer_skips_and_client_errors_are_not_retried(council_server):
    built = build(council_server, TreeShape(depth=2), preference=P + " [council: answer all=http400]")
    assert built.record is None and built.skip_reason == "no_answer"
    assert built.tally["failures"] == {"answer": {"client_error": 2}}
    assert built.tally["calls"]["answer"] == {"calls": 2, "attempts": 2}
    assert built.tally["nodes"]["pruned"]["dead_end"] == 4  # both kept paths of two hypotheses


def test_a_level_without_survivors_ends_the_tree_early(council_server):
    built = build(council_server, preference=P + " [council: follow_up all=http400]")
    tree = built.record["thought_tree"]
    assert [len(p) for p in paths(tree)] == [2, 2]  # level-1 hypotheses, then their answers
    assert built.tally["trees"] == {"stopped_early": 1} and built.tally["failures"] == {"thought": {"client_error": 2}}


def test_siblings_with_the_same_text_are_pruned_as_duplicates():
    def script(request):
        if "expand upon" in request.prompt:
            return ["Same deeper need.", "same  deeper need."]
        return ScriptedCouncil()(request)

    with ScriptedLLM(script, model="council") as server:
        built = build(server, TreeShape(depth=2, keep_top=None, prune_below=None))
    duplicates = [n for n in built.record["pruned_nodes"] if n["pruned"] == "duplicate"]
    assert len(duplicates) == 5 and all("score" not in n for n in duplicates)
    assert built.tally["calls"]["node_score"]["calls"] == 5 + 5 + 5  # duplicates are not scored


def test_generator_calls_are_seeded_per_node_and_evaluator_calls_are_greedy(council_server):
    council_server.clear()
    build(council_server, TreeShape(depth=2), seed=7)
    first = [(r.prompt, r.body.get("seed")) for r in council_server.requests if "expand upon" in r.prompt]
    council_server.clear()
    build(council_server, TreeShape(depth=2), seed=7)
    again = [(r.prompt, r.body.get("seed")) for r in council_server.requests if "expand upon" in r.prompt]
    assert sorted(first) == sorted(again) and len({s for _, s in first}) == 2
    judged = [r.body for r in council_server.requests if "master evaluator" in r.prompt]
    assert all(b["temperature"] == 0.0 and "seed" not in b for b in judged)
    council_server.clear()
    build(council_server, TreeShape(depth=2), seed=None)
    assert all("seed" not in r.body for r in council_server.requests)
