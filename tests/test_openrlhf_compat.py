"""What cdra-plugin relies on in OpenRLHF, in one test: after a host upgrade, this is the test that says what moved.

The plugin uses the host through a narrow surface (``cdra_plugin/openrlhf/``): the ``train_ppo_ray`` parser it
rewrites, the trainer classes ``train()`` looks up at call time, the experience maker whose state it copies and whose
one method it overrides, the ``Experience`` fields it reads and writes, three helpers, and the rollout actor and
single-turn executor the streaming executor (``--cdpa.stream_scoring``) builds on. Each check below names the
place in the host and what the plugin does with it; all differences are reported together.
"""

import dataclasses
import importlib.metadata
import inspect
from types import SimpleNamespace

from cdpa_host import host_args


def _missing(monkeypatch, tiny_model_path) -> list[str]:
    """What the plugin relies on and the installed host no longer provides."""
    import openrlhf.cli.train_ppo_ray as cli
    from openrlhf.models.utils import compute_reward
    from openrlhf.trainer.ppo_trainer import BasePPOTrainer, PPOTrainer
    from openrlhf.trainer.ppo_trainer_async import PPOTrainerAsync, TrainingActor
    from openrlhf.trainer.ppo_utils.experience import Experience
    from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker
    from openrlhf.trainer.ppo_utils.kl_controller import FixedKLController
    from openrlhf.trainer.ppo_utils.length_penalty import apply_length_penalties
    from openrlhf.trainer.ray.ppo_actor import ActorPPOTrainer

    from cdra_plugin.openrlhf import HOST_VERSION
    from cdra_plugin.openrlhf.train import ESTIMATOR_OPTION, HOST_MODULE, HOST_STAND_IN

    missing = []

    def need(what: str, ok: bool) -> None:
        if not ok:
            missing.append(what)

    def params(function) -> list[str]:
        return list(inspect.signature(function).parameters)

    need(f"openrlhf=={HOST_VERSION} is installed", importlib.metadata.version("openrlhf") == HOST_VERSION)

    # cdra-train runs HOST_MODULE as __main__ and rewrites its argv; the options it reads or rewrites
    need(f"{HOST_MODULE} is the module cdra-train runs", cli.__name__ == HOST_MODULE)
    argv = ["--actor.model_name_or_path", str(tiny_model_path), ESTIMATOR_OPTION, HOST_STAND_IN]
    argv += ["--rollout.n_samples_per_prompt", "2", "--reward.remote_url", "http://h:1/get_reward"]
    args = host_args(monkeypatch, argv)
    options = ["algo.advantage.estimator", "rollout.n_samples_per_prompt", "reward.remote_url", "reward.clip_range"]
    options += ["train.agent_func_path", "train.async_enable", "algo.kl.init_coef", "data.max_len"]
    for dotted in options:
        node = args
        for part in dotted.split("."):
            node = getattr(node, part, dataclasses.MISSING)
        need(f"the host parser has --{dotted}", node is not dataclasses.MISSING)
    need(
        f"{ESTIMATOR_OPTION} {HOST_STAND_IN} (shown in place of cdpa)", args.algo.advantage.estimator == HOST_STAND_IN
    )
    need("--reward.remote_url becomes a list (the tracer asks each URL)", args.reward.remote_url == argv[-1:])
    need("--reward.clip_range is LOW HIGH, default -10 10", list(args.reward.clip_range) == [-10, 10])

    # train() looks up the trainer classes at call time (cdra-train hands it launchers) and starts them so
    train_src = inspect.getsource(cli.train)
    need("train() imports PPOTrainer at call time", "from openrlhf.trainer.ppo_trainer import PPOTrainer" in train_src)
    need(
        "train() imports PPOTrainerAsync at call time",
        "from openrlhf.trainer.ppo_trainer_async import PPOTrainerAsync as PPOTrainer" in train_src,
    )
    need(
        "train() starts the trainer as PPOTrainer.remote(pretrain, strategy, ...)",
        "PPOTrainer.remote(\n        args.actor.model_name_or_path,\n        strategy," in train_src,
    )
    for name, cls in (("PPOTrainer", PPOTrainer), ("PPOTrainerAsync", PPOTrainerAsync)):
        need(f"{name} is a Ray actor class over a plain class", hasattr(cls, "__ray_actor_class__"))
    for name, cls in (("PPOTrainer", PPOTrainer), ("TrainingActor", TrainingActor)):
        need(f"{name}'s plain class is a BasePPOTrainer", issubclass(cls.__ray_actor_class__, BasePPOTrainer))
    need(
        "PPOTrainerAsync.__init__ creates self.trainer_actor = TrainingActor.remote(...)",
        "self.trainer_actor = TrainingActor.remote(" in inspect.getsource(PPOTrainerAsync.__ray_actor_class__),
    )
    need(
        "BasePPOTrainer.__init__ sets self.experience_maker = RemoteExperienceMaker(...)",
        "self.experience_maker = RemoteExperienceMaker(" in inspect.getsource(BasePPOTrainer.__init__),
    )

    # RemoteExperienceMaker: its state is copied by CDPAExperienceMaker.from_host; one method is overridden
    maker = RemoteExperienceMaker(None, None, None, None, FixedKLController(0.0), SimpleNamespace(args=args), None)
    for attribute in ("strategy", "args", "advantage_estimator", "tokenizer", "kl_ctl"):
        need(f"RemoteExperienceMaker sets self.{attribute} (read by CDPAExperienceMaker)", attribute in vars(maker))
    methods = {
        "make_experience_batch": ["self", "rollout_samples"],
        "compute_advantages_and_returns": ["self", "experiences"],
        "split_rollout_samples": ["self", "rollout_samples"],
        "get_cumulative_returns": ["self", "rewards", "action_mask", "gamma"],
    }
    for name, expected in methods.items():
        method = getattr(RemoteExperienceMaker, name, None)
        need(f"RemoteExperienceMaker.{name}({', '.join(expected[1:])})", method and params(method) == expected)
    need(
        "make_experience_batch calls self.compute_advantages_and_returns(experiences) (the override)",
        "self.compute_advantages_and_returns(experiences)" in inspect.getsource(maker.make_experience_batch),
    )
    need(
        "the host clamps rewards with --reward.clip_range in compute_reward (CDPA clamps its advantages alike)",
        "reward_clip_range=args.reward.clip_range" in inspect.getsource(maker.compute_advantages_and_returns),
    )
    need(
        "compute_reward(r, kl_coef, kl, action_mask, reward_clip_range)",
        params(compute_reward) == ["r", "kl_coef", "kl", "action_mask", "reward_clip_range"],
    )
    need("apply_length_penalties(experiences, args)", params(apply_length_penalties) == ["experiences", "args"])

    # Experience: the fields the experience maker and the tracer read and write
    names = {f.name for f in dataclasses.fields(Experience)}
    used = ["sequences", "attention_mask", "action_mask", "rewards", "scores", "kl", "advantages", "returns"]
    for name in used + ["index", "prompts", "labels", "info"]:
        need(f"Experience.{name}", name in names)

    # --cdpa.stream_scoring: the streaming executor (cdra_plugin.openrlhf.stream's own checks, which cdra-train runs at
    # start too), the agent path's effect on --reward.remote_url, and the trainers' vllm_engines the launcher binds
    from cdra_plugin.openrlhf.stream import host_mismatches

    missing += [f"streaming: {what}" for what in host_mismatches()]
    agent_args = host_args(monkeypatch, [*argv[:-2], "--train.agent_func_path", "x.py"])
    need("--train.agent_func_path sets args.reward.remote_url to ['agent']", agent_args.reward.remote_url == ["agent"])
    for name, cls in (("PPOTrainer", PPOTrainer), ("PPOTrainerAsync", PPOTrainerAsync)):
        need(
            f"{name}(pretrain, strategy, actor_model_group, critic_model_group, reward_model_group, "
            "reference_model_group, vllm_engines, ...)",
            params(cls.__ray_actor_class__.__init__)[:8]
            == ["self", "pretrain", "strategy", "actor_model_group", "critic_model_group", "reward_model_group",
                "reference_model_group", "vllm_engines"],
        )  # fmt: skip
    need(
        "train() creates the vLLM engines before it starts the trainer (the launcher binds them first)",
        train_src.index("vllm_engines = create_vllm_engines(") < train_src.index("PPOTrainer.remote("),
    )

    # logging: every info entry reaches the actor's metrics, so wandb/TensorBoard get train/<key> (README)
    need(
        "ActorPPOTrainer.training_step logs every experience.info entry",
        "for k, v in experience.info.items():" in inspect.getsource(ActorPPOTrainer.training_step),
    )
    return missing


def test_openrlhf_surface_the_plugin_relies_on(monkeypatch, tiny_model_path):
    missing = _missing(monkeypatch, tiny_model_path)
    assert not missing, "OpenRLHF no longer provides what cdra_plugin/openrlhf/ relies on:\n- " + "\n- ".join(missing)
