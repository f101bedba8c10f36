"""cdra-plugin: Critique-Driven Reasoning Alignment (CDRA) for OpenRLHF 0.11.2."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "cdra_plugin" / "__init__.py").read_text()).group(1)

setup(
    name="cdra-plugin",
    version=VERSION,
    description="Critique-Driven Reasoning Alignment (DeepPref, Pers-GenPRM, CDPA) as a plugin for OpenRLHF",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["cdra_plugin", "cdra_plugin.*"]),
    package_data={"cdra_plugin.stub": ["assets/*"], "cdra_plugin.demo": ["samples/*"]},
    # What the package imports. OpenRLHF brings its own stack (deepspeed, ray, vllm, flash-attn, transformers);
    # scripts/setup_env.sh installs it in the order a CPU-only machine needs.
    install_requires=[
        "openrlhf==0.11.2",
        "torch",
        "numpy",
        "datasets",
        "aiohttp",
        "httpx",
        "fastapi",
        "uvicorn",
        "prometheus_client",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        "test": ["pytest", "pytest-timeout", "hypothesis", "tokenizers", "ruff", "openai>=1.40"],
        # cdra_plugin.trl (GRPOTrainer + the gateway + CDPA); the release verified beside openrlhf 0.11.2's stack
        "trl": ["trl==1.16.0"],
    },
    entry_points={"console_scripts": ["cdra=cdra_plugin.cli:main", "cdra-train=cdra_plugin.train:main"]},
)
