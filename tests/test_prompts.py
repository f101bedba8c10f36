"""The paper's prompts (Figs. 14, 15) and the PRM output contract."""

import math

import pytest

from cdra_plugin.prompts import (
    POLICY_TEMPLATE,
    PRM_TEMPLATE,
    fill,
    parse_score,
    policy_prompt,
    prm_prompt,
    prm_target,
    render_steps,
)


def test_policy_prompt_is_figure_14_with_fields_filled():
    text = policy_prompt("I dislike {spicy} food", "Where should I eat? {question}")
    assert text.startswith("You are an intelligent assistant that provides thoughtful, step-by-step responses")
    assert text.endswith("User Preference: I dislike {spicy} food Question: Where should I eat? {question}")
    assert "Step N: [Provide your final, actionable answer that aligns with all identified preferences]" in text
    assert POLICY_TEMPLATE.count("{preference}") == 1


def test_prm_prompt_puts_previous_steps_as_context_and_judges_the_last():
    text = prm_prompt("P", "q", ["first idea", "second idea", "the answer"])
    head, content = text.split("Here is the content to critique:\n")
    assert head.startswith("You are a master evaluator of reasoning")
    assert (
        "4. Provide your step-by-step critique after 'Reasoning:' and a score from -1.0 to 1.0 after 'SCORE:'." in head
    )
    assert content == (
        'User Preference: "P"\nUser Question: "q"\nPrevious Steps:\nStep 1: first idea\nStep 2: second idea\n'
        "New Thought to Evaluate:\nStep 3: the answer"
    )
    assert "Previous Steps:\n(none)\nNew Thought to Evaluate:\nStep 1: only" in prm_prompt("P", "q", ["only"])
    with pytest.raises(ValueError):
        prm_prompt("P", "q", [])
    assert PRM_TEMPLATE.count("{current_step}") == 1


def test_fill_is_one_pass_and_strict():
    assert fill("{a}-{b}", a="{b}", b="x") == "{b}-x"
    with pytest.raises(KeyError, match="qustion"):
        fill("{qustion}", question="q")


def test_target_round_trips_through_parse_score():
    for score in (0.78, -1.0, 0.0, 0.333, 1.0):
        target = prm_target("  Solid inference.  ", score)
        assert target.startswith("Reasoning: Solid inference.\nSCORE: ")
        assert parse_score(target) == pytest.approx(score)
    with pytest.raises(ValueError):
        prm_target("x", math.nan)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Reasoning: fine. SCORE: 0.7", 0.7),
        ("SCORE: 0.2 ... revised. **SCORE:** [0.85]", 0.85),
        ("score = -0.4 because", -0.4),
        ("SCORE: [.5]<|im_end|>", 0.5),
        ("SCORE: 7", 1.0),
        ("SCORE: -3.5e0", -1.0),
        ("SCORE: NaN", None),
        ("no score here", None),
        ("", None),
    ],
)
def test_parse_score(text, expected):
    assert parse_score(text) == expected


def test_render_steps():
    assert render_steps([" a ", "b"]) == "Step 1: a\nStep 2: b"
