"""Stopping servers and workers the commands started, with everything they started."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time


def _descendants(procs: list[subprocess.Popen]) -> list:
    import psutil

    found = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            found += psutil.Process(p.pid).children(recursive=True)
    return found


def _stop_groups(procs: list[subprocess.Popen], grace: float = 15.0) -> None:
    """SIGTERM every server's process group (SIGINT may be ignored in it), then SIGKILL
    whatever of it, or of any process it started (some start theirs in a new session, some only
    while running), is alive after ``grace`` seconds."""
    import psutil

    family = _descendants(procs)
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.time() + grace
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(deadline - time.time(), 0.1))
    family += _descendants(procs)  # started since the first look, by a server still alive
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
    for child in family:
        with contextlib.suppress(psutil.Error):
            child.kill()
    for p in procs:
        p.wait()
