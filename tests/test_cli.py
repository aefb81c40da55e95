import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import mlflow
import pytest

import components.pipeline.tracking  # noqa: F401 - reads $MLFLOW_TRACKING_URI before a test sets it
from components.pipeline import lineage
from components.pipeline.cli import main
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
def test_stage_runs_one_stage_through_the_flow(fresh, prefect_harness, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # restored after: mlflow.set_tracking_uri sets it
    # No capsys here: Prefect's console log handler keeps the stream it first saw.
    assert main(["stage", "synthesize", "--project", str(fresh), "--no-push"]) == 0
    assert set(lineage.status(fresh)) == {"validate", "judges", "pretrain", "multisubject", "sft", "evaluate", "register"}  # downstream
    assert (fresh / "data" / "multi" / "manifest.parquet").exists()
    assert not (fresh / "reports" / "validate").exists()
    assert not (fresh / ".dvc-storage").exists()
    # timings went to the stage's MLflow run, not to the metrics file DVC tracks
    metrics = json.loads((fresh / "metrics" / "synthesize.json").read_text())
    assert metrics["samples"] > 0 and not {"seconds", "samples_per_second", "peak_rss_mb", "timings"} & set(metrics)
    mlflow.set_tracking_uri(f"sqlite:///{fresh}/mlflow.db")
    [run] = mlflow.search_runs(search_all_experiments=True, output_format="list",
                               filter_string="tags.stage = 'synthesize'")
    assert run.data.metrics["timing.seconds"] > 0 and run.data.metrics["timing.peak_rss_mb"] > 0


def test_generate_loads_a_model_logged_from_code_by_run_and_model_id(fresh, tmp_path, capsys, monkeypatch):
    """`subjectflow generate` on MLflow URIs of a pyfunc model logged from code (the registry alias
    and the local folder are exercised by the flow test)."""
    import numpy as np
    from PIL import Image

    from components.models import pyfunc
    from components.models.generator import SubjectGenerator

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # restored after: mlflow.set_tracking_uri sets it
    folder = fresh / "models" / "tiny"
    SubjectGenerator.tiny(width=32, heads=2, double_blocks=1, single_blocks=1, text_hidden=16, text_layers=1,
                          seed=0).save_pretrained(folder)
    mlflow.set_tracking_uri(f"sqlite:///{fresh}/mlflow.db")  # the project's store, where generate looks
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("t", artifact_location=(fresh / "art").as_uri()))
    with mlflow.start_run() as run:
        info = pyfunc.log_generator(folder, name="generator")
    ref = tmp_path / "ref.png"
    Image.fromarray(np.full((48, 48, 3), 120, np.uint8)).save(ref)
    outs = []
    for uri in (f"runs:/{run.info.run_id}/generator", info.model_uri, str(folder)):
        outs.append(tmp_path / f"out{len(outs)}.png")
        assert main(["generate", "--project", str(fresh), "--model", uri, "--ref", str(ref),
                     "the cat from image 1 in a forest", "--steps", "2", "--seed", "1", "--out", str(outs[-1])]) == 0
        assert f"from {uri}" in capsys.readouterr().out
    images = [np.asarray(Image.open(o)) for o in outs]
    assert images[0].shape == (32, 32, 3) and all(np.array_equal(images[0], im) for im in images[1:])


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
    proc = subprocess.Popen([sys.executable, "-m", "components.pipeline.cli", "ui", "--project", str(fresh),
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
