"""DeepPref as a Hugging Face ``datasets.DatasetDict``: the rows ``cdra data prepare`` writes, held in memory.

    from cdra_plugin.data.hf import load_deeppref_dataset
    ds = load_deeppref_dataset("cdra_plugin/demo/samples/", eval_size=2)
    ds["prm_sft"][0]["output"][0]["content"]   # "Reasoning: ...\nSCORE: 0.78"

Splits: ``prm_sft``, ``rft``, ``rl_prompts``, ``eval`` (same rows, same split, same seed semantics as the files;
see :mod:`cdra_plugin.data.convert`). ``datasets`` is imported only when this is called.
"""

from cdra_plugin.data.convert import EVAL, PRM_SFT, RFT, RL_PROMPTS, deeppref_rows
from cdra_plugin.data.loader import load_deeppref
from cdra_plugin.data.split import eval_units, units_of
from cdra_plugin.data.stats import Stats

SPLITS = {PRM_SFT: "prm_sft", RFT: "rft", RL_PROMPTS: "rl_prompts", EVAL: "eval"}


def load_deeppref_dataset(
    spec, eval_size: int = 300, seed: int = 0, top_k: int = 1, prm_examples: str = "node", skip_invalid: bool = False
):
    """A ``DatasetDict`` with the four splits; raises :class:`RecordError` on a bad record unless ``skip_invalid``,
    :class:`InputError` when ``spec`` names no input file."""
    from datasets import Dataset, DatasetDict

    scenarios = load_deeppref(spec, skip_invalid).records
    eval_keys = eval_units(units_of(scenarios), eval_size, seed)
    rows: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for name, row in deeppref_rows(scenarios, eval_keys, Stats(), top_k, prm_examples):
        rows[name].append(row)
    return DatasetDict({split: Dataset.from_list(rows[name]) for name, split in SPLITS.items()})
