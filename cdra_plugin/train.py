"""``cdra-train`` and ``python -m cdra_plugin.train``: the command lives in ``cdra_plugin.openrlhf.train``."""

from cdra_plugin import silence_pynvml_notice


def main() -> None:
    silence_pynvml_notice()  # before the import below loads torch
    from cdra_plugin.openrlhf.train import main as train_main

    train_main()


if __name__ == "__main__":
    main()
