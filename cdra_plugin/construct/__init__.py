"""DeepPref construction (paper Section 2.2, Appendix E): the persona council's Tree of Thoughts (``cdra build``).

Modules, one idea each:

- ``prompts``  the five personas and Figs. 11-13 (plus the final-answer prompt), with strict score parsers
- ``tree``     one scenario (P, q) -> a scored, pruned reasoning tree in DeepPref's schema (``Council``)
- ``stats``    nested counters of calls, failures by kind, tokens, nodes generated and pruned
- ``io``       input pairs, the resumable journal, the compiled ``cot_<Topic>_preferences.json`` files
- ``runner``   a whole build: scenarios in parallel, journaled, compiled; ``cli`` its command line

Every model call goes through ``cdra_plugin.llm.LLMClient`` (one for the generator, one for the evaluator).
``cdra data prepare --input OUT`` turns the output into PRM SFT, RFT, RL and eval files.
"""
