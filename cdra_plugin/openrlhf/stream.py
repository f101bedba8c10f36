"""Streaming step scoring for OpenRLHF: the PRM judges each step while the policy is still writing the next one.

Pers-GenPRM scores step j from (P, q, steps 1..j) alone (paper Sec. 2.3, Eq. 1), so step j can be judged as soon as
step j+1 has begun. OpenRLHF, like the reference code and verl, posts a sample to the reward model only when it has
finished: the critiques of the last samples to finish start after generation ends, and the PRM must be sized for that
burst rather than for its work. ``AgentExecutor`` is the host's single-turn executor (``SingleTurnAgentExecutor``,
subclassed) reading the vLLM engine's stream of partial outputs on its way to the host's code:

- generation, prompt truncation, token ids, log-probs, ``truncated``, ``action_ranges`` and the final ``/get_reward``
  are the host's own code, unchanged: the host's ``RolloutRayActor.generate`` runs on a view of the rollout actor
  whose engine stream is watched. The CDPA experience maker, the carrier and every estimator get what they get
  without streaming;
- each partial output is checked, cheaply (at a line break or early in a line, where a marker can complete a step),
  for a newly completed step (``cdra_plugin.cdpa.steps.completed_steps``, the rules the gateway and the trainer
  segment with). Then the prompt and the response so far, as vLLM has detokenized it (the text the host's final
  query decodes to; nothing is decoded again here), go to the gateway's ``POST /score_prefix`` in a task of its own:
  generation never waits for it, and its answer is not needed;
- the gateway scores those steps into its step cache (``cdra_plugin.prm.step_cache``), so the final ``/get_reward``
  pays only for the steps not yet scored and joins those still in flight. A failed or slow early call costs its PRM
  work and nothing else: the final call scores the step again under the usual failure policy. Early calls still
  running when the reward is in, or when the generation is cancelled, are cancelled: no task outlives its sample.

``cdra-train --cdpa.stream_scoring`` (``cdra_plugin.openrlhf.train``) switches it on: it gives this file to the host as
``--train.agent_func_path`` and, through Ray's ``__ray_call__``, binds each rollout actor's executor to one gateway of
``--reward.remote_url`` (actor i to gateway i mod n, so a sample's early and final calls meet one step cache).
``host_mismatches`` lists what is relied on in the installed OpenRLHF and vLLM; ``cdra-train`` checks it at start.
"""

import asyncio
import inspect
from pathlib import Path

import aiohttp
from openrlhf.trainer.ray.vllm_engine import RolloutRayActor
from openrlhf.utils.agent import SingleTurnAgentExecutor
from openrlhf.utils.logging_utils import init_logger

from cdra_plugin.cdpa.steps import completed_steps

logger = init_logger(__name__)
AGENT_FILE = str(Path(__file__).resolve())  # what --train.agent_func_path names
BUILT_FOR = "openrlhf==0.11.2 with vllm==0.29.0"
MARKER_REACH = 160  # characters into a line within which a step marker and its first content fit
EARLY_TIMEOUT_S = 180.0  # as the host's reward calls; the call is cancelled when its sample is done anyway


class AgentExecutor(SingleTurnAgentExecutor):
    """OpenRLHF's single-turn executor whose completed steps are scored while it generates (module docstring)."""

    def __init__(self, gateway_url: str | None = None):
        super().__init__(gateway_url)  # the host posts the final /get_reward there
        self.prefix_url = None if gateway_url is None else gateway_url.removesuffix("/get_reward") + "/score_prefix"
        self._session: aiohttp.ClientSession | None = None

    async def execute(self, prompt, label, sampling_params, max_length: int, hf_tokenizer, llm_engine, images=None):
        if self.prefix_url is None:
            raise RuntimeError(
                "cdra-plugin's streaming AgentExecutor has no gateway: start training with cdra-train "
                "--cdpa.stream_scoring --reward.remote_url http://HOST:PORT/get_reward, which binds it to one"
            )
        early = _EarlyCalls(self._client(), self.prefix_url, prompt, label)
        try:
            watched = _WatchedActor(llm_engine, early.see)
            return await super().execute(prompt, label, sampling_params, max_length, hf_tokenizer, watched, images)
        finally:
            await early.cancel()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:  # made in the actor's event loop, on first use
            connector = aiohttp.TCPConnector(limit=1024, keepalive_timeout=4)  # the gateway closes idle ones at 5 s
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=EARLY_TIMEOUT_S)
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class _EarlyCalls:
    """One sample's early calls: ``see`` each partial output; a newly completed step posts the response so far."""

    def __init__(self, session: aiohttp.ClientSession, url: str, prompt: str, label):
        self.session, self.url, self.prompt, self.label = session, url, prompt, label
        self.complete = 0  # completed steps posted so far
        self.base = 0  # where the first step not yet complete starts in the output text
        self.seen = 0  # characters of output text seen
        self.tasks: set[asyncio.Task] = set()

    def see(self, output) -> None:
        if output.finished:  # the host's final /get_reward takes it from here
            return
        completion = output.outputs[0]
        text = completion.text
        # A step completes when the next marker's line gets content: at a line break, or early in a line.
        line_ended = text.find("\n", self.seen) >= 0
        self.seen = len(text)
        if not (line_ended or len(text) - text.rfind("\n") <= MARKER_REACH) or not completed_steps(text[self.base :]):
            return
        steps = completed_steps(text)
        if len(steps) <= self.complete:
            return
        self.complete, self.base = len(steps), steps[-1].end
        task = asyncio.get_running_loop().create_task(self._post(self.prompt + text))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _post(self, query: str) -> None:
        body = {"query": [query], "prompts": [self.prompt], "labels": [self.label]}
        try:
            async with self.session.post(self.url, json=body) as response:
                response.raise_for_status()
                await response.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            logger.info(f"[cdra stream] an early step call failed ({exc!r}); the final /get_reward scores its steps")

    async def cancel(self) -> None:
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _WatchedEngine:
    """A vLLM engine whose ``generate`` stream passes each partial output to ``see`` on its way to the caller."""

    def __init__(self, engine, see):
        self.engine, self.see = engine, see

    async def generate(self, *args, **kwargs):
        async for output in self.engine.generate(*args, **kwargs):
            try:
                self.see(output)
            except Exception:  # early scoring is an optimisation: never let it fail a generation
                logger.exception("[cdra stream] watching the stream failed; this sample is scored at its end only")
                self.see = lambda output: None
            yield output


