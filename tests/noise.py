"""What the libraries below the host print on every machine and no cdra user can act on (issue: a quiet CLI): no entry
point may show any of it (tests/test_quiet.py, tests/test_demo.py)."""

THIRD_PARTY_NOISE = (
    "Failed to load CPU gemm_4bit_forward",  # bitsandbytes, loading an optional kernel
    "Setting accelerator to CPU",  # DeepSpeed, on a machine (or a cluster's head node) without a GPU
    "The pynvml package is deprecated",  # the FutureWarning of every `import torch` with OpenRLHF's pynvml
    "[transformers]",  # transformers' own handler: its advisories and notes
)


def noise(text: str) -> list[str]:
    """The lines of ``text`` that are third-party noise."""
    return [line for line in text.splitlines() if any(n in line for n in THIRD_PARTY_NOISE)]
