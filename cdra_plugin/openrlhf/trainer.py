"""CDPA variants of OpenRLHF's trainers: the host's classes with ``CDPAExperienceMaker`` installed.

``BasePPOTrainer.__init__`` builds a ``RemoteExperienceMaker``; these subclasses replace it right after, keeping the
host's groups, KL controller, strategy and tokenizer. Sync: a subclass of the plain class behind
``@ray.remote PPOTrainer``. Async: ``PPOTrainerAsync`` creates its ``TrainingActor`` itself, so the CDPA variant
installs the experience maker inside that actor with Ray's ``__ray_call__`` (runs a function on the actor instance).
Nothing in OpenRLHF is edited; ``cdra_plugin.train`` hands these classes to the host's ``train()``.
"""

import ray
from openrlhf.trainer.ppo_trainer import PPOTrainer
from openrlhf.trainer.ppo_trainer_async import PPOTrainerAsync

from cdra_plugin.openrlhf.experience_maker import CDPAExperienceMaker
from cdra_plugin.traces import CritiqueTracer


def install_cdpa_experience_maker(trainer) -> None:
    """Swap ``trainer.experience_maker`` for the CDPA one built from the same parts."""
    host = trainer.experience_maker
    trainer.experience_maker = CDPAExperienceMaker(
        host.actor_model_group,
        host.critic_model_group,
        host.reward_model_group,
        host.initial_model_group,
        host.kl_ctl,
        host.strategy,
        host.tokenizer,
        tracer=CritiqueTracer.from_args(trainer.args),
    )


@ray.remote
class CDPAPPOTrainer(PPOTrainer.__ray_actor_class__):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        install_cdpa_experience_maker(self)


@ray.remote
class CDPAPPOTrainerAsync(PPOTrainerAsync.__ray_actor_class__):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        ray.get(self.trainer_actor.__ray_call__.remote(install_cdpa_experience_maker))
