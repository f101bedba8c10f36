"""The wheel built from this checkout runs `cdra demo` from another folder: everything the demo reads (the sample
DeepPref trees, the tokenizer corpus of the tiny model) is package data, not a file of the checkout.

The wheel is installed without dependencies into a temporary folder placed first on the path (the environment
supplies the dependencies), and the demo runs with that folder as its only source of cdra_plugin."""

import subprocess
import sys
import zipfile

from fresh_checkout import copy_checkout


def test_the_wheel_runs_cdra_demo_outside_the_checkout(tmp_path):
    source, wheels, site, elsewhere = (tmp_path / d for d in ("src", "wheels", "site", "elsewhere"))
    copy_checkout(source)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), "."],
        cwd=source, check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = wheels.glob("cdra_plugin-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "cdra_plugin/demo/samples/cot_Travel_preferences.json" in names
    assert not [n for n in names if n.startswith(("tests/", "scripts/"))]
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True, capture_output=True,
    )  # fmt: skip
    elsewhere.mkdir()
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "HOME": str(tmp_path), "NO_COLOR": "1"}
    where = subprocess.run(
        [sys.executable, "-c", "import cdra_plugin; print(cdra_plugin.__file__)"],
        cwd=elsewhere, env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert where.startswith(str(site)), where
    demo = subprocess.run(
        [sys.executable, "-m", "cdra_plugin.cli", "demo", "--output", str(elsewhere / "out"), "--learn-steps", "0"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert (elsewhere / "out" / "data" / "rl_prompts.jsonl").is_file()
    assert (elsewhere / "out" / "eval" / "report" / "report.json").is_file()
