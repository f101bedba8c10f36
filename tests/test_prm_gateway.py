"""The PRM gateway over HTTP: the real app on a loopback port, the real openai client, the scripted PRM server.

Covers the remote-RM protocol (also through OpenRLHF's own client and Experience construction), every failure
policy, the cache, auth, each bad-input case, /score, /health and /metrics.
"""

import asyncio
import base64
import json
import threading

import httpx
import pytest
import torch
from prm_helpers import LABEL, PROMPT, P, Q, post, reward_body, serving

from cdra_plugin.cdpa.carrier import decode_step_scores
from cdra_plugin.cdpa.prompts import prm_prompt
from cdra_plugin.stub import Fault, ScriptedLLM, prm_step_judge


def test_get_reward_protocol_dense_reward_and_carrier(prm):
    r1 = "Step 1: quiet towns [score=0.2]\nStep 2: shoulder season [score=0.6]\nStep 3: go to Lofoten<|im_end|>"
    r2 = "No markers at all [score=-0.4]"
    with serving([prm.base_url], reward_aggregation="sum") as (url, _):
        out = post(url, "/get_reward", reward_body(r1, r2)).json()
    assert out["rewards"] == pytest.approx([0.2 + 0.6 + 0.5, -0.4])  # the paper's R_dense = sum of step scores
    assert out["scores"] == pytest.approx([(1.3 / 3 + 1) / 2, 0.3])
    logs = out["extra_logs"]
    assert all(isinstance(v, list) and len(v) == 2 for v in logs.values())  # per-sample lists, like serve_rm
    assert logs["prm_num_steps"] == [3.0, 1.0] and logs["prm_failures"] == [0.0, 0.0]
    assert logs["prm_min_step_score"] == pytest.approx([0.2, -0.4])
    steps = decode_step_scores({k: torch.tensor(v) for k, v in logs.items()})
    assert steps.scores.shape == (2, 4) and steps.num_steps.tolist() == [3, 1]
    assert steps.failed.tolist() == [False, False]
    assert steps.scores[0, :3].tolist() == pytest.approx([0.2, 0.6, 0.5]) and steps.scores[0, 3] == 0
    # Step j's prompt is Fig. 15 with steps 1..j (bodies, markers and <|im_end|> removed); all sent, none twice.
    bodies = ["quiet towns [score=0.2]", "shoulder season [score=0.6]", "go to Lofoten"]
    expected = {prm_prompt(P, Q, bodies[: j + 1]) for j in range(3)} | {prm_prompt(P, Q, [r2])}
    sent = [r.prompt for r in prm.requests]
    assert sorted(sent) == sorted(expected)
    assert prm.requests[0].body["temperature"] == 0 and prm.requests[0].body["n"] == 1


def test_mean_aggregation_and_more_steps_than_width_merge_into_last(prm):
    response = "\n".join(f"Step {i}: s{i} [score=0.{i}]" for i in range(1, 7))
    with serving([prm.base_url], reward_aggregation="mean") as (url, _):
        out = post(url, "/get_reward", reward_body(response)).json()
    # width 4: steps 4..6 merge into step 4, judged with its first tag (0.4)
    assert out["extra_logs"]["cdpa_num_steps"] == [4.0]
    assert out["rewards"] == pytest.approx([(0.1 + 0.2 + 0.3 + 0.4) / 4])


