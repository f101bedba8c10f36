"""The one OpenAI-compatible LLM client of the plugin (the PRM behind the gateway, the judge, the builder's models).

- ``client``: ``LLMClient``: concurrency caps, retries with backoff, deadlines, redaction of secrets
- ``dispatch``: its per-backend queues (priority, prefix affinity, circuit breaker)
- ``options``: its command-line options, shared by every command that calls a model
"""
