"""``cdra-train`` and ``python -m cdra_plugin.train``: the command lives in ``cdra_plugin.openrlhf.train``."""

from cdra_plugin.openrlhf.train import main

if __name__ == "__main__":
    main()