def test_openrlhf_client_and_experience_read_the_answer(prm, tiny_tokenizer):
    from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    response = "Step 1: a [score=0.3]\nStep 2: b [score=-0.1]<|im_end|>"
    prompt_ids = tiny_tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    action_ids = tiny_tokenizer(response, add_special_tokens=False)["input_ids"]
    query = tiny_tokenizer.decode(prompt_ids + action_ids, skip_special_tokens=False)  # as the host builds it
    with serving([prm.base_url], reward_aggregation="sum") as (url, _):
        executor = SingleTurnAgentExecutor(remote_rm_url=url + "/get_reward")
        [info] = asyncio.run(executor._fetch_rewards_via_http([query], [PROMPT], [LABEL]))
    assert info["rewards"] == pytest.approx([0.2])
    output = {  # the fields SingleTurnAgentExecutor.execute hands on
        "prompt": PROMPT, "label": LABEL, "observation_tokens": prompt_ids + action_ids,
        "action_ranges": [(len(prompt_ids), len(prompt_ids) + len(action_ids))], "rollout_log_probs": None,
        "truncated": False, "reward": info["rewards"], "scores": info["scores"], "extra_logs": info["extra_logs"],
    }  # fmt: skip
    experience = SamplesGenerator._process_response_into_experience(None, output, max_len=4096)
    assert experience.rewards.reshape(-1).tolist() == pytest.approx([0.2])
    steps = decode_step_scores(experience.info)
    assert steps.num_steps.tolist() == [2] and not steps.failed.any()
    assert steps.scores[0, :2].tolist() == pytest.approx([0.3, -0.1])


def test_transient_faults_are_retried_and_counted(prm):
    with serving([prm.base_url], client={"retries": 3}) as (url, _):
        prm.enqueue(Fault.http(500), Fault.http(429), Fault.hang(3.0))
        out = post(url, "/get_reward", reward_body("Step 1: fine [score=0.7]")).json()
        metrics = httpx.get(url + "/metrics").text
    assert out["rewards"] == pytest.approx([0.7]) and out["extra_logs"]["prm_failures"] == [0.0]
    assert len(prm.requests) == 4
    for outcome in ("server_error", "rate_limited", "timeout", "ok"):
        assert f'outcome="{outcome}"}} 1.0' in metrics
    assert "cdra_prm_retries_total 3.0" in metrics


def test_failure_policy_fail_answers_502_naming_the_sample(prm):
    with serving([prm.base_url], failure_policy="fail") as (url, _):
        bad = post(url, "/get_reward", reward_body("Step 1: ok\nStep 2: broken [http=500]"))
        assert bad.status_code == 502
        detail = bad.json()["detail"]
        assert "sample 0 (id 's1')" in detail and "step 2" in detail and "server_error" in detail
        assert len(prm.requests) == 1 + 3  # step 1 once, step 2 with two retries
        assert post(url, "/get_reward", reward_body("Step 1: fine")).status_code == 200  # still serving


@pytest.mark.parametrize("tag, kind", [("[http=503]", "server_error"), ("[score=none]", "unparsable"),
                                       ("[score=nan]", "unparsable"), ("[hang=3]", "timeout"),
                                       ("[http=400]", "client_error")])  # fmt: skip
def test_failure_policy_drop_marks_the_sample(prm, tag, kind):
    with serving([prm.base_url], failure_policy="drop") as (url, _):
        out = post(url, "/get_reward", reward_body(f"Step 1: a [score=0.4]\nStep 2: b {tag}")).json()
        metrics = httpx.get(url + "/metrics").text
    logs = out["extra_logs"]
    assert out["rewards"] == [0.0] and out["scores"] == [0.5]
    assert logs["cdpa_failed"] == [1.0] and logs["cdpa_num_steps"] == [0.0] and logs["prm_failures"] == [1.0]
    assert logs["prm_num_steps"] == [2.0] and logs["prm_mean_step_score"] == [0.4]
    assert f'cdra_prm_step_failures_total{{kind="{kind}"}} 1.0' in metrics
    assert 'cdra_prm_samples_total{outcome="dropped"} 1.0' in metrics
    step2 = [r for r in prm.requests if "Step 2: b" in r.prompt]
    assert len(step2) == (1 if kind == "client_error" else 3)  # a 4xx is not retried


