"""Every `cdra data prepare` output read back by the code that will train on it: OpenRLHF's own loader
(``blending_datasets``), ``SFTDataset`` (train_sft) and ``PromptDataset`` (train_ppo_ray), with the options the README
and recipes pass and the tiny Qwen2-style tokenizer (ChatML template, ``<|im_end|>`` as EOS)."""

import argparse
import json
from pathlib import Path

import pytest

from cdra_plugin.cdpa.prompts import parse_score
from cdra_plugin.data.prepare import PrepareOptions, prepare_deeppref, prepare_prefeval

SAMPLE = Path(__file__).resolve().parents[1] / "cdra_plugin" / "demo" / "samples"


def strategy_for(**options):
    """A real DeepspeedStrategy built as the OpenRLHF CLIs build it (dotted options, hierarchize, get_strategy)."""
    from openrlhf.utils import get_strategy
    from openrlhf.utils.config import hierarchize

    flat = {"ds.zero_stage": 2, "ds.param_dtype": "bf16", "train.seed": 42, "use_ms": False, **options}
    return get_strategy(hierarchize(argparse.Namespace(**flat)))


def load_jsonl(path: Path, strategy):
    from openrlhf.datasets.utils import blending_datasets

    return blending_datasets(str(path), None, strategy, dataset_split="train")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    prepare_deeppref(SAMPLE, root / "deeppref", PrepareOptions(eval_size=2, top_k=2, progress=False))
    src = root / "prefeval_src"
    src.mkdir()
    pairs = [{"preference": f"I avoid {x}.", "question": f"Plan a trip to {x}?", "explanation": "e"} for x in "ABCD"]
    (src / "travel.json").write_text(json.dumps(pairs))
    prepare_prefeval(src, root / "prefeval", PrepareOptions(eval_size=1, progress=False))
    return root


def sft_dataset(path: Path, tokenizer):
    from openrlhf.datasets import SFTDataset

    strategy = strategy_for(
        **{
            "data.input_key": "input",
            "data.output_key": "output",
            "data.apply_chat_template": True,
            "data.tokenizer_chat_template": None,
        }
    )
    data = load_jsonl(path, strategy)
    # As train_sft builds it (its default input_template is ignored under --data.apply_chat_template).
    dataset = SFTDataset(data, tokenizer, 8192, strategy, input_template="User: {}\nAssistant: ", num_processors=1)
    return data, dataset


def trained_text(dataset, tokenizer, idx: int) -> tuple[str, str]:
    """(untrained prefix, trained tokens) of one example, as SFTTrainer uses them: log p(ids[i+1]) where mask[i]."""
    input_ids, _, loss_mask = dataset[idx]
    ids, mask = input_ids[0].tolist(), loss_mask[0].tolist()
    trained = [ids[i + 1] for i in range(len(ids) - 1) if mask[i]]
    first = mask.index(1) + 1
    assert all(mask[first - 1 : len(ids) - 1]) and not any(mask[: first - 1]), "loss span must be one contiguous tail"
    return tokenizer.decode(ids[:first]), tokenizer.decode(trained)


@pytest.mark.parametrize("name", ["prm_sft.jsonl", "rft.jsonl"])
def test_sft_outputs_train_on_the_assistant_part_only(prepared, tiny_tokenizer, name):
    data, dataset = sft_dataset(prepared / "deeppref" / name, tiny_tokenizer)
    rows = data.to_list()
    assert len(dataset) == len(rows) > 0  # nothing filtered out (e.g. as too long)
    eos = tiny_tokenizer.eos_token
    for idx, row in enumerate(rows):
        prefix, trained = trained_text(dataset, tiny_tokenizer, idx)
        target = row["output"][0]["content"]
        assert trained == target + eos
        expected_prefix = tiny_tokenizer.apply_chat_template(row["input"], tokenize=False, add_generation_prompt=True)
        assert prefix == expected_prefix and row["input"][0]["content"] in prefix
        if name == "prm_sft.jsonl":
            # Eq. 2: the critique then the score; the trained tokens end in the score line (then EOS).
            assert trained.startswith("Reasoning: ")
            assert trained.removesuffix(eos).splitlines()[-1] == f"SCORE: {row['score']:g}"
            assert parse_score(trained) == pytest.approx(max(-1.0, min(1.0, row["score"])))
        else:
            assert trained.startswith("Step 1: ")


@pytest.mark.parametrize(
    "name", ["deeppref/rl_prompts.jsonl", "deeppref/eval.jsonl", "prefeval/rl_prompts.jsonl", "prefeval/eval.jsonl"]
)
def test_prompt_outputs_load_with_label_for_the_gateway(prepared, tiny_tokenizer, name):
    from openrlhf.datasets import PromptDataset

    strategy = strategy_for(**{"data.input_key": "input", "data.label_key": "label", "data.apply_chat_template": True})
    data = load_jsonl(prepared / name, strategy)
    dataset = PromptDataset(data, tiny_tokenizer, strategy, input_template=None)
    rows = data.to_list()
    assert len(dataset) == len(rows) > 0
    for idx, row in enumerate(rows):
        datasource, prompt, label, images = dataset[idx]
        assert prompt == tiny_tokenizer.apply_chat_template(row["input"], tokenize=False, add_generation_prompt=True)
        assert prompt.startswith("<|im_start|>user\n") and prompt.endswith("<|im_start|>assistant\n")
        parsed = json.loads(label)
        assert list(parsed) == ["preference", "question", "id", "topic"] and parsed["id"] == row["id"]
        assert f"User Preference: {parsed['preference']} Question: {parsed['question']}" in prompt
        assert datasource == name.split("/")[0] and images is None
