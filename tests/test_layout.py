"""The per-token layout every host builds (``cdra_plugin.cdpa.layout.token_layout``): against a response-by-response
loop written here, and what takes no part (failed, mismatched, not kept)."""

import pytest
import torch

from cdra_plugin.cdpa.carrier import StepScores
from cdra_plugin.cdpa.layout import token_layout

EOT = "<|im_end|>"
TEXTS = [
    "Step 1: quiet gardens.\nStep 2: a zoo." + EOT,  # scored, kept
    "Step 1: lakes far from town." + EOT,  # the gateway scored two steps: a mismatch
    "Step 1: parks.\nStep 2: trails.\nStep 3: a farm." + EOT,  # the gateway failed on it
    "Step 1: museums.\nStep 2: the old town at night." + EOT,  # scored, but outside the loss (keep False)
]


@pytest.fixture
def batch(tiny_tokenizer):
    ids = [tiny_tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    scores = torch.tensor([[0.9, -0.2, 0.0, 0.0], [0.4, 0.6, 0.0, 0.0], [0.0] * 4, [0.3, 0.7, 0.0, 0.0]])
    steps = StepScores(scores, torch.tensor([2, 2, 0, 2]), torch.tensor([False, False, True, False]))
    return ids, steps


def test_rewards_steps_and_who_takes_part(tiny_tokenizer, batch):
    ids, steps = batch
    layout = token_layout(tiny_tokenizer, ids, steps, keep=torch.tensor([True, True, True, False]))
    width = max(map(len, ids))
    assert layout.rewards.shape == layout.valid.shape == layout.step_ids.shape == (4, width)
    assert layout.rewards.dtype == torch.float32 and layout.step_ids.dtype == torch.long
    assert layout.mismatch.tolist() == [False, True, False, False]
    assert layout.failed.tolist() == [False, True, True, False]  # failed or mismatched; keep does not count
    assert layout.valid.any(1).tolist() == [True, False, False, False]
    for i, row_ids in enumerate(ids):
        text = tiny_tokenizer.decode(row_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        aligned = layout.aligned[i]
        assert aligned.text == text and len(aligned.steps) == [2, 1, 3, 2][i]
        n = len(row_ids)
        for t in range(width):
            step = int(aligned.step_of_token[t]) if t < n else None
            assert int(layout.step_ids[i, t]) == (step or 0)
            expected = float(steps.scores[i, step]) if step is not None else 0.0
            assert float(layout.rewards[i, t]) == pytest.approx(expected)  # r_{i,t} = r_i^{step(t)}, 0 after
            assert bool(layout.valid[i, t]) == (i == 0 and t < n)
    assert layout.step_scores is steps


def test_all_kept_by_default_and_bad_shapes_are_named(tiny_tokenizer, batch):
    ids, steps = batch
    assert token_layout(tiny_tokenizer, ids, steps).valid.any(1).tolist() == [True, False, False, True]
    with pytest.raises(ValueError, match=r"3 responses need 3 rows of step scores and a \(3,\) keep mask; got 4"):
        token_layout(tiny_tokenizer, ids[:3], steps)
    with pytest.raises(ValueError, match=r"got 4 rows and keep \(2,\)"):
        token_layout(tiny_tokenizer, ids, steps, keep=torch.ones(2, dtype=torch.bool))


def test_responses_with_more_steps_than_the_width_merge_into_the_last(tiny_tokenizer):
    text = "\n".join(f"Step {k}: idea {k}." for k in range(1, 6)) + EOT
    ids = [tiny_tokenizer(text, add_special_tokens=False)["input_ids"]]
    steps = StepScores(torch.tensor([[0.1, 0.2, 0.3]]), torch.tensor([3]), torch.tensor([False]))
    layout = token_layout(tiny_tokenizer, ids, steps)  # segmented at the gateway's width, as the gateway did
    assert not layout.mismatch.any() and layout.step_ids.max() == 2
    assert sorted(set(layout.rewards[0].tolist())) == pytest.approx([0.1, 0.2, 0.3])
