"""Clean recovery after a crash: what a killed writer left beside its destination is removed by
the next write of it (a live writer's is not), and MLflow runs a killed process left RUNNING are
marked failed when the pipeline next sets up tracking."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import mlflow
import pytest

from components.config import Params
from components.io import atomic_dir, write_text_atomic
from components.pipeline import tracking
from tests.conftest import REPO

# Starts writing ``target`` (a folder or a file) and blocks before the rename that completes it.
WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from components.io import atomic_dir, write_text_atomic
    target = Path(sys.argv[1])
    if sys.argv[2] == "dir":
        with atomic_dir(target) as tmp:
            (tmp / "part").write_text("half")
            print("writing", flush=True)
            time.sleep(600)
    else:
        import components.io as io
        io.os.replace = lambda *a: (print("writing", flush=True), time.sleep(600))
        write_text_atomic(target, "half")
""")


def _start_writer(target, kind):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), kind], cwd=REPO, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "writing"
    return proc


def _leftovers(target):
    return sorted(p.name for p in target.parent.glob(f".{target.name}.*"))


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_the_next_write_removes_what_a_killed_writer_left(tmp_path, kind):
    target = tmp_path / ("out" if kind == "dir" else "out.json")
    live = _start_writer(target, kind)
    try:
        assert len(_leftovers(target)) == 1
        # A writer still at work keeps its temporary copy.
        write_text_atomic(tmp_path / "other.txt", "x")
        with atomic_dir(tmp_path / "elsewhere"):
            pass
        _write(target, kind)
        assert len(_leftovers(target)) == 1
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait()
    # Killed -9: the copy stays behind until the destination is written again.
    assert len(_leftovers(target)) == 1
    _write(target, kind)
    assert _leftovers(target) == []
    assert (target.read_text() if kind == "file" else (target / "part").read_text()) == "whole"


def _write(target, kind):
    if kind == "file":
        write_text_atomic(target, "whole")
        return
    with atomic_dir(target) as tmp:
        (tmp / "part").write_text("whole")


KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    import mlflow
    from components.pipeline import tracking
    mlflow.set_tracking_uri(sys.argv[1])
    mlflow.set_experiment("subjectflow")
    mlflow.start_run(run_name="killed", tags=tracking.owner_tags())
    print(mlflow.active_run().info.run_id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_runs_a_killed_process_left_running_are_marked_failed(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = subprocess.run([sys.executable, "-c", KILLED_RUN, uri], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    assert out.returncode == -signal.SIGKILL, out.stderr
    killed = out.stdout.split()[-1]
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    exp = mlflow.get_experiment_by_name("subjectflow").experiment_id
    assert client.get_run(killed).info.status == "RUNNING"
    live = client.create_run(exp, run_name="live", tags=tracking.owner_tags()).info.run_id  # this process: alive
    foreign = client.create_run(exp, run_name="no owner").info.run_id  # opened by another tool: not ours to judge
    params = Params.model_validate({"pipeline": {"tracking_uri": uri}})
    t0 = time.time()
    tracking.setup(tmp_path, params)
    assert time.time() - t0 < 30
    assert client.get_run(killed).info.status == "FAILED"
    assert "ended without closing" in client.get_run(killed).data.tags[tracking.ABANDONED_TAG]
    assert client.get_run(live).info.status == "RUNNING" and client.get_run(foreign).info.status == "RUNNING"
