"""cdra-plugin: Critique-Driven Reasoning Alignment for OpenRLHF.

The core (``steps``, ``advantage``, ``prompts``, ``prm``, ``data``, ``council``, ``eval``) never imports OpenRLHF;
``cdra_plugin.openrlhf`` is the only adapter to the host.
"""

__version__ = "0.1.0"
