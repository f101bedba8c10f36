"""The CDPA core (paper Sec. 2.4, Eq. 3, App. D), host-neutral: from a policy's text or token ids to per-token
advantages. Nothing here imports OpenRLHF or TRL; the gateway uses only the torch-free modules.

- ``steps``: text -> steps (pure ``str``; the gateway, the trainer and the tracer segment alike)
- ``detok``: generated ids -> text and each token's character span
- ``align``: ids -> (text, steps, step of every token), batched
- ``carrier``: step scores from the gateway to the trainer through the host's ``extra_logs`` (``StepScores``)
- ``layout``: ``token_layout``, ids + step scores -> the per-token inputs of ``cdpa_advantages``, for every host
- ``advantage``: ``cdpa_advantages``, Eq. 3, App. D's modes and PURE's min-form, pure torch
- ``aggregation``: the names for a response's step scores -> one number (gateway reward, CDPA outcome reward)
- ``config``: ``CDPAConfig``, every CDPA option of both hosts
- ``prompts``: the paper's policy (Fig. 14) and Pers-GenPRM (Fig. 15) prompts, and the score parse
"""
