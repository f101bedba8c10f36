"""``cdra-train`` and ``python -m cdra_plugin.train``: the command lives in ``cdra_plugin.openrlhf.train``."""

from cdra_plugin import quiet_third_party


def main() -> None:
    quiet_third_party()  # before the import below loads torch, DeepSpeed and bitsandbytes
    from cdra_plugin.openrlhf.train import main as train_main

    train_main()


if __name__ == "__main__":
    main()
