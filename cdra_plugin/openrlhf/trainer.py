"""CDPA variants of OpenRLHF's trainers: the host's classes with ``CDPAExperienceMaker`` installed.

``BasePPOTrainer.__init__`` builds a ``RemoteExperienceMaker``; these subclasses replace it right after with
``CDPAExperienceMaker.from_host`` (the same state: the host's groups, KL controller, strategy and tokenizer). Sync: a
subclass of the plain class behind ``@ray.remote PPOTrainer``. Async: ``PPOTrainerAsync`` creates its
``TrainingActor`` itself, so the CDPA variant installs the experience maker inside that actor with Ray's
``__ray_call__`` (runs a function on the actor instance). Nothing in OpenRLHF is edited; ``cdra-train``
(``cdra_plugin.openrlhf.train``) hands these classes to the host's ``train()``.
"""

import ray
from openrlhf.trainer.ppo_trainer import PPOTrainer
from openrlhf.trainer.ppo_trainer_async import PPOTrainerAsync

from cdra_plugin.openrlhf.experience_maker import CDPAExperienceMaker
from cdra_plugin.openrlhf.tracer import CritiqueTracer


def install_cdpa_experience_maker(trainer) -> None:
    """Swap ``trainer.experience_maker`` for the CDPA one made from it (tracer per ``trainer.args.cdpa``)."""
    trainer.experience_maker = CDPAExperienceMaker.from_host(
        trainer.experience_maker, tracer=CritiqueTracer.from_args(trainer.args)
    )


def install_in_training_actor(training_actor) -> None:
    """``install_cdpa_experience_maker`` on the instance behind an actor handle (the async trainer's TrainingActor)."""
    ray.get(training_actor.__ray_call__.remote(install_cdpa_experience_maker))


@ray.remote
class CDPAPPOTrainer(PPOTrainer.__ray_actor_class__):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        install_cdpa_experience_maker(self)


@ray.remote
class CDPAPPOTrainerAsync(PPOTrainerAsync.__ray_actor_class__):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        install_in_training_actor(self.trainer_actor)
