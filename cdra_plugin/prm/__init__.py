"""Pers-GenPRM as a service (paper Sec. 2.3): step-wise critiques and scores from an OpenAI-compatible server.

- ``config``: ``GatewayConfig``, every option of ``cdra prm serve|score`` and every limit, checked once;
- ``scoring``: a response's steps -> Fig. 15 prompts -> k critiques -> step scores (through ``cdra_plugin.llm``),
  with the degenerate-step guard (``content``: what counts as a step's content);
- ``reward``: what a scored sample becomes: the failure policy (drop / fail / score=X), the scalar reward
  (``--reward-aggregation``), the logs and the per-step carrier of ``cdra_plugin.cdpa.carrier``;
- ``cache``: content-hash LRU bounded in bytes, with shared in-flight computations;
- ``step_cache``: single steps' results by (P, q, steps 1..j), so early-scored steps are not scored again;
- ``protocol``: OpenRLHF's remote RM request and response JSON, read and written;
- ``gateway``: all of the above behind one object, no HTTP;
- ``server``: the FastAPI app (/get_reward, /score, /score_prefix, /health, /metrics) and its uvicorn settings;
  ``metrics``: its Prometheus metrics;
- ``offline``: resumable JSONL scoring through the gateway; ``cli``: ``cdra prm serve`` and ``cdra prm score``.

The package does not import OpenRLHF.
"""
