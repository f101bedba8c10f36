"""What machine a benchmark ran on, as the benchmark itself reads it (so a figure never carries a guessed CPU name):
the CPU model name of /proc/cpuinfo (what `lscpu` prints), the cores this process may use, the load average."""

import os
import platform
from pathlib import Path


def describe() -> str:
    """e.g. "2 cores of AMD EPYC, load average 0.8"."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "an unknown CPU"
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return f"{len(os.sched_getaffinity(0))} cores of {cpu}{load}"
