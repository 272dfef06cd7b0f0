"""Helpers for tests (and the benchmark) that start the service as a real process on 127.0.0.1."""

from __future__ import annotations

import socket
import subprocess
import time

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_answers(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30.0,
                       poll: float = 0.05) -> None:
    """Return once ``url`` answers 200; fail early if ``proc`` exits, or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            stderr = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered: {stderr}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or still starting
            pass
        time.sleep(poll)
    raise RuntimeError(f"{url} did not answer within {timeout} s")
