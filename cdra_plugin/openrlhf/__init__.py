"""The only part of cdra-plugin that knows OpenRLHF (paper Section 2.4 on the host's machinery):

- ``train``             ``cdra-train``: the host's ``train_ppo_ray`` plus the ``cdpa`` estimator (its ``--cdpa.*``
                        options are ``cdra_plugin.cdpa.config.CDPAConfig``'s)
- ``experience_maker``  ``CDPAExperienceMaker``: the host's ``RemoteExperienceMaker`` with Eq. 3's advantages
- ``trainer``           the host's sync and async trainers with that experience maker installed
- ``tracer``            critique traces of sampled responses (format: ``cdra_plugin.traces``)

Written against ``openrlhf==0.11.2``; ``require_host_version`` makes any other version fail loudly instead of
silently training with internals that moved, and ``tests/test_openrlhf_compat.py`` pins what the plugin uses.
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