def test_failure_policy_score_x_and_off_scale_scores_are_failures_not_clipped(prm):
    response = "Step 1: a [score=7]\nStep 2: b [score=nan]\nStep 3: c [score=-3]\nStep 4: d [score=0.9]"
    with serving([prm.base_url], failure_policy="score=-0.5", reward_aggregation="sum") as (url, _):
        out = post(url, "/get_reward", reward_body(response)).json()
    # 7, NaN and -3 are unparsable (never clipped to 1.0 / -1.0): failed steps that get the chosen X.
    assert out["rewards"] == pytest.approx([-0.5 * 3 + 0.9])
    assert out["extra_logs"]["prm_failures"] == [3.0] and out["extra_logs"]["cdpa_failed"] == [0.0]
    assert [out["extra_logs"][f"cdpa_step_0{j}"] for j in range(4)] == [[-0.5], [-0.5], [-0.5], [0.9]]


def test_cache_scores_each_pair_once_and_shares_in_flight(prm):
    body = reward_body("Step 1: a [score=0.1]\nStep 2: b [score=0.2]")
    with serving([prm.base_url], failure_policy="drop") as (url, _):
        first = post(url, "/get_reward", body).json()
        assert post(url, "/get_reward", body).json() == first
        assert len(prm.requests) == 2
        other_label = json.dumps({"preference": "I love crowds.", "question": Q})
        post(url, "/get_reward", reward_body("Step 1: a [score=0.1]\nStep 2: b [score=0.2]", label=other_label))
        assert len(prm.requests) == 4  # P changed: a different pair
        # Concurrent identical requests share one computation.
        prm.latency = 0.3
        same = reward_body("Step 1: slow [score=0.3]")
        try:
            threads = [threading.Thread(target=post, args=(url, "/get_reward", same)) for _ in range(4)]
            [t.start() for t in threads]
            [t.join() for t in threads]
        finally:
            prm.latency = 0.0
        assert len(prm.requests) == 5
        # Failed results are not cached: the next request tries the PRM again.
        failing = reward_body("Step 1: x [http=500]")
        post(url, "/get_reward", failing)
        post(url, "/get_reward", failing)
        assert len(prm.requests) == 5 + 2 * 3
        metrics = httpx.get(url + "/metrics").text
    assert 'cdra_prm_cache_lookups_total{result="hit"} 1.0' in metrics
    assert 'cdra_prm_cache_lookups_total{result="shared"} 3.0' in metrics


