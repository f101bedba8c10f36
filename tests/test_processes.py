"""Child-process servers of the demo and the benchmarks: up when healthy, never left running on failure."""

import socket
import subprocess
import sys

import pytest

from cdra_plugin.stub.processes import free_port, start_server, stop_servers


def test_a_server_is_returned_once_healthy_and_stopped_on_request(tmp_path):
    port = free_port()
    argv = [sys.executable, "-m", "cdra_plugin.stub", "serve", "m", "--port", str(port)]
    proc = start_server(argv, f"http://127.0.0.1:{port}/v1/models", log=tmp_path / "s.log")
    assert proc.poll() is None
    stop_servers([proc])
    assert proc.poll() is not None and "serving 'm'" in (tmp_path / "s.log").read_text()


def test_a_server_that_exits_is_reported_with_the_end_of_its_log(tmp_path):
    argv = [sys.executable, "-c", "import sys; print('no such model'); sys.exit(3)"]
    with pytest.raises(RuntimeError, match=r"exited with status 3\); end of .*s.log:\nno such model"):
        start_server(argv, f"http://127.0.0.1:{free_port()}/health", log=tmp_path / "s.log")


def test_a_server_that_never_answers_is_stopped_after_the_timeout():
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    with pytest.raises(RuntimeError, match="no answer in 1 s") as failed:
        start_server(argv, f"http://127.0.0.1:{free_port()}/health", timeout=1.0)
    assert "end of" not in str(failed.value)  # no log asked for


def test_the_scripted_server_says_in_one_line_that_its_port_is_taken():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = [sys.executable, "-m", "cdra_plugin.stub", "serve", "m", "--port", str(port)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"python -m cdra_plugin.stub: error: cannot listen on 127.0.0.1:{port} (Address already in use); "
        "pick another --port"
    ]
