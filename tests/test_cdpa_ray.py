"""The async trainer's install path on a real local Ray: OpenRLHF's own TrainingActor, then ``__ray_call__``.

``PPOTrainerAsync`` builds its ``TrainingActor`` itself, so ``CDPAPPOTrainerAsync`` can only reach the experience
maker inside that actor (``install_in_training_actor``). Here the host's actor class runs in a Ray worker process,
as in training; what ``PPOTrainerAsync.__init__`` does around it is pinned by ``test_openrlhf_compat.py``.
"""

from types import SimpleNamespace

import pytest
from cdpa_host import cdpa_args


@pytest.fixture(scope="module")
def local_ray():
    import ray

    if ray.is_initialized():  # started by someone else: theirs to stop
        yield ray
        return
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_async_trainer_installs_cdpa_in_its_training_actor(local_ray, monkeypatch, tmp_path, tiny_model_path):
    from openrlhf.trainer.ppo_trainer_async import TrainingActor

    from cdra_plugin.openrlhf.trainer import install_in_training_actor

    def describe(trainer) -> dict:  # runs inside the actor (a local function: pickled by value for the worker)
        maker = trainer.experience_maker
        tracer = getattr(maker, "tracer", None)  # the host's own experience maker has none
        return {
            "class": type(maker).__qualname__,
            "shares_kl_controller": maker.kl_ctl is trainer.kl_ctl,
            "shares_tokenizer": maker.tokenizer is trainer.tokenizer,
            "estimator": maker.advantage_estimator,
            "cdpa": maker.args.cdpa,
            "trace_path": None if tracer is None else str(tracer.path),
        }

    trace = tmp_path / "traces" / "t.jsonl"
    args = cdpa_args(monkeypatch, tiny_model_path, "--cdpa.mode", "process", "--cdpa.trace_path", str(trace))
    actor = TrainingActor.remote(
        str(tiny_model_path),
        SimpleNamespace(args=args),
        None,
        None,
        None,
        None,
        None,
        vllm_lock=None,
        rollout_queue=None,
        rollout_slots=None,
    )
    before = local_ray.get(actor.__ray_call__.remote(describe))
    assert before["class"] == "RemoteExperienceMaker"
    install_in_training_actor(actor)
    after = local_ray.get(actor.__ray_call__.remote(describe))
    assert after["class"] == "CDPAExperienceMaker" and after["estimator"] == "cdpa"
    assert after["shares_kl_controller"] and after["shares_tokenizer"]
    assert after["cdpa"] == args.cdpa and after["trace_path"] == str(trace)
    assert trace.parent.is_dir()  # the tracer was built in the actor's process (same machine here)


def test_stream_scoring_binds_each_rollout_actor_to_a_gateway(local_ray, monkeypatch, tiny_model_path):
    """``cdra-train --cdpa.stream_scoring``: the launcher binds the executor the host loaded from the agent path in
    each rollout actor (here OpenRLHF's RolloutRayActor minus its vLLM engine, in Ray workers) to one gateway, and
    gives the gateway URLs back to ``args.reward.remote_url`` before the trainer starts."""
    from cdpa_host import host_args
    from openrlhf.trainer.ray.vllm_engine import RolloutRayActor, _load_agent_executor

    from cdra_plugin.openrlhf.stream import AGENT_FILE
    from cdra_plugin.openrlhf.train import CDPATrainerLauncher, gateway_urls, split_argv

    class Rollout(RolloutRayActor.__ray_actor_class__):
        def __init__(self, agent_func_path):  # the host's __init__ without its engine
            self.executor = _load_agent_executor(agent_func_path)

    urls = "http://127.0.0.1:5000/get_reward,http://127.0.0.1:5001/get_reward"
    argv = ["--actor.model_name_or_path", str(tiny_model_path), "--algo.advantage.estimator", "group_norm",
            "--rollout.n_samples_per_prompt", "2", "--rollout.micro_batch_size", "8", "--cdpa.stream_scoring",
            "--reward.remote_url", urls]  # fmt: skip
    args = host_args(monkeypatch, argv)
    config, host_argv, is_cdpa = split_argv(argv)
    engines = [local_ray.remote(num_cpus=0)(Rollout).remote(args.train.agent_func_path) for _ in range(3)]

    class Recorder:
        @staticmethod
        def remote(pretrain, strategy, *a, **kw):
            return strategy

    launcher = CDPATrainerLauncher(Recorder, config, is_cdpa, gateway_urls(host_argv))
    strategy = launcher.remote(str(tiny_model_path), SimpleNamespace(args=args), None, None, None, None, engines)
    assert strategy.args.reward.remote_url == urls.split(",")

    def bound(actor):
        return actor.executor.reward_endpoints, actor.executor.prefix_url

    got = local_ray.get([e.__ray_call__.remote(bound) for e in engines])
    assert [endpoints for endpoints, _ in got] == [[u] for u in urls.split(",") + urls.split(",")[:1]]
    assert got[1][1] == "http://127.0.0.1:5001/score_prefix" and args.train.agent_func_path == AGENT_FILE
