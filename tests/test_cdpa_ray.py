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
