"""Things the test run reports at its end (see pytest_terminal_summary in tests/conftest.py)."""

from pathlib import Path

SCREENSHOTS: list[Path] = []  # browser screenshots taken in this run
