"""A simulated vLLM policy engine for rollouts: scripted responses streamed as vLLM's own ``RequestOutput`` objects.

OpenRLHF's rollout actor (``RolloutRayActor``) reads ``AsyncLLMEngine.generate``, an async generator of cumulative
``RequestOutput``s, one per decoding step. ``ScriptedEngine`` stands in that place without a GPU: ``script(prompt
token ids)`` says which response to generate and when each of its tokens is out; the engine tokenizes it with a real
tokenizer, appends the EOS token, cuts it at ``sampling_params.max_tokens`` (``finish_reason`` "length", else "stop"),
and yields vLLM's ``RequestOutput``/``CompletionOutput`` token by token (``stride`` tokens at a time: what a consumer
that falls behind gets from vLLM, which merges the outputs it has not read), with the text detokenized as vLLM's
fast incremental detokenizer does it (``tokenizers``' ``DecodeStream`` primed with the prompt, one step per token;
the stop token's text left out) and a log-prob per token when asked. A cancelled ``generate`` stops at once, as vLLM
aborts the request.

    engine = ScriptedEngine(tokenizer, lambda ids: Script("Step 1: ...", token_s=0.001))
    actor = rollout_actor(engine)       # OpenRLHF's RolloutRayActor around it, for executor.execute(llm_engine=...)

Used by ``scripts/bench_rollout.py`` (responses timed by a decoding schedule) and the streaming executor's tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass
class Script:
    """A response to generate: its text, and when its tokens are out, in seconds after ``t0`` (the loop's clock;
    None: the request's start): ``times`` (one per token, EOS included; the last one repeats past the end) or
    ``token_s`` each. ``tokens``: ``detokenized(...)`` of it, when already known (else the engine computes it).
    ``finished`` is set to the loop time the last token was yielded."""

    text: str
    token_s: float = 0.0
    times: Sequence[float] | None = None
    t0: float | None = None
    tokens: tuple[list[int], list[int]] | None = None
    finished: float | None = None

    def at(self, n: int) -> float:
        """When token ``n`` (1-based) is out, after ``t0``."""
        if self.times is None:
            return n * self.token_s
        return self.times[min(n, len(self.times)) - 1]


class ScriptedEngine:
    """Stands for vLLM's ``AsyncLLMEngine`` (module docstring); counts the requests it saw and aborted."""

    def __init__(self, tokenizer, script: Callable[[list[int]], Script], stride: int = 1):
        self.tokenizer = tokenizer
        self.script = script
        self.stride = stride
        self.requests = 0
        self.aborted = 0

    async def generate(self, prompt, sampling_params, request_id: str, **_):
        from vllm.outputs import CompletionOutput, RequestOutput

        prompt_ids = list(prompt["prompt_token_ids"])
        script = self.script(prompt_ids)
        text_ids, ends = script.tokens or detokenized(self.tokenizer, prompt_ids, script.text)
        ids = [*text_ids, self.tokenizer.eos_token_id]
        finish = "stop"
        if sampling_params.max_tokens is not None and len(ids) > sampling_params.max_tokens:
            ids, finish = ids[: sampling_params.max_tokens], "length"
        logprobs = None if sampling_params.logprobs is None else [_logprob(i) for i in ids]
        self.requests += 1
        loop = asyncio.get_running_loop()
        t0 = loop.time() if script.t0 is None else script.t0
        out_ids = []  # one list, grown in place: cumulative outputs without copying (a consumer reads the latest)
        try:
            for n in [*range(self.stride, len(ids), self.stride), len(ids)]:
                await asyncio.sleep(max(0.0, t0 + script.at(n) - loop.time()))
                done = n == len(ids)
                out_ids += ids[len(out_ids) : n]
                text = script.text[: ends[min(n, len(ends)) - 1]] if ends else ""  # the EOS text is left out
                output = CompletionOutput(0, text, out_ids, None, None if logprobs is None else logprobs[:n],
                                          finish_reason=finish if done else None)  # fmt: skip
                if done:
                    script.finished = loop.time()
                yield RequestOutput(request_id, None, prompt_ids, None, [output], finished=done)
        except (asyncio.CancelledError, GeneratorExit):
            self.aborted += 1
            raise


def detokenized(tokenizer, prompt_ids: list[int], text: str) -> tuple[list[int], list[int]]:
    """``text``'s token ids, and how long the text vLLM shows is after each of them (its fast incremental
    detokenizer: a ``DecodeStream`` primed with the prompt; a token that ends inside a character adds nothing yet)."""
    from tokenizers.decoders import DecodeStream

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    stream, shown, ends = DecodeStream(ids=prompt_ids, skip_special_tokens=False), "", []
    for token_id in ids:
        shown += stream.step(tokenizer._tokenizer, token_id) or ""
        ends.append(len(shown))
    if shown != text:
        raise ValueError(f"the tokenizer does not give back {text[:40]!r}... ({shown[:40]!r}...)")
    return ids, ends


def _logprob(token_id: int) -> dict:
    from vllm.logprobs import Logprob

    return {token_id: Logprob(logprob=-0.01 * (token_id % 97), rank=1, decoded_token=None)}


def rollout_actor(engine):
    """OpenRLHF's ``RolloutRayActor`` (its plain class, without Ray or its ``__init__``, which starts vLLM) serving
    ``engine``: what an executor receives as ``llm_engine``, its ``generate`` the host's own."""
    from openrlhf.trainer.ray.vllm_engine import RolloutRayActor

    actor = RolloutRayActor.__ray_actor_class__.__new__(RolloutRayActor.__ray_actor_class__)
    actor.llm = engine
    actor._mm_pad_token_ids = None
    return actor
