"""Test doubles and fixtures that ship with the package, so quick starts, demos and benchmarks need no ``tests/``.

- ``server``: the scripted OpenAI-compatible server, the one test double of the project. It stands in for the
  remote LLM (the Pers-GenPRM behind vLLM, an LLM judge, the DeepPref generator and evaluator); every client talks
  to it over HTTP through the same code as in production.
- ``tiny_model``: a tiny random Qwen2 checkpoint and byte-level BPE tokenizer, built offline in seconds.

``python -m cdra_plugin.stub serve MODEL --port 8000`` runs the scripted server as a stand-in for ``vllm serve``.
"""

from cdra_plugin.stub.server import (
    BackgroundServer,
    Fault,
    ScriptedLLM,
    ScriptedRequest,
    approx_tokens,
    prm_step_judge,
    score_text,
)

__all__ = [
    "BackgroundServer",
    "Fault",
    "ScriptedLLM",
    "ScriptedRequest",
    "approx_tokens",
    "prm_step_judge",
    "score_text",
]
