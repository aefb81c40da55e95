"""No secrets in records: a credential in the tracking URI (``http://user:token@host``, a token in
its query string) is redacted wherever a URI is printed, logged to MLflow or written into a
Prefect artifact. The integration test plants one and searches every record for it."""
from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
import yaml
from PIL import Image

from components.pipeline.tracking import redact_uri, run_url
from tests.conftest import REPO, make_project, tiny_params
from tests.test_cli import _free_port, _wait_for

SECRET = "S3CRET-TOKEN"


@pytest.mark.parametrize("uri, redacted", [
    ("http://user:S3CRET@127.0.0.1:5000", "http://***@127.0.0.1:5000"),
    ("https://S3CRET@mlflow.example.com/#/experiments/1", "https://***@mlflow.example.com/#/experiments/1"),
    ("https://user:p@ss:S3CRET@host/path", "https://***@host/path"),  # an unencoded @ in the password
    ("postgresql+psycopg2://mlflow:S3CRET@db:5432/mlflow", "postgresql+psycopg2://***@db:5432/mlflow"),
    ("http://host:5000/api?token=S3CRET&run=1", "http://host:5000/api?token=***&run=1"),
    ("s3://bucket/a.png?X-Amz-Credential=S3CRET&X-Amz-Signature=S3CRET&v=2",
     "s3://bucket/a.png?X-Amz-Credential=***&X-Amz-Signature=***&v=2"),
    ("sqlite:////home/me/project/mlflow.db", "sqlite:////home/me/project/mlflow.db"),
    ("file:///home/me/mlartifacts", "file:///home/me/mlartifacts"),
    ("http://127.0.0.1:5000/#/experiments/1/runs/ab12", "http://127.0.0.1:5000/#/experiments/1/runs/ab12"),
    ("models:/subjectflow-generator@candidate", "models:/subjectflow-generator@candidate"),
    ("/home/me/project", "/home/me/project"),
])
def test_redact_uri_hides_credentials_and_keeps_the_rest(uri, redacted):
    assert redact_uri(uri) == redacted


def test_redact_uri_finds_uris_inside_a_message():
    msg = ("API request to http://user:S3CRET@10.0.0.1:5000/api/2.0/mlflow/runs/get failed "
           "(see 'https://host/x?access_token=S3CRET').")
    assert redact_uri(msg) == ("API request to http://***@10.0.0.1:5000/api/2.0/mlflow/runs/get failed "
                               "(see 'https://host/x?access_token=***').")


def test_run_url_and_the_ui_printout_are_redacted(tmp_path, monkeypatch, capsys):
    from components.pipeline import cli
    from components.pipeline.project import default_params

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # mlflow.set_tracking_uri sets it: undone after the test
    mlflow.set_tracking_uri(f"http://user:{SECRET}@127.0.0.1:9")
    try:
        url = run_url(SimpleNamespace(info=SimpleNamespace(experiment_id="1", run_id="ab12")))
    finally:
        mlflow.set_tracking_uri(None)
    assert url == "http://***@127.0.0.1:9/#/experiments/1/runs/ab12"
    # `subjectflow ui` prints the store it shows; here both servers "stop by themselves" at once
    params = default_params()
    params["pipeline"]["tracking_uri"] = f"postgresql://mlflow:{SECRET}@db/mlflow"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    monkeypatch.setattr(cli.subprocess, "Popen", lambda *a, **kw: SimpleNamespace(poll=lambda: 1))
    monkeypatch.setattr(cli, "_stop_groups", lambda procs: None)
    monkeypatch.setattr(cli.signal, "signal", lambda *a: None)  # leave pytest's handlers alone
    assert cli.main(["ui", "--project", str(tmp_path), "--mlflow-port", str(_free_port()),
                     "--prefect-port", str(_free_port())]) == 1
    out, err = capsys.readouterr()
    assert "(store postgresql://***@db/mlflow)" in out and SECRET not in out + err
    assert "the mlflow server stopped by itself; see" in err


def _holding(needles: list[bytes], folders) -> list[str]:
    """Every file under ``folders`` holding one of ``needles``."""
    return [str(p) for folder in folders for p in Path(folder).rglob("*")
            if p.is_file() and any(n in p.read_bytes() for n in needles)]


def _mlflow_records(server: str, dest: Path) -> list[str]:
    """Everything the MLflow server holds, as text (entities) and as files downloaded into ``dest``
    (every run's and every logged model's artifacts)."""
    from mlflow.entities import ViewType

    client = mlflow.MlflowClient(tracking_uri=server)  # read without credentials: a plain server
    experiments = client.search_experiments(view_type=ViewType.ALL)
    ids = [e.experiment_id for e in experiments]
    runs = client.search_runs(ids, run_view_type=ViewType.ALL, max_results=1000)
    models = client.search_logged_models(ids)
    registered = client.search_registered_models()
    versions = client.search_model_versions()
    for run in runs:
        (dest / run.info.run_id).mkdir(parents=True)
        mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(dest / run.info.run_id),
                                            tracking_uri=server)
    for model in models:
        (dest / model.model_id).mkdir(parents=True)
        mlflow.artifacts.download_artifacts(artifact_uri=model.artifact_location, dst_path=str(dest / model.model_id),
                                            tracking_uri=server)  # the server's own artifact store (mlflow-artifacts:)
    return [repr(x) for x in (*experiments, *runs, *models, *registered, *versions)]


