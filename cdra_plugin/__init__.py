"""cdra-plugin: Critique-Driven Reasoning Alignment (CDRA) for OpenRLHF.

``cdra_plugin.openrlhf`` is the only package that imports OpenRLHF; everything else runs without the host.

What every command shares (``cdra``, ``cdra-train``, ``python -m cdra_plugin.trl.train``, the scripts):
``quiet_third_party`` (called first by each), and for the ``cdra`` commands ``add_run_options`` and ``Failed``;
``cdra_plugin.cli`` is the runner that turns their outcomes into exit statuses.
"""

import logging
import os
import warnings

__version__ = "0.1.0"

# (logger, start of the message): notices the libraries below the host print on import or load, on every machine,
# about their own packaging or a CPU they run on, which no cdra user can act on. Only these messages are dropped:
# everything else those loggers say, and every warning of the plugin's own, still shows.
THIRD_PARTY_NOTICES = (
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward"),  # an optional kernel download
    ("DeepSpeed", "Setting accelerator to CPU"),  # also on a GPU cluster's head node, where the driver runs
    ("transformers.trainer_utils", "The tokenizer has new PAD/BOS/EOS tokens"),  # it aligns them itself
)


class _DropNotice(logging.Filter):
    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


def quiet_third_party() -> None:
    """Silence ``THIRD_PARTY_NOTICES``, transformers' advisories (``TRANSFORMERS_NO_ADVISORY_WARNINGS``, its own
    switch for them) and the FutureWarning of the deprecated ``pynvml`` that OpenRLHF requires (printed by every
    ``import torch``). Call it before those libraries are imported: the filters sit on the loggers by name, which
    the libraries later configure (DeepSpeed sets its logger's level, not its filters). Idempotent."""
    warnings.filterwarnings("ignore", message="The pynvml package is deprecated", category=FutureWarning)
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for name, start in THIRD_PARTY_NOTICES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotice) and f.start == start for f in logger.filters):
            logger.addFilter(_DropNotice(start))


class Failed(Exception):
    """A ``cdra`` command's run failed (a server, a write, a sample that could not be scored), not its input (a
    ``ValueError``): the runner prints ``cdra COMMAND: error: <message>`` and exits with status 1."""


def add_run_options(parser, log_level: str = "warning", progress: bool = True) -> None:
    """``--log-level`` (the runner sets it) and, for a command that shows progress bars, ``--no-progress``."""
    group = parser.add_argument_group("progress and logs")
    if progress:
        group.add_argument("--no-progress", action="store_true", help="hide the progress bar(s)")
    group.add_argument(
        "--log-level",
        default=log_level,
        choices=["debug", "info", "warning", "error"],
        help=f"what to log on stderr (default {log_level}; debug also shows an error's traceback)",
    )
