"""Servers as child processes on loopback, for ``cdra demo`` and the benchmarks: start one, wait until it answers.

port = free_port()
proc = start_server([sys.executable, "-m", "cdra_plugin.cli", "prm", "serve", ..., "--port", str(port)],
                    f"http://127.0.0.1:{port}/health", log=Path("gateway.log"))
...
stop_servers([proc])
"""

import subprocess
import time
from pathlib import Path


def free_port() -> int:
    """A loopback port free right now (the OS picks it; a server started next takes it)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    argv: list[str], health_url: str, *, log: Path | None = None, env=None, cwd=None, timeout: float = 120.0
) -> subprocess.Popen:
    """Run ``argv`` (output to ``log``, else discarded) and return once ``GET health_url`` answers 200.

    ``RuntimeError`` when the process exits first or ``timeout`` passes (the process is then stopped), with the end of
    the log when there is one.
    """
    out = open(log, "w", encoding="utf-8") if log else subprocess.DEVNULL  # noqa: SIM115 (the child keeps it)
    try:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    finally:
        if log:
            out.close()
    try:  # whatever stops the wait (it exits, a timeout, Ctrl-C), the process does not outlive it
        _wait_healthy(proc, health_url, timeout)
    except RuntimeError as failed:
        stop_servers([proc])
        tail = "" if log is None else f"; end of {log}:\n" + "\n".join(_tail(log))
        raise RuntimeError(f"{failed}{tail}") from None
    except BaseException:
        stop_servers([proc])
        raise
    return proc


def _wait_healthy(proc: subprocess.Popen, health_url: str, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(health_url, timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    why = f"exited with status {proc.returncode}" if proc.poll() is not None else f"no answer in {timeout:g} s"
    raise RuntimeError(f"{proc.args[0]} ... did not come up at {health_url} ({why})")


def stop_servers(procs: list[subprocess.Popen], grace: float = 10.0) -> None:
    """SIGTERM each, then SIGKILL what is still running after ``grace`` seconds."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(log: Path, lines: int = 5) -> list[str]:
    return log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