def _prefect_records() -> list[str]:
    """Every artifact, log line, flow run and task run the Prefect server holds, as JSON."""
    from prefect.client.orchestration import get_client

    out = []
    with get_client(sync_client=True) as client:
        for read in (client.read_artifacts, client.read_logs, client.read_flow_runs, client.read_task_runs):
            offset = 0
            while page := read(limit=200, offset=offset):
                out += [r.model_dump_json() for r in page]
                offset += len(page)
    return out


@pytest.fixture
def mlflow_server(tmp_path):
    """A plain `mlflow server` on 127.0.0.1 (it ignores the basic-auth header a client sends for
    http://user:token@host): (its URL, its folder: backend store, artifacts and log)."""
    port, folder = _free_port(), tmp_path / "mlflow-server"
    folder.mkdir()
    with open(folder / "server.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                                 "--backend-store-uri", f"sqlite:///{folder}/mlflow.db", "--artifacts-destination",
                                 str(folder / "artifacts"), "--workers", "1"],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(f"http://127.0.0.1:{port}/health", proc)
        yield f"127.0.0.1:{port}", folder
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.integration
def test_a_credential_in_the_tracking_uri_is_in_no_record(tmp_path, mlflow_server, prefect_harness):
    """The cheapest run through every writer of a URI: `subjectflow stage register` (the flow's
    summary.md in MLflow and its Prefect artifact, register's registered.json, the console) on a
    planted SFT generator, then `subjectflow generate` from the registry, once right and once with
    a model that does not exist."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_DATABASE_CONNECTION_URL

    from components.models.generator import SubjectGenerator
    from components.models.sampling import SamplingSettings

    host, server_dir = mlflow_server
    root = make_project(tmp_path / "project", tiny_params())
    for seed, name in enumerate(("sft", "sft_std", "rl", "patchdpo")):  # the generators register registers
        folder = root / "models" / name
        SubjectGenerator.tiny(width=32, heads=2, double_blocks=1, single_blocks=1, text_hidden=16, text_layers=1,
                              seed=seed).save_pretrained(folder)
        SamplingSettings(steps=2).save(folder)
    (root / "models" / "judges" / "eval").mkdir(parents=True)  # register hashes the judge set that scored
    (root / "models" / "judges" / "eval" / "weights.bin").write_bytes(b"judges")
    (root / "metrics").mkdir()
    overall = {"SC": 0.5, "SA": 0.5, "AES": 0.5, "missing_rate": 0.0}
    (root / "metrics" / "evaluate.json").write_text(json.dumps({"judge_set": "eval", "sft": {"Overall": overall},
                                                                "sft_std": {"Overall": overall},
                                                                "rl": {"Overall": overall},
                                                                "patchdpo": {"Overall": overall}}))
    (root / "reports" / "evaluate").mkdir(parents=True)
    (root / "reports" / "evaluate" / "scores.csv").write_text(
        "generator,id,subset,n_subjects,SC,SA,AES\nsft,bench-four-0000,Four,4,0.5,0.5,0.5\n"
        "sft_std,bench-four-0000,Four,4,0.5,0.5,0.5\nrl,bench-four-0000,Four,4,0.5,0.5,0.5\n"
        "patchdpo,bench-four-0000,Four,4,0.5,0.5,0.5\n")
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(tmp_path / "ref.png")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://user:{SECRET}@{host}",
           "PREFECT_API_URL": PREFECT_API_URL.value()}
    console = []

    def subjectflow(*argv) -> int:
        done = subprocess.run([sys.executable, "-m", "components.pipeline.cli", *argv], cwd=root, env=env,
                              capture_output=True, text=True, timeout=900, check=False)
        console.append(done.stdout + done.stderr)
        return done.returncode

    assert subjectflow("stage", "register", "--no-push") == 0, console[-1]
    generate = ("generate", "--ref", str(tmp_path / "ref.png"), "the cat from image 1 in a forest",
                "--out", str(tmp_path / "out.png"), "--model")
    assert subjectflow(*generate, "models:/subjectflow-generator@candidate") == 0, console[-1]
    assert subjectflow(*generate, "models:/no-such-model@candidate") == 2
    assert console[-1].strip().splitlines()[-1].endswith("Registered Model with name=no-such-model not found")

    # The credential was in use, and every writer wrote its URI, redacted.
    redacted = f"http://***@{host}"
    assert f"MLflow: {redacted}/#/experiments/" in console[0]
    assert json.loads((root / "reports" / "register" / "registered.json").read_text())["tracking_uri"] == redacted
    texts = _mlflow_records(f"http://{host}", tmp_path / "downloaded")
    [summary] = (tmp_path / "downloaded").rglob("summary.md")
    assert f"MLflow: {redacted}/#/experiments/" in summary.read_text()
    prefect = _prefect_records()
    assert any(redacted in t and "subjectflow-pipeline" in t for t in prefect)  # the flow's markdown artifact

    # ... and the credential itself is in no record: not in a file of the project (reports, metrics,
    # dvc.lock, .dvc, the artifacts), not in what MLflow holds (entities, downloaded artifacts, the
    # server's store and log), not in what Prefect holds (its records and database), not on the console.
    needles = [SECRET.encode(), base64.b64encode(f"user:{SECRET}".encode())]  # as a basic-auth header too
    prefect_db = Path(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split(":///", 1)[1]).parent
    assert _holding(needles, [root, tmp_path / "downloaded", server_dir, prefect_db]) == []
    assert [t for t in texts + prefect + console if any(n.decode() in t for n in needles)] == []
    # the search itself finds a planted copy
    (tmp_path / "canary").mkdir()
    (tmp_path / "canary" / "note.txt").write_text(f"token {SECRET}")
    assert _holding(needles, [tmp_path / "canary"]) == [str(tmp_path / "canary" / "note.txt")]