def test_auth_bearer_and_basic_and_openrlhf_url_credentials(prm):
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    token = "tok-abc-123"
    body = reward_body("Step 1: a [score=0.2]")
    with serving([prm.base_url], auth_token=token) as (url, _):
        assert post(url, "/get_reward", body).status_code == 401
        assert post(url, "/get_reward", body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(url + "/metrics").status_code == 401
        assert post(url, "/get_reward", body, headers={"Authorization": f"Bearer {token}"}).status_code == 200
        basic = base64.b64encode(f"openrlhf:{token}".encode()).decode()
        assert post(url, "/get_reward", body, headers={"Authorization": f"Basic {basic}"}).status_code == 200
        # OpenRLHF's client sends no headers, but aiohttp turns URL credentials into basic auth.
        executor = SingleTurnAgentExecutor(remote_rm_url=url.replace("://", f"://openrlhf:{token}@") + "/get_reward")
        [info] = asyncio.run(executor._fetch_rewards_via_http(body["query"], body["prompts"], body["labels"]))
    assert info["rewards"] == pytest.approx([0.2])


GOOD = reward_body("Step 1: a")
BAD_INPUTS = [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (json.dumps({"prompts": GOOD["prompts"], "labels": GOOD["labels"]}), 400, "missing field 'query'"),
    (json.dumps({**GOOD, "query": "text"}), 400, "field 'query' must be a list"),
    (json.dumps({**GOOD, "prompts": [3]}), 400, "prompts[0] must be a string"),
    (json.dumps({**GOOD, "labels": GOOD["labels"] * 2}), 400, "'labels' (2) must have the same length"),
    (json.dumps({**GOOD, "labels": ["{oops"]}), 400, "labels[0] is not valid JSON"),
    (json.dumps({**GOOD, "labels": [json.dumps({"question": Q})]}), 400, "labels[0].preference is missing"),
    (json.dumps({**GOOD, "labels": [{"preference": 1, "question": Q}]}), 400, "labels[0].preference must be a string"),
    (json.dumps({**GOOD, "labels": [json.dumps([P, Q])]}), 400, "labels[0] must be a JSON object"),
    (json.dumps({**GOOD, "query": ["something else"]}), 400, "query[0] does not start with prompts[0]"),
    (json.dumps({**GOOD, "query": ["something else"]}), 400, "raise --data.max_len"),  # OpenRLHF 0.11.2's option
    (json.dumps({**GOOD, "pad": "x" * 5000}), 413, "exceeds the limit"),
]


@pytest.mark.parametrize("raw, status, message", BAD_INPUTS, ids=[m for _, _, m in BAD_INPUTS])
def test_bad_input_gets_4xx_naming_the_field(prm, raw, status, message):
    with serving([prm.base_url], max_body_mb=4096 / (1 << 20)) as (url, _):
        content = raw if isinstance(raw, bytes) else raw.encode()
        response = httpx.post(url + "/get_reward", content=content, headers={"content-type": "application/json"})
        assert response.status_code == status
        assert message in response.json()["detail"]
        assert post(url, "/get_reward", GOOD).status_code == 200  # the server keeps serving
    assert len(prm.requests) == 1


def test_oversized_chunked_body_is_refused(prm):
    def chunks():
        for _ in range(10):
            yield b" " * 1024

    with serving([prm.base_url], max_body_mb=4096 / (1 << 20)) as (url, _):
        response = httpx.post(url + "/get_reward", content=chunks())
        assert response.status_code == 413


def test_score_endpoint_gives_the_full_per_step_result(prm):
    response = "Sure.\nStep 1: quiet [score=0.2]\nStep 2: broken [score=none]"
    with serving([prm.base_url], failure_policy="score=0", reward_aggregation="weighted_mean") as (url, _):
        out = post(url, "/score", {"samples": [{"preference": P, "question": Q, "response": response}]}).json()
        via_host_form = post(url, "/score", reward_body("Step 1: a")).json()
        bad = post(url, "/score", {"samples": [{"preference": P, "question": Q}]})
    [result] = out["results"]
    assert result["num_steps"] == 2 and result["outcome"] == "fallback" and result["failures"] == 1
    s1, s2 = result["steps"]
    n1, n2 = (sum(c.isalnum() for c in s["text"]) for s in (s1, s2))  # letters and digits weigh the steps
    assert (n1, n2) == (21, 15) and result["reward"] == pytest.approx(0.2 * n1 / (n1 + n2))
    assert response[s1["start"] : s1["end"]] == "Sure.\nStep 1: quiet [score=0.2]\n"
    assert s1["text"] == "Sure.\nStep 1: quiet [score=0.2]" and s1["sample_scores"] == [0.2]
    assert "SCORE: 0.2" in s1["critiques"][0] and s1["latency_s"] > 0 and s1["attempts"] == 1
    assert s2["score"] is None and s2["failure"] == "unparsable" and s2["attempts"] == 3
    assert via_host_form["results"][0]["outcome"] == "ok"
    assert bad.status_code == 400 and "samples[0].response is missing" in bad.json()["detail"]


def test_k_sampled_critiques_are_aggregated(prm):
    with serving([prm.base_url], k=3, k_aggregation="median", client={"temperature": 0.8}) as (url, _):
        prm.enqueue(["SCORE: 0.1", "SCORE: 0.9", "no score"], ["SCORE: 0.1", "SCORE: 0.3", "SCORE: 0.8"])
        out = post(url, "/score", {"samples": [{"preference": P, "question": Q, "response": "only step"}]}).json()
        out2 = post(url, "/score", {"samples": [{"preference": P, "question": Q, "response": "other"}]}).json()
    step = out["results"][0]["steps"][0]
    assert step["sample_scores"] == [0.1, 0.9, None] and step["score"] == pytest.approx(0.5)
    assert out2["results"][0]["steps"][0]["score"] == pytest.approx(0.3)
    assert prm.requests[0].body["n"] == 3 and prm.requests[0].body["temperature"] == 0.8


def test_health_and_load_balancing_over_two_backends():
    with ScriptedLLM(prm_step_judge()) as a, ScriptedLLM(prm_step_judge()) as b:
        with serving([a.base_url, b.url]) as (url, _):  # the second without /v1: it is added
            health = httpx.get(url + "/health")
            assert health.status_code == 200 and health.json()["status"] == "ok"
            for r in range(20):  # one response at a time, as OpenRLHF sends them: no replica is ever overloaded
                response = "\n".join(f"Step {i}: r{r} s{i}" for i in range(1, 5))
                assert post(url, "/get_reward", reward_body(response)).status_code == 200
            # prefix-cache affinity: the 4 steps of a response (one prompt prefix) go to one replica; responses
            # spread over both (all 20 on one has odds of 2^-19)
            where = {r: {x for x, llm in (("a", a), ("b", b)) for q in llm.requests if f"r{r} s1" in q.prompt}
                     for r in range(20)}  # fmt: skip
            assert all(len(w) == 1 for w in where.values()) and {"a", "b"} == set().union(*where.values())
            assert len(a.requests) + len(b.requests) == 80 and len(a.requests) % 4 == 0
            b.healthy = False
            health = httpx.get(url + "/health").json()
            assert health["status"] == "degraded" and "503" in health["backends"][1]["error"]
            b.stop()  # connection errors on b: retried on a
            out = post(url, "/get_reward", reward_body("Step 1: x [score=0.9]\nStep 2: y [score=0.1]")).json()
            assert out["rewards"] == pytest.approx([0.1])  # the default reward: the lowest step score
            a.healthy = False
            assert httpx.get(url + "/health").status_code == 503
    with ScriptedLLM(model="another-model") as c, serving([c.base_url]) as (url, _):
        health = httpx.get(url + "/health")
        assert health.status_code == 503 and "'scripted-prm' is not served" in health.json()["backends"][0]["error"]


def test_score_cache_only_never_scores_and_health_reports_the_policy(prm):
    response = "Step 1: a [score=0.3]\nStep 2: b"
    with serving([prm.base_url], failure_policy="drop") as (url, _):
        body = {**reward_body(response), "cache_only": True}
        assert post(url, "/score", body).json() == {"results": [{"outcome": "not_cached"}]}
        assert prm.requests == []
        post(url, "/get_reward", reward_body(response))
        calls = len(prm.requests)
        cached = post(url, "/score", body).json()["results"][0]
        assert [s["score"] for s in cached["steps"]] == pytest.approx([0.3, 0.5]) and len(prm.requests) == calls
        bad = post(url, "/score", {**body, "cache_only": "yes"})
        assert bad.status_code == 400 and "cache_only" in bad.text
        health = httpx.get(url + "/health", timeout=10).json()
        assert health["failure_policy"] == "drop" and health["max_steps"] == 4


def test_a_dead_backend_leaves_rotation_and_metrics_and_health_say_so(unused_port):
    dead = f"http://127.0.0.1:{unused_port}/v1"
    with ScriptedLLM(prm_step_judge()) as alive, serving([alive.base_url, dead], client={"retries": 3}) as (url, _):
        responses = ["\n".join(f"Step {i}: r{r} s{i}" for i in range(1, 4)) for r in range(12)]
        out = post(url, "/get_reward", reward_body(*responses))
        assert out.status_code == 200 and out.json()["rewards"] == pytest.approx([0.5] * 12)  # all served by `alive`
        metrics = httpx.get(url + "/metrics").text
        assert f'cdra_prm_backend_open{{backend="{dead}"}} 1.0' in metrics
        assert f'cdra_prm_backend_open{{backend="{alive.base_url}"}} 0.0' in metrics
        states = {b["backend"]: b["state"] for b in httpx.get(url + "/health").json()["backends"]}
        assert states == {alive.base_url: "closed", dead: "open"}
