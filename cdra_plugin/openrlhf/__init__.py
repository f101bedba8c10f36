"""The only part of cdra-plugin that imports OpenRLHF: the CDPA experience maker, trainers and `cdra-train`.

Written against ``openrlhf==0.11.2``; ``require_host_version`` makes any other version fail loudly instead of
silently training with internals that moved.
"""

import importlib.metadata

HOST_VERSION = "0.11.2"


def require_host_version() -> None:
    found = importlib.metadata.version("openrlhf")
    if found != HOST_VERSION:
        raise RuntimeError(
            f"cdra-plugin's OpenRLHF adapter was written against openrlhf=={HOST_VERSION} (its train_ppo_ray parser, "
            f"RemoteExperienceMaker and trainer classes); found openrlhf=={found}. Install openrlhf=={HOST_VERSION} "
            "(bash scripts/setup_env.sh does) or a cdra-plugin release made for your OpenRLHF."
        )