class _WatchedActor(RolloutRayActor.__ray_actor_class__):
    """The rollout actor as the host's own ``generate`` sees it, its engine watched. The host's ``__init__`` (which
    starts an engine) is not run: ``generate`` reads ``llm`` and ``_mm_pad_token_ids`` only (``host_mismatches``)."""

    def __init__(self, actor, see):
        self.llm = _WatchedEngine(actor.llm, see)
        self._mm_pad_token_ids = actor._mm_pad_token_ids


def bind_to_gateway(actor, gateway_urls: list[str], index: int) -> None:
    """Give rollout actor ``index`` (run inside it by Ray's ``__ray_call__``) an executor bound to one gateway."""
    if not hasattr(actor.executor, "prefix_url"):
        raise TypeError(f"the rollout actor's executor is a {type(actor.executor).__qualname__}, not {AGENT_FILE}'s")
    actor.executor = type(actor.executor)(gateway_urls[index % len(gateway_urls)])


def bind_rollout_actors(vllm_engines, gateway_urls: list[str]) -> None:
    """Bind the executor of every rollout actor (OpenRLHF's ``vllm_engines``) to a gateway, before any rollout."""
    import ray

    if not vllm_engines:
        raise RuntimeError("--cdpa.stream_scoring reads vLLM's stream: set --vllm.num_engines >= 1")
    ray.get([engine.__ray_call__.remote(bind_to_gateway, gateway_urls, i) for i, engine in enumerate(vllm_engines)])


def host_mismatches() -> list[str]:
    """What the executor relies on in the installed OpenRLHF and vLLM and does not find there (empty: all there)."""
    from openrlhf.trainer.ray.vllm_engine import _load_agent_executor
    from openrlhf.utils.agent import AgentExecutorBase
    from vllm import AsyncLLMEngine, SamplingParams
    from vllm.sampling_params import RequestOutputKind

    missing = []

    def need(what: str, ok: bool) -> None:
        if not ok:
            missing.append(what)

    need(
        "vLLM's AsyncLLMEngine.generate is a stream (async generator)",
        inspect.isasyncgenfunction(AsyncLLMEngine.generate),
    )
    need(
        "vLLM streams cumulative partial outputs by default",
        SamplingParams().output_kind == RequestOutputKind.CUMULATIVE,
    )
    executor = _load_agent_executor(AGENT_FILE)
    need(
        "--train.agent_func_path's AgentExecutor() is the rollout actors' executor",
        isinstance(executor, AgentExecutorBase),
    )
    need(
        "SingleTurnAgentExecutor(remote_rm_url).execute(prompt, label, sampling_params, max_length, hf_tokenizer, "
        "llm_engine, images)",
        list(inspect.signature(SingleTurnAgentExecutor.__init__).parameters) == ["self", "remote_rm_url"]
        and list(inspect.signature(SingleTurnAgentExecutor.execute).parameters)
        == ["self", "prompt", "label", "sampling_params", "max_length", "hf_tokenizer", "llm_engine", "images"],
    )
    actor = RolloutRayActor.__ray_actor_class__
    need(
        "RolloutRayActor.generate_responses calls self.executor.execute(..., llm_engine=self)",
        "self.executor.execute(" in inspect.getsource(actor.generate_responses)
        and "llm_engine=self" in inspect.getsource(actor.generate_responses),
    )
    need("RolloutRayActor.generate reads its engine's whole stream (self.llm.generate)", _host_generate_streams())
    return missing


def _host_generate_streams() -> bool:
    """The host's ``RolloutRayActor.generate``, run on a watched engine that streams three outputs: all are seen,
    the last is returned (``_WatchedActor`` gives it ``llm`` and ``_mm_pad_token_ids`` only)."""
    from types import SimpleNamespace

    from vllm import SamplingParams

    class Engine:
        async def generate(self, prompt, sampling_params, request_id):
            for n in range(1, 4):
                yield SimpleNamespace(n=n, finished=n == 3, prompt_token_ids=prompt["prompt_token_ids"])

    seen = []
    actor = SimpleNamespace(llm=Engine(), _mm_pad_token_ids=None)
    try:
        final = asyncio.run(_WatchedActor(actor, seen.append).generate([1, 2], SamplingParams(max_tokens=3)))
    except (AttributeError, TypeError):
        return False
    return [o.n for o in seen] == [1, 2, 3] and final is seen[-1] and final.prompt_token_ids == [1, 2]
