"""Pers-GenPRM as a service (paper Sec. 2.3): step-wise critiques and scores from an OpenAI-compatible server.

- ``client``: async OpenAI client over several backends (load balancing, concurrency, timeouts, retries);
- ``scoring``: a response's steps -> Fig. 15 prompts -> k critiques -> step scores;
- ``policy``: the explicit failure policy (drop / fail / score=X);
- ``cache``: content-hash LRU with shared in-flight computations;
- ``protocol``: OpenRLHF's remote RM request/response, with the per-step carrier of ``cdra_plugin.carrier``;
- ``server``: the FastAPI gateway (/get_reward, /score, /health, /metrics); ``metrics``: its Prometheus metrics;
- ``offline``: resumable JSONL scoring; ``cli``: ``cdra prm serve`` and ``cdra prm score``.

The package does not import OpenRLHF.
"""
