"""Shared fixtures: the real OpenRLHF importable without a GPU, the tiny offline model, the `gpu` marker."""

import importlib.util
import sys
import types

import pytest

# flash_attn/__init__.py imports its CUDA extension; where it was installed as Python files only (no GPU), an
# empty module of that name lets OpenRLHF import. Nothing else of the host is replaced.
if importlib.util.find_spec("flash_attn_2_cuda") is None:
    sys.modules["flash_attn_2_cuda"] = types.ModuleType("flash_attn_2_cuda")

_HERE = __import__("pathlib").Path(__file__).parent
sys.path.insert(0, str(_HERE))  # the tests' own helpers (hostile backends, fixtures)
sys.path.insert(1, str(_HERE.parent / "scripts"))  # the benchmarks' simulated backends (scripts/sim), tested too


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marker `gpu`)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """Path of a tiny random Qwen2 checkpoint with a fast tokenizer, built once per test run."""
    from cdra_plugin.stub.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


@pytest.fixture
def unused_port() -> int:
    """A loopback port nothing listens on (bound once by the OS, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def scripted_prm():
    """One scripted PRM (tags in a step set its answer, 0.5 otherwise) shared by the gateway tests."""
    from cdra_plugin.stub import ScriptedLLM, prm_step_judge

    with ScriptedLLM(prm_step_judge(default=0.5)) as server:
        yield server


@pytest.fixture
def prm(scripted_prm):
    """The shared scripted PRM, its recorded requests and queued replies cleared."""
    scripted_prm.clear()
    return scripted_prm
