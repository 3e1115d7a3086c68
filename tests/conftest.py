"""Shared fixtures: the embedded model's file and a real llama.cpp server."""

from __future__ import annotations

import os

# The statistics multiply small matrices; on 2 shared cores one BLAS thread is far
# faster than several spinning ones. Set before anything imports NumPy.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

SERVER_START_TIMEOUT_S = 60.0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def smollm_path() -> Path:
    """Path of the embedded SmolLM2 GGUF file, its SHA-256 verified."""
    from llmpo.backends.local import smollm_path as find_smollm

    return find_smollm()


@pytest.fixture(scope="session")
def llama_server(
    smollm_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Start ``llama_cpp.server`` on the embedded model; yield its ``.../v1`` URL."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("llama_server") / "stderr.log"
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(smollm_path),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_ctx", "2048",
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=log,
            env={**os.environ, "OMP_WAIT_POLICY": "passive"},
        )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_until_ready(process, base_url, log_path)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_ready(process: subprocess.Popen, base_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"llama_cpp.server exited with status {process.returncode}:\n"
                f"{_tail(log_path)}"
            )
        try:
            with urllib.request.urlopen(base_url + "/models", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    process.terminate()
    pytest.fail(
        f"llama_cpp.server did not answer {base_url}/models within "
        f"{SERVER_START_TIMEOUT_S:.0f} s:\n{_tail(log_path)}"
    )


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no stderr captured)"
