"""The critique tracer of ``cdra-train``: sampled responses of a CDPA batch -> trace records (``cdra_plugin.traces``).

    cdra-train ... --cdpa.trace_path traces.jsonl --cdpa.trace_sample_rate 0.02
    cdra traces show traces.jsonl

For each sampled response of a batch the CDPA experience maker has just processed, the record holds the prompt id
(the label's ``id``), the step texts (end-of-sequence tokens removed, as the PRM saw them) and the step scores the
trainer used, the mean CDPA advantage of each
step's tokens (after the host's ``--reward.clip_range``, before the KL term), and the critiques. Critiques are not
in the host's ``Experience`` (only scalars survive the reward call), so they come from the gateway: a ``/score``
request with ``cache_only`` (``cdra_plugin.prm.protocol.score_request``) returns the result cached when the reward
was computed, and nothing is scored twice. OpenRLHF spreads reward calls over the ``--reward.remote_url`` list, so
each gateway is asked in turn. Where no gateway has the result any more (or none answers) the record says
``"critiques": null`` and a warning counts them.
"""

import json
import random
from pathlib import Path

import httpx
import torch
from openrlhf.utils.logging_utils import init_logger

from cdra_plugin.cdpa.layout import TokenLayout
from cdra_plugin.cdpa.prompts import strip_end_tokens
from cdra_plugin.prm.protocol import first_critiques, score_request
from cdra_plugin.traces import append_trace

logger = init_logger(__name__)
SCORE_TIMEOUT_S = 10.0


class CritiqueTracer:
    def __init__(self, path: str, sample_rate: float, max_bytes: int, gateway_urls: list[str], seed: int = 0):
        self.path = Path(path)
        self.sample_rate = sample_rate
        self.max_bytes = max_bytes
        self.score_urls = [_score_url(u) for u in gateway_urls if u.startswith(("http://", "https://"))]
        self.rng = random.Random(seed)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_args(cls, args) -> "CritiqueTracer | None":
        """The tracer ``args.cdpa`` asks for (None when tracing is off or the estimator is not cdpa)."""
        config = args.cdpa
        if not config.trace_path or args.algo.advantage.estimator != "cdpa":
            return None
        # the host's list of reward URLs; with --train.agent_func_path it is the string "agent" (no gateway)
        urls = args.reward.remote_url if isinstance(args.reward.remote_url, list) else []
        return cls(config.trace_path, config.trace_sample_rate, config.trace_max_bytes, urls)

    def trace(self, experiences, layout: TokenLayout, advantages: torch.Tensor, tokenizer) -> int:
        """Write the sampled responses of one batch; returns how many were written.

        ``layout``: the experience maker's ``TokenLayout`` of the batch and ``advantages`` its (N, T) advantages,
        both with row = the host's sample ``index`` (steps, step scores and the step of each action token).
        """
        written = no_critiques = 0
        for exp in experiences:
            for i, index in enumerate(exp.index):
                if self.rng.random() >= self.sample_rate:
                    continue
                text, steps, step_of_token = layout.aligned[index]
                bodies = [strip_end_tokens(s.body(text)) for s in steps]  # as the PRM was shown them
                critiques = self._critiques(exp, i, tokenizer)
                if critiques is not None and not _fits(critiques, len(bodies)):  # e.g. the gateway split it otherwise
                    critiques = None
                no_critiques += critiques is None
                failed = bool(layout.failed[index])
                scores = layout.step_scores.scores[index, : len(steps)]
                record = {
                    "prompt_id": _prompt_id(exp.labels[i]),
                    "failed": failed,
                    "steps": bodies,
                    "scores": [None if failed else round(float(x), 4) for x in scores],
                    "mean_advantage": _mean_per_step(advantages[index], step_of_token, len(steps)),
                    "critiques": critiques,
                }
                append_trace(self.path, record, self.max_bytes)
                written += 1
        if no_critiques and self.score_urls:
            logger.warning(f"[cdpa] {no_critiques} of {written} traced responses without critiques (not in any "
                           "gateway's cache any more, or no gateway answered /score)")  # fmt: skip
        return written

    def _critiques(self, exp, i: int, tokenizer) -> list[str | None] | None:
        if not self.score_urls:
            return None
        length = int(exp.attention_mask[i].sum())
        query = tokenizer.decode(exp.sequences[i, :length].tolist(), skip_special_tokens=False)
        body = score_request([query], [exp.prompts[i]], [exp.labels[i]], cache_only=True)
        for url in self.score_urls:
            try:
                response = httpx.post(url, json=body, timeout=SCORE_TIMEOUT_S)
                response.raise_for_status()
                (result,) = response.json()["results"]
                critiques = first_critiques(result)
            except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
                continue  # a gateway that is down or answers something else: ask the next one
            if critiques is not None:
                return critiques
        return None


def _fits(critiques, num_steps: int) -> bool:
    return len(critiques) == num_steps and all(c is None or isinstance(c, str) for c in critiques)


def _score_url(reward_url: str) -> str:
    base = reward_url.removesuffix("/get_reward").rstrip("/")
    return base + "/score"


def _prompt_id(label) -> str | int | None:
    try:
        value = json.loads(label).get("id")
    except (TypeError, ValueError, AttributeError):
        return None
    return value if value is None or isinstance(value, (str, int)) and not isinstance(value, bool) else str(value)


def _mean_per_step(advantage_row: torch.Tensor, step_of_token: torch.Tensor, num_steps: int) -> list[float | None]:
    n = len(step_of_token)
    sums = torch.zeros(num_steps).index_add_(0, step_of_token, advantage_row[:n].float())
    counts = torch.bincount(step_of_token, minlength=num_steps)
    return [round(float(s / c), 4) if c else None for s, c in zip(sums, counts, strict=True)]
