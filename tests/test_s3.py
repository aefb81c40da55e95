"""S3 for data and artifacts, for real: moto in server mode on 127.0.0.1 as the S3 endpoint, an
`mlflow server --artifacts-destination s3://...` tracking server in front of it, and a tiny
project whose params point its DVC remote at the bucket (pipeline.dvc_remote, s3_endpoint_url)
and its tracking at the server. `subjectflow run` pushes the stage outputs to the bucket and the
models' files go through the server into it; a second clone pulls from the bucket and finds
every stage up to date, and generates with ``models:/subjectflow-generator@champion`` through
the server. With S3 stopped in the middle of a model upload, the upload fails after bounded
retries with an error that says so, and no model version is registered from the partial files."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import mlflow
import pytest

import components.pipeline.tracking  # noqa: F401 - reads $MLFLOW_TRACKING_URI once, before these tests set it
from tests.conftest import make_project, tiny_params

pytestmark = pytest.mark.integration
BUCKET = "subjectflow"
NAME = "subjectflow-generator"
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen | None, log, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if (proc is not None and proc.poll() is not None) or time.time() > deadline:
                raise RuntimeError(f"{url} did not come up; see {log}")
            time.sleep(0.5)


@pytest.fixture
def s3(tmp_path, monkeypatch):
    """moto's S3 on 127.0.0.1 with an empty bucket; (endpoint, server, boto3 client)."""
    import boto3
    from moto.server import ThreadedMotoServer

    for k, v in AWS.items():
        monkeypatch.setenv(k, v)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=BUCKET)
    state = {"running": True}

    def stop():
        if state["running"]:
            server.stop()
            state["running"] = False
    yield endpoint, stop, client
    stop()


@pytest.fixture
def tracking_server(tmp_path, s3):
    """`mlflow server` on 127.0.0.1: SQLite store, artifacts proxied to s3://subjectflow/mlartifacts."""
    endpoint = s3[0]
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(AWS, MLFLOW_S3_ENDPOINT_URL=endpoint, MLFLOW_DISABLE_TELEMETRY="true")
    log = tmp_path / "mlflow-server.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
         "--artifacts-destination", f"s3://{BUCKET}/mlartifacts"],
        env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", server, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        from components.pipeline.cli import _stop_groups

        _stop_groups([server])


def _keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _cli(env, *args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "components.pipeline.cli", *args], env=env, capture_output=True,
                          text=True, **kw)


def test_a_project_on_s3_runs_pulls_elsewhere_generates_and_survives_an_outage(
        tmp_path, s3, tracking_server, prefect_harness, monkeypatch):
    from prefect.settings import PREFECT_API_URL

    endpoint, stop_s3, client = s3
    params = tiny_params()
    params["pipeline"].update(tracking_uri=tracking_server, dvc_remote=f"s3://{BUCKET}/dvc", s3_endpoint_url=endpoint,
                              http_retries=2, http_backoff_factor=1)
    root = make_project(tmp_path / "p", params)
    # the promotion lock of a tracking server is the Prefect server's concurrency limit
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "SUBJECTFLOW_MLFLOW_RUN_ID")}
    env.update(AWS, PREFECT_API_URL=PREFECT_API_URL.value())
    done = _cli(env, "run", "--project", str(root), timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # the DVC outputs are in the bucket; every model's files went through the server into it
    assert len(_keys(client, "dvc/files/md5/")) > 50
    mlflow.set_tracking_uri(tracking_server)
    try:
        registry = mlflow.MlflowClient()
        versions = registry.search_model_versions(f"name = '{NAME}'")
        registered = json.loads((root / "reports" / "register" / "registered.json").read_text())["versions"]
        assert len(versions) == len(registered) == 4  # sft, sft_std, rl, patchdpo
        champion = registry.get_model_version_by_alias(NAME, "champion")
        stored = _keys(client, "mlartifacts/")
        assert any(k.endswith("/MLmodel") for k in stored) and any(k.endswith("generator_config.json") for k in stored)
        assert not (root / "mlartifacts").exists()  # nothing went to the local disk instead

        # a second clone pulls everything from the bucket, has every stage up to date, and
        # draws with the champion through the tracking server
        subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
        subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "ran"],
                       check=True)
        clone = tmp_path / "clone"
        subprocess.run(["git", "clone", "-q", str(root), str(clone)], check=True)
        pulled = _cli(env, "pull", "--project", str(clone), timeout=600)
        assert pulled.returncode == 0 and "every stage is up to date" in pulled.stdout, pulled.stdout + pulled.stderr
        from components.data.manifest import read_manifest

        row = read_manifest(clone / "data" / "bench").iloc[0]
        out = tmp_path / "champion.png"
        generated = _cli(env, "generate", "--project", str(clone), "--model", f"models:/{NAME}@champion",
                         *[a for ref in row.refs for a in ("--ref", str(clone / "data" / "bench" / ref))],
                         row.prompt, "--out", str(out), "--seed", "3", timeout=600)
        assert generated.returncode == 0 and out.stat().st_size > 0, generated.stdout + generated.stderr

        # S3 goes down after the first file of a new model reached it: bounded retries, a clear
        # error, and no version from the partial upload
        from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository

        from components.models.generator import SubjectGenerator
        from components.pipeline.versions import uploading
        from tests.test_pretrain import SMALL_GEN

        folder = tmp_path / "new-model"
        SubjectGenerator.tiny(**SMALL_GEN, seed=7).save_pretrained(folder)
        original, sent = HttpArtifactRepository.log_artifact, []

        def outage_after_first(self, local_file, artifact_path=None):
            if sent:
                stop_s3()
            sent.append(local_file)
            return original(self, local_file, artifact_path)
        monkeypatch.setattr(HttpArtifactRepository, "log_artifact", outage_after_first)
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        from components.models.pyfunc import log_generator

        t0 = time.perf_counter()
        with mlflow.start_run(experiment_id=champion.run_id and registry.get_run(champion.run_id).info.experiment_id):
            with pytest.raises(RuntimeError, match="could not be uploaded to the MLflow artifact store") as err:
                with uploading("the new model"):
                    log_generator(folder, name="new", registered_model_name=NAME)
        assert time.perf_counter() - t0 < 180 and len(sent) >= 2
        assert "No model version was registered" in str(err.value)
        assert len(registry.search_model_versions(f"name = '{NAME}'")) == len(versions)
    finally:
        mlflow.set_tracking_uri(None)
