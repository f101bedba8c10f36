"""Simulated backends for the benchmarks (not shipped with the package): ``vllm`` (a vLLM-like replica with a
batch-size-dependent step time and a prefix cache) and ``jitter`` (the scripted server with random latency)."""
