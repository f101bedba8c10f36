"""The Pers-GenPRM gateway as a TRL reward function (paper Sec. 2.3: R_dense from step scores).

``GatewayReward(url, tokenizer)`` goes in ``GRPOTrainer(reward_funcs=[...])``. Per call it sends the batch's
completions to a running ``cdra prm serve`` in one ``POST /get_reward`` (OpenRLHF's protocol,
``cdra_plugin.prm.protocol``), exactly as OpenRLHF's rollout would: the query is the prompt text plus the completion
decoded from its ids with special tokens kept (the gateway strips the trailing end-of-sequence token), the label is
the dataset's ``label`` column (``{"preference", "question"}`` JSON, as ``cdra data prepare`` writes it). It returns
the gateway's reward: the lowest step score by default (``min``), which no splitting, padding or repeating of steps
can raise, or the paper's R_dense = sum of the step scores under the gateway's ``--reward-aggregation sum``.

Failures keep the gateway's semantics (``--failure-policy``): a sample the gateway dropped (``cdpa_failed = 1``)
gets ``None``, which TRL treats as unscorable (zero advantage, outside the group baseline), never the placeholder
0.0 the protocol carries; under ``fail`` the gateway answers 502 and training stops with its message; ``score=X``
rewards are the gateway's own. A gateway that cannot be reached after ``retries`` raises: no reward is guessed.

The per-step scores of the last call stay in ``last`` (``GatewayBatch``): ``CDPAGRPOTrainer`` turns them into
per-token advantages. ``prm/mean_step_score``, ``prm/num_steps`` and ``prm/failed_frac`` go to TRL's logs.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import httpx
import torch

from cdra_plugin.cdpa.carrier import StepScores, decode_step_scores
from cdra_plugin.llm.options import public_url


class GatewayBatch(NamedTuple):
    """One reward call: the completions' ids and the gateway's step scores for each (``cdra_plugin.cdpa.carrier``)."""

    completion_ids: list[list[int]]
    step_scores: StepScores


class GatewayReward:
    """A TRL reward function scoring completions through ``cdra prm serve`` (module docstring).

    url: the gateway's ``http://HOST:PORT/get_reward`` (``http://user:TOKEN@...`` sends the token as basic auth, as
    OpenRLHF does; errors show the URL without it); tokenizer: the policy's (decodes completion ids and renders
    conversational prompts); label_key: the dataset column with the DeepPref label; auth_token_env: environment
    variable holding the gateway's ``--auth-token-env`` token; timeout: seconds per request (the gateway scores all
    steps of the batch concurrently); retries: further tries when the gateway cannot be reached.
    """

    __name__ = "pers_genprm"  # TRL's name for the reward in its logs

    def __init__(
        self,
        url: str,
        tokenizer,
        *,
        label_key: str = "label",
        auth_token_env: str | None = None,
        timeout: float = 600.0,
        retries: int = 2,
    ):
        if not url.startswith(("http://", "https://")) or not url.rstrip("/").endswith("/get_reward"):
            raise ValueError(f"reward url {url!r} must be the gateway's http://HOST:PORT/get_reward")
        headers = {}
        if auth_token_env:
            token = os.environ.get(auth_token_env)
            if not token:
                raise ValueError(f"auth_token_env: environment variable {auth_token_env} is not set")
            headers["Authorization"] = f"Bearer {token}"
        self.url = url
        self.tokenizer = tokenizer
        self.label_key = label_key
        self.retries = retries
        self._client = httpx.Client(timeout=timeout, headers=headers)
        self.last: GatewayBatch | None = None

    def __call__(self, prompts: Sequence, completions: Sequence, completion_ids: Sequence[Sequence[int]], **kwargs):
        if self.label_key not in kwargs:
            raise ValueError(
                f"the dataset has no {self.label_key!r} column: the gateway needs each prompt's DeepPref label "
                '{"preference": ..., "question": ...} (rl_prompts.jsonl from `cdra data prepare` has it)'
            )
        prompt_texts = [self._prompt_text(p) for p in prompts]
        responses = self.tokenizer.batch_decode([list(ids) for ids in completion_ids], skip_special_tokens=False)
        labels = [label if isinstance(label, str) else json.dumps(label) for label in kwargs[self.label_key]]
        body = {"query": [p + r for p, r in zip(prompt_texts, responses, strict=True)], "prompts": prompt_texts,
                "labels": labels}  # fmt: skip
        answer = self._post(body)
        info = {key: torch.tensor(values, dtype=torch.float64) for key, values in answer["extra_logs"].items()}
        step_scores = decode_step_scores(info)
        self.last = GatewayBatch([list(ids) for ids in completion_ids], step_scores)
        failed = step_scores.failed
        self._log(kwargs.get("log_metric"), info, failed)
        return [None if bad else float(r) for r, bad in zip(answer["rewards"], failed.tolist(), strict=True)]

    def _prompt_text(self, prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        return self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)

    def _post(self, body: dict) -> dict[str, Any]:
        where = public_url(self.url)  # no user info: it may hold the gateway's token
        for attempt in range(self.retries + 1):
            try:
                response = self._client.post(self.url, json=body)
                break
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise RuntimeError(
                        f"POST {where}: {type(exc).__name__}: {exc} after {attempt + 1} tries; is `cdra prm "
                        "serve` running there (GET /health)?"
                    ) from None
                time.sleep(0.5 * 2**attempt)
        if response.status_code != 200:
            detail = response.text[:500]
            raise RuntimeError(f"POST {where}: HTTP {response.status_code}: {detail}")
        return response.json()

    @staticmethod
    def _log(log_metric, info: dict, failed: torch.Tensor) -> None:
        if log_metric is None:
            return
        ok = ~failed
        log_metric("prm/failed_frac", float(failed.double().mean()))
        if ok.any():
            log_metric("prm/mean_step_score", float(info["prm_mean_step_score"][ok].mean()))
            log_metric("prm/num_steps", float(info["prm_num_steps"][ok].mean()))

    def close(self) -> None:
        self._client.close()
