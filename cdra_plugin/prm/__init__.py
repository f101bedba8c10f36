"""Pers-GenPRM as a service (paper Sec. 2.3): step-wise critiques and scores from an OpenAI-compatible server.

- ``scoring``: a response's steps -> Fig. 15 prompts -> k critiques -> step scores (through ``cdra_plugin.llm``);
- ``reward``: step scores -> the scalar reward (``--reward-aggregation``);
- ``policy``: the explicit failure policy (drop / fail / score=X);
- ``cache``: content-hash LRU bounded in bytes, with shared in-flight computations;
- ``step_cache``: single steps' results by (P, q, steps 1..j), so early-scored steps are not scored again;
- ``protocol``: OpenRLHF's remote RM request/response, with the per-step carrier of ``cdra_plugin.cdpa.carrier``;
- ``gateway``: all of the above behind one object, no HTTP; ``limits``: every limit and deadline, with defaults;
- ``server``: the FastAPI app (/get_reward, /score, /health, /metrics) and its uvicorn settings; ``metrics``: its
  Prometheus metrics;
- ``offline``: resumable JSONL scoring through the gateway; ``cli``: ``cdra prm serve`` and ``cdra prm score``.

The package does not import OpenRLHF.
"""
