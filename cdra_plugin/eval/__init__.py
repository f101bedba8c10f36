"""Evaluation with the paper's LLM-judge protocol (Section 3.1, Appendix B, Eqs. 4-5, Table 1, Fig. 4).

``generate`` samples responses of the model under evaluation (the Fig. 14 prompt, or an in-context baseline),
``judge`` asks a judge LLM the eight checks about each, ``report`` turns the verdicts into Table 1's metrics with
95% intervals over prompts, paired differences, the radar chart, the error chart and the protocol each run was
measured with (``protocol``). ``calls`` is how generate and judge treat their model calls (a probe first, a stop at
a failure no retry fixes). ``cdra eval --help`` for the CLI.

    from cdra_plugin.eval.generate import generate
    from cdra_plugin.eval.judge import judge
    from cdra_plugin.eval.report import report

    generate("out/sample/eval.jsonl", "out/eval/r.jsonl", backend="http://127.0.0.1:8001/v1", model="policy")
    judge("out/eval/r.jsonl", "out/eval/j.jsonl", backend="http://127.0.0.1:8002/v1", model="judge")
    report({"policy": "out/eval/j.jsonl"}, "out/eval/report")

The package imports nothing at load time, so ``cdra --help`` stays instant (the client pulls in ``aiohttp``).
"""
