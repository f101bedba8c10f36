"""The manual holds: every walkthrough in the README and in docs/ runs from a fresh clone, as written, and every
link between its pages leads to a file and a heading that exist.

A fenced block opened with ```` ```bash runnable ```` is part of its page's walkthrough: the page's runnable blocks
run in order, as one bash script (variables and background servers carry from one block to the next), in a copy of
the checkout holding only what git would commit, with the environment's `cdra`, `cdra-train` and `python` first on
PATH. Ports are the environment variables the blocks name (`PRM_PORT`, ...), set to free ones; every process the
script started, servers included, is stopped when it ends. A failing command fails the test with the script's
output. Blocks without the marker (GPU commands, real model servers) are shown to readers and never run. The
README's quick start runs twice in the same clone: a reader who tries it again must not be stopped by the first run.
"""

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from fresh_checkout import ROOT, copy_checkout

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```bash runnable[^\n]*\n(.*?)^```", re.S | re.M)
PORT_VARIABLES = ("PRM_PORT", "GATEWAY_PORT", "COUNCIL_PORT", "POLICY_PORT", "JUDGE_PORT")


LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def runnable(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text(encoding="utf-8"))


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def test_the_readme_and_docs_have_walkthroughs_to_run():
    assert runnable(ROOT / "README.md"), "the README's quick start must be marked ```bash runnable"
    assert sum(len(runnable(p)) for p in PAGES) >= 6


@pytest.mark.parametrize("page", [p for p in PAGES if runnable(p)], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_walkthrough_runs_from_a_fresh_clone(page, tmp_path):
    clone = copy_checkout(tmp_path / "clone")
    walkthrough = "\n".join(runnable(page))
    script = "set -euo pipefail\n" + walkthrough + ("\n" + walkthrough if page.name == "README.md" else "")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "CDRA_VENV": sys.prefix,
        "PYTHONPATH": str(clone),
        "NO_COLOR": "1",
        **dict(zip(PORT_VARIABLES, map(str, _free_ports(len(PORT_VARIABLES))), strict=True)),
    }
    shell = subprocess.Popen(
        ["bash", "-c", script], cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = shell.communicate(timeout=420)
    finally:  # the walkthrough's servers, wherever it stopped
        try:
            os.killpg(shell.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    assert shell.returncode == 0, f"{page.name}: exit {shell.returncode}\n{output[-6000:]}"


def anchors(page: Path) -> set[str]:
    """GitHub's ids for the page's headings: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", page.read_text(encoding="utf-8")), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_lead_to_files_and_headings_that_exist(page):
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no file {linked.relative_to(ROOT)}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)
