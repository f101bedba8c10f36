"""cdra-plugin: Critique-Driven Reasoning Alignment (CDRA) for OpenRLHF.

``cdra_plugin.openrlhf`` is the only package that imports OpenRLHF; everything else runs without the host.
"""

import warnings

__version__ = "0.1.0"


def silence_pynvml_notice() -> None:
    """Hide the one warning every ``import torch`` prints here: OpenRLHF requires the deprecated ``pynvml`` package,
    whose import hook warns about the host's packaging, which no cdra user can act on. Other warnings still show."""
    warnings.filterwarnings("ignore", message="The pynvml package is deprecated", category=FutureWarning)
