"""Child processes for the tests and the bench/ scripts: a free port, a subprocess in its own
process group whose output goes to a log file we can wait on, and polling.

Standard library only (no Django), so bench/common.py can import it before Django is set up.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    predicate: Callable[[], Any], timeout: float = 120.0, every: float = 0.05, what: str = "condition"
) -> Any:
    """Poll until `predicate` returns something truthy, and return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"{what}: not met in {timeout}s")


class ChildProcess:
    """A subprocess (run from the repository root, in its own process group) whose stdout and
    stderr go to `log_dir/<name>.log` (`<name>-2.log`, ... when that is taken), a log we can wait
    on and show on failure. `stop()` ends the whole process group."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path, self.log = _new_log(Path(log_dir), name)
        self.proc = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, *texts: str, timeout: float) -> None:
        """Wait until every one of `texts` is in the output; fail early if the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.output()
            if all(text in out for text in texts):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        code = self.proc.poll()
        ended = f" (it exited with {code})" if code is not None else ""
        shown = ", ".join(repr(text) for text in texts)
        raise AssertionError(f"{self.name} did not print {shown} in {timeout:g}s{ended}:\n{self.output()[-4000:]}")

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM the process group, SIGKILL it after `timeout` seconds; close the log."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def _new_log(log_dir: Path, name: str) -> tuple[Path, Any]:
    """Create (exclusively) the first free `<name>.log`, `<name>-2.log`, ... in `log_dir`."""
    number = 1
    while True:
        path = log_dir / (f"{name}.log" if number == 1 else f"{name}-{number}.log")
        try:
            return path, open(path, "xb")  # noqa: SIM115 - closed in ChildProcess.stop()
        except FileExistsError:
            number += 1
