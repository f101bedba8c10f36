"""``cdra demo``: the paper's pipeline in miniature on a laptop (``pipeline``), and the CPU run in which a tiny policy
learns with CDPA through TRL (``learn``). The sample DeepPref trees it reads are package data (``samples/``), so it
runs from an installed wheel. The stand-ins it talks to are ``cdra_plugin.stub``'s.
"""
