"""DeepPref adapter (paper Section 2.2, Appendix E): DeepPref trees and PrefEval pairs -> the datasets of CDRA.

Modules, one idea each:

- ``schema``   typed records (:class:`Scenario`, :class:`Node`, :class:`PreferencePair`) and their validation
- ``loader``   files, directories and globs -> records, with ``skip_invalid``
- ``paths``    root-to-leaf paths tau_i and R(tau) = sum_j r^j, top-k selection for D_RFT
- ``split``    the held-out eval split (by scenario, stratified by topic, seeded)
- ``convert``  records -> PRM SFT / RFT / RL prompt / eval rows (Figs. 14-15 prompts from ``cdra_plugin.cdpa.prompts``)
- ``stats``    ``stats.json`` counts and distributions
- ``writer``   all-or-nothing writing of several files
- ``prepare``  the ``cdra data prepare`` pipeline; ``cli`` its command line; ``hf`` a ``datasets.DatasetDict``

Nothing here imports OpenRLHF; the files it writes are read by ``openrlhf.cli.train_sft`` (SFTDataset) and
``openrlhf.cli.train_ppo_ray`` (PromptDataset).
"""
