"""Helpers for tests (and the benchmark) that start the service as a real process on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

# The README's production command.
GUNICORN = [sys.executable, "-m", "gunicorn", "-c", "python:cds_service.gunicorn_conf", "cds_service.wsgi:app"]


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


class GunicornProcess:
    """The production server (the README's gunicorn command) on a free loopback port, with ``env``."""

    def __init__(self, env: dict[str, str], root: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            GUNICORN, cwd=root,
            env={**os.environ, "CDS_BIND": f"127.0.0.1:{self.port}", **env}, stdout=subprocess.DEVNULL,
            stderr=self.log)
        try:
            wait_until_answers(f"{self.base}/readyz", self.proc)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{self.output()}") from exc

    def workers(self) -> set[int]:
        """The pids of the master's worker processes right now."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return {int(p) for p in children.read_text().split()} if children.exists() else set()

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)
        self.log.close()
