"""The simulated vLLM replicas of scripts/bench_rollout.py against hand-worked timings: decode batching, prefill,
prefix caching, the sequence cap, and the OpenAI endpoints through the real LLMClient."""

import asyncio

import pytest
from sim.vllm import EngineSpec, Replica, SimulatedVLLM, critique_tokens

from cdra_plugin.llm.client import LLMClient
from cdra_plugin.stub import BackgroundServer, approx_tokens

SPEC = EngineSpec(step_s=0.01, step_per_seq_s=0.001, prefill_s_per_token=0.0001, max_seqs=2, block_chars=8)


def drive(spec: EngineSpec, arrivals: list[tuple[float, str, int]]) -> tuple[list[float], Replica]:
    """Submit (virtual time, prompt, tokens) to one replica on a virtual clock; completion times in order."""
    clock, wake = [0.0], [None]

    async def simulate():
        replica = Replica(spec, lambda: clock[0], lambda t: wake.__setitem__(0, t))
        futures, pending = [], sorted(arrivals)
        while pending or wake[0] is not None:
            if pending and (wake[0] is None or pending[0][0] <= wake[0]):
                t, prompt, tokens = pending.pop(0)
                clock[0] = t
                futures.append(replica.submit(prompt, tokens))
            else:
                clock[0] = wake[0]
                replica.tick()
        return [f.result() for f in futures], replica

    return asyncio.run(simulate())


def test_one_request_takes_its_prefill_then_one_step_per_token():
    prompt = "a b c d e f g h i j"  # 10 tokens, nothing cached
    [done], replica = drive(SPEC, [(1.0, prompt, 100)])
    assert done == pytest.approx(1.0 + 10 * 0.0001 + 100 * (0.01 + 0.001))
    assert replica.stats.decode_tokens == 100 and replica.stats.prompt_tokens == 10


def test_sequences_decode_together_and_prefill_pauses_decoding():
    # B arrives at t=0.5 while A decodes alone (step 11 ms); B's 20-token prefill pauses A for 2 ms, then both
    # decode at 12 ms a step until B ends, then A alone again.
    a, b = "x " * 10, "y " * 20
    (done_a, done_b), _ = drive(SPEC, [(0.0, a, 100), (0.5, b, 20)])
    prefill_a = 10 * 0.0001
    tokens_a_by_b = (0.5 - prefill_a) / 0.011  # A's tokens when B arrives
    b_starts = 0.5 + 20 * 0.0001
    assert done_b == pytest.approx(b_starts + 20 * 0.012)
    assert done_a == pytest.approx(done_b + (100 - tokens_a_by_b - 20) * 0.011)


def test_a_repeated_prefix_is_not_prefilled_again():
    shared = "prefix " * 40  # 280 characters: 35 blocks of 8
    (first, second), replica = drive(SPEC, [(0.0, shared + "one", 5), (1.0, shared + "two", 5)])
    assert first == pytest.approx(approx_tokens(shared + "one") * 0.0001 + 5 * 0.011)
    assert second - 1.0 < first  # most of its prompt was cached
    assert replica.stats.cached_tokens == round(280 / len(shared + "two") * approx_tokens(shared + "two"))


def test_at_most_max_seqs_sequences_run_and_the_others_wait():
    (one, two, three), replica = drive(SPEC, [(0.0, "p", 10), (0.0, "q", 10), (0.0, "r", 10)])
    assert replica.stats.max_running == 2
    assert three == pytest.approx(two + 0.0001 + 10 * 0.011)  # started when the first two ended


def test_the_replicas_serve_the_openai_protocol_on_a_compressed_clock():
    sim = SimulatedVLLM(EngineSpec(), replicas=2, time_scale=1000.0, model="sim")
    with BackgroundServer(sim.app()) as server:
        client = LLMClient([f"{server.url}/r0/v1", f"{server.url}/r1/v1"], "sim", max_tokens=250)

        async def go():
            try:
                return await asyncio.gather(*(client.sample(f"judge step {i}") for i in range(6)))
            finally:
                await client.aclose()

        completions = asyncio.run(go())
        stats = __import__("httpx").get(server.url + "/stats").json()
    assert all(c.texts[0].endswith("SCORE: 0.5") for c in completions)
    expected = [min(250, critique_tokens(f"judge step {i}")) for i in range(6)]
    assert [c.usage.completion_tokens for c in completions] == expected
    assert [approx_tokens(c.texts[0]) for c in completions] == expected
    assert sum(r["requests"] for r in stats["replicas"]) == 6 and stats["virtual_s"] > 0
