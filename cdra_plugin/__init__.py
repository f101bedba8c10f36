"""cdra-plugin: Critique-Driven Reasoning Alignment (CDRA) for OpenRLHF.

``cdra_plugin.openrlhf`` is the only package that imports OpenRLHF; everything else runs without the host.
"""

__version__ = "0.1.0"
