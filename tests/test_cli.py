import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from components import lineage
from components.cli import main
from tests.conftest import make_project, tiny_params


@pytest.fixture
def fresh(tmp_path):
    return make_project(tmp_path / "p", tiny_params())


def test_status_says_which_stages_are_stale_and_why(fresh, capsys):
    assert main(["status", "--project", str(fresh)]) == 0
    out = capsys.readouterr().out
    assert all(f"{s}: stale" in out for s in ("synthesize", "validate", "judges", "pretrain", "evaluate"))
    assert "changed outs: data/multi deleted" in out


def test_a_params_typo_fails_with_the_key_named(fresh, capsys):
    (fresh / "params.yaml").write_text((fresh / "params.yaml").read_text().replace("report_rows", "report_row"))
    assert main(["stage", "validate", "--project", str(fresh)]) == 2
    assert "validate.report_row: unknown key" in capsys.readouterr().err


def test_not_a_project_folder(tmp_path):
    with pytest.raises(SystemExit, match="no dvc.yaml"):
        main(["status", "--project", str(tmp_path)])


@pytest.mark.integration
def test_stage_runs_one_stage_through_the_flow(fresh, prefect_harness):
    # No capsys here: Prefect's console log handler keeps the stream it first saw.
    assert main(["stage", "synthesize", "--project", str(fresh), "--no-push"]) == 0
    assert set(lineage.status(fresh)) == {"validate", "judges", "pretrain", "multisubject", "sft", "evaluate", "register"}  # downstream
    assert (fresh / "data" / "multi" / "manifest.parquet").exists()
    assert not (fresh / "reports" / "validate").exists()
    assert not (fresh / ".dvc-storage").exists()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url, proc, timeout=90):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "ui exited early"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


@pytest.mark.integration
def test_ui_serves_mlflow_and_prefect_on_localhost(fresh, tmp_path):
    mport, pport = _free_port(), _free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "components.cli", "ui", "--project", str(fresh),
                             "--mlflow-port", str(mport), "--prefect-port", str(pport)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert _wait_for(f"http://127.0.0.1:{mport}/health", proc) == 200
        assert _wait_for(f"http://127.0.0.1:{pport}/api/health", proc) == 200
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()  # leave no server behind, then fail
            raise
    assert f"http://127.0.0.1:{mport}" in out and f"http://127.0.0.1:{pport}" in out
    assert proc.returncode == 0
    for name in ("mlflow", "prefect"):  # the servers talk to their logs, not to our pipe
        assert (fresh / ".ui-logs" / f"{name}.log").stat().st_size > 0
