"""DeepPref trees and PrefEval pairs -> the rows each training stage reads (paper Sections 2.2-2.4, Appendix E).

Every row is a JSON object whose ``input`` is a list of chat messages, so OpenRLHF applies the model's own chat
template (``--data.apply_chat_template``):

- ``prm_sft``: Pers-GenPRM SFT (Eq. 1-2). For step j of a path: ``input`` = [user: ``prm_prompt(P, q, s^1..s^j)``]
  (Fig. 15), ``output`` = [assistant: ``prm_target(c^j, r^j)``], i.e. "Reasoning: <critique>" then a last line
  "SCORE: <r^j>". With ``--data.output_key output`` OpenRLHF's SFT loss covers only the assistant part.
  ``prm_examples="node"`` (default) writes each distinct prefix (P, q, tau<=j) once, although every path through
  a node repeats it: in a tree with branching b, counting per path would weight the first step b^(T-1) times more
  than the last. ``"path"`` writes one example per (path, step), the literal sum of Eq. 2.
- ``rft``: D_RFT (Appendix E): per scenario the ``top_k`` paths with the highest R(tau) = sum_j r^j;
  ``input`` = [user: ``policy_prompt(P, q)``] (Fig. 14), ``output`` = [assistant: ``render_steps(path)``], plus the
  plain ``preference`` and ``question``, so the rows also serve as few-shot demonstrations
  (``cdra eval generate --mode few-shot --shots rft.jsonl`` shows P, q and the path's text).
- ``rl_prompts`` / ``eval``: ``input`` = [user: ``policy_prompt(P, q)``] and ``label`` = the JSON string
  ``{"preference": P, "question": q, "id": <scenario id>, "topic": <topic>}`` that the PRM gateway parses.
  ``eval`` rows also carry P, q (and PrefEval's explanation, or DeepPref's best path) for the LLM judge.

Extra keys (``id``, ``topic``, ``step``, ``score``, ...) are ignored by OpenRLHF's datasets and kept for analysis.
The generators below yield ``(output name, row)`` pairs and count into a :class:`Stats`; writing is elsewhere.
"""

import json
from collections.abc import Iterator

from cdra_plugin.cdpa.prompts import policy_prompt, prm_prompt, prm_target, render_steps
from cdra_plugin.data.paths import ReasoningPath, enumerate_paths, top_k_paths
from cdra_plugin.data.schema import PreferencePair, Scenario
from cdra_plugin.data.stats import Stats

PRM_SFT, RFT, RL_PROMPTS, EVAL = "prm_sft.jsonl", "rft.jsonl", "rl_prompts.jsonl", "eval.jsonl"
PRM_EXAMPLE_MODES = ("node", "path")


def user(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


def assistant(content: str) -> list[dict]:
    return [{"role": "assistant", "content": content}]


def label_json(preference: str, question: str, scenario_id: str, topic: str) -> str:
    """The RL label the gateway reads: exactly these four keys, in this order."""
    return json.dumps(
        {"preference": preference, "question": question, "id": scenario_id, "topic": topic}, ensure_ascii=False
    )


def prm_rows(scenario: Scenario, paths: list[ReasoningPath], mode: str = "node") -> Iterator[dict]:
    """One Pers-GenPRM example per step (per distinct prefix in ``"node"`` mode)."""
    if mode not in PRM_EXAMPLE_MODES:
        raise ValueError(f"prm example mode must be one of {PRM_EXAMPLE_MODES}, got {mode!r}")
    seen: set[tuple[str, ...]] = set()
    for path in paths:
        thoughts = path.thoughts
        for j, node in enumerate(path.steps, start=1):
            if mode == "node":
                if path.node_ids[:j] in seen:
                    continue
                seen.add(path.node_ids[:j])
            yield {
                "input": user(prm_prompt(scenario.preference, scenario.question, thoughts[:j])),
                "output": assistant(prm_target(node.critique, node.score)),
                "id": scenario.id,
                "topic": scenario.topic,
                "step": j,
                "score": node.score,
            }


def rft_rows(scenario: Scenario, paths: list[ReasoningPath], top_k: int) -> Iterator[dict]:
    """The ``top_k`` highest-return paths as policy SFT examples (Fig. 14 prompt, "Step k: ..." answer)."""
    prompt = user(policy_prompt(scenario.preference, scenario.question))
    for rank, path in enumerate(top_k_paths(paths, top_k), start=1):
        yield {
            "input": prompt,
            "output": assistant(render_steps(path.thoughts)),
            "id": scenario.id,
            "topic": scenario.topic,
            "preference": scenario.preference,
            "question": scenario.question,
            "rank": rank,
            "return": path.total,
        }


def prompt_row(record: Scenario | PreferencePair, datasource: str) -> dict:
    """An RL prompt: the Fig. 14 prompt as chat messages and the JSON label with P and q."""
    return {
        "input": user(policy_prompt(record.preference, record.question)),
        "label": label_json(record.preference, record.question, record.id, record.topic),
        "id": record.id,
        "topic": record.topic,
        "datasource": datasource,
    }


def eval_row(record: Scenario | PreferencePair, datasource: str, **extra) -> dict:
    """An RL prompt row plus the plain P and q (and ``extra``) for evaluation."""
    return {**prompt_row(record, datasource), "preference": record.preference, "question": record.question, **extra}


def deeppref_rows(
    scenarios: list[Scenario], eval_keys: set, stats: Stats, top_k: int = 1, prm_mode: str = "node"
) -> Iterator[tuple[str, dict]]:
    """All output rows of a DeepPref conversion; eval scenarios appear only in ``eval.jsonl``."""
    emitted: set[tuple[str, str]] = set()
    for scenario in scenarios:
        key = (scenario.preference, scenario.question)
        paths = list(enumerate_paths(scenario))
        split = "eval" if key in eval_keys else "train"
        stats.add_scenario(scenario.topic, split, paths, first=key not in emitted)
        if split == "eval":
            if key not in emitted:
                best = top_k_paths(paths, 1)[0]
                yield (
                    EVAL,
                    eval_row(scenario, "deeppref", reference=render_steps(best.thoughts), reference_return=best.total),
                )
        else:
            for row in prm_rows(scenario, paths, prm_mode):
                stats.add_prm_example(scenario.topic, row["score"])
                yield PRM_SFT, row
            for row in rft_rows(scenario, paths, top_k):
                stats.add_rft_example(scenario.topic, row["return"])
                yield RFT, row
            if key not in emitted:
                yield RL_PROMPTS, prompt_row(scenario, "deeppref")
        emitted.add(key)


def prefeval_rows(pairs: list[PreferencePair], eval_keys: set, stats: Stats) -> Iterator[tuple[str, dict]]:
    """RL prompts and eval rows from PrefEval pairs; an exact duplicate (P, q) is written once."""
    emitted: set[tuple[str, str]] = set()
    for pair in pairs:
        key = (pair.preference, pair.question)
        split = "eval" if key in eval_keys else "train"
        stats.add_pair(pair.topic, split, first=key not in emitted)
        if key not in emitted:
            if split == "eval":
                yield EVAL, eval_row(pair, "prefeval", explanation=pair.explanation)
            else:
                yield RL_PROMPTS, prompt_row(pair, "prefeval")
        emitted.add(key)
