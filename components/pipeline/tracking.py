"""MLflow records: one parent run per flow run, one nested run per stage.

Each stage's nested run gets the params it reads (flattened), its metrics, its timings
(``timing.*``: wall clock and peak memory, which the metrics files leave out), everything in its
reports folder (sample grids, GX reports), every dataset it reads or writes as an MLflow input
(whose digest is the DVC hash of that folder), and tags for the git commit, the DVC hashes of its
outputs and whether it ran, was restored from DVC's run cache, was skipped or failed. A skipped
or restored stage's reports are those of an earlier run with the same output hashes: its run
links to that run (tag ``reports_run_id``) instead of uploading them again.
"""
from __future__ import annotations

import contextlib

import os
import re
import socket
import subprocess
import time
import warnings
from pathlib import Path
from urllib.parse import urlparse

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# MLflow prints every run's URL built from the tracking URI, credentials included: run_url prints it redacted.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

import mlflow  # noqa: E402

from ..config import Params  # noqa: E402
from ..data.manifest import MANIFEST  # noqa: E402
from .lineage import StageInfo, locked_deps, locked_outs  # noqa: E402

# Read once, at import: mlflow.set_tracking_uri() writes this variable too, so reading it later
# would make one project's store leak into the next project run in the same process.
_ENV_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


def tracking_uri(root: Path, params: Params) -> str:
    """params.yaml pipeline.tracking_uri, else $MLFLOW_TRACKING_URI, else a SQLite file in the project."""
    return params.pipeline.tracking_uri or _ENV_TRACKING_URI or f"sqlite:///{root.resolve()}/mlflow.db"


def setup(root: Path, params: Params) -> str:
    """Point MLflow at the configured store and experiment; returns the experiment id. Runs of
    the experiment a killed process left RUNNING are marked failed (``fail_abandoned_runs``)."""
    uri = tracking_uri(root, params)
    # bounded retries against a tracking server (the environment's settings win; stage processes inherit them)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(params.pipeline.http_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", str(params.pipeline.http_backoff_factor))
    mlflow.set_tracking_uri(uri)
    name = params.pipeline.experiment
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        mlflow.set_experiment(name)
        for run_id in fail_abandoned_runs(exp.experiment_id):
            print(f"MLflow run {run_id} was left running by a process that is gone: marked failed", flush=True)
        return exp.experiment_id
    # a tracking server stores artifacts where it was told (mlflow server --artifacts-destination)
    server = urlparse(uri).scheme in ("http", "https") or uri.startswith("databricks")
    location = params.pipeline.artifact_location or (None if server else (root.resolve() / "mlartifacts").as_uri())
    exp_id = mlflow.create_experiment(name, artifact_location=location)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


OWNER_HOST, OWNER_PID, OWNER_STARTED = "subjectflow.host", "subjectflow.pid", "subjectflow.pid_started"
ABANDONED_TAG = "subjectflow.abandoned"


def owner_tags() -> dict[str, str]:
    """Which process holds a run open: host, pid and the process's start time (a reused pid has
    another), so a later run can tell a run whose process died from one still being written."""
    import psutil

    return {OWNER_HOST: socket.gethostname(), OWNER_PID: str(os.getpid()),
            OWNER_STARTED: repr(psutil.Process().create_time())}


def _owner_alive(tags: dict) -> bool:
    import psutil

    try:
        return repr(psutil.Process(int(tags[OWNER_PID])).create_time()) == tags.get(OWNER_STARTED)
    except (psutil.NoSuchProcess, ValueError, KeyError):
        return False


def fail_abandoned_runs(experiment_id: str) -> list[str]:
    """Mark FAILED the runs of this machine still RUNNING whose process is gone (killed -9, the
    machine rebooted): MLflow would show them running for ever. Runs of other hosts, runs without
    owner tags and runs whose process is alive are left alone. Returns the ids marked."""
    host = socket.gethostname().replace("'", "")
    runs = mlflow.search_runs(experiment_ids=[experiment_id], output_format="list",
                              filter_string=f"attributes.status = 'RUNNING' and tags.`{OWNER_HOST}` = '{host}'")
    client, marked = mlflow.MlflowClient(), []
    for run in runs:
        if _owner_alive(run.data.tags):
            continue
        client.set_tag(run.info.run_id, ABANDONED_TAG, f"process {run.data.tags.get(OWNER_PID)} ended without "
                                                       "closing this run; marked failed by a later run")
        client.set_terminated(run.info.run_id, status="FAILED")
        marked.append(run.info.run_id)
    return marked


def run_tags(root: Path) -> dict[str, str]:
    """The tags every run this tool opens carries: the code's commit and the owning process."""
    return {**git_tags(root), **owner_tags()}


def git_tags(root: Path) -> dict[str, str]:
    """The commit the code is at and whether the work tree has uncommitted changes."""
    def git(*args):
        r = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""

    commit = git("rev-parse", "HEAD") or "none"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"git.commit": commit, "git.dirty": str(dirty).lower()}


def flatten(d: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def stage_params(params: Params, info: StageInfo) -> dict:
    """The flattened params a stage reads: whole sections or single keys, as dvc.yaml lists them."""
    full = flatten(params.model_dump(by_alias=True, mode="json"))
    return {k: v for k, v in full.items() if any(k == p or k.startswith(p + ".") for p in info.params)}


_METRIC_NAME_BAD = re.compile(r"[^0-9A-Za-z_\-. :/]")


def numeric_metrics(metrics: dict) -> dict[str, float]:
    """The numbers of a (nested) metrics dict, flattened; booleans become 0/1. Characters MLflow
    refuses in a metric name become '_'."""
    out = {}
    for k, v in flatten(metrics).items():
        if isinstance(v, (bool, int, float)):
            out[_METRIC_NAME_BAD.sub("_", k)] = float(v)
    return out


DATASET_COLUMNS = ("id", "split", "subset", "prompt", "n_subjects", "target", "row", "sample", "image", "quality")


def _log_datasets(root: Path, info: StageInfo) -> int:
    import pandas as pd
    import pyarrow.parquet as pq

    outs, deps = locked_outs(root, info.name), locked_deps(root, info.name)
    n = 0
    for rel, context, hashes in [(d, "input", deps) for d in info.deps] + [(o, "output", outs) for o in info.outs]:
        manifest = root / rel / MANIFEST
        if not manifest.exists():
            continue
        # a dataset's own columns among these (a synthesized split has them all; data/patchdpo
        # names its images and their source rows instead)
        present = set(pq.read_schema(manifest).names)
        df = pd.read_parquet(manifest, columns=[c for c in DATASET_COLUMNS if c in present])
        digest = hashes.get(rel, "").removesuffix(".dir") or None
        with warnings.catch_warnings():
            # MLflow registers the local source class twice and hints about int columns: noise.
            warnings.simplefilter("ignore", UserWarning)
            ds = mlflow.data.from_pandas(df, source=str((root / rel).resolve()), name=Path(rel).name, digest=digest)
            mlflow.log_input(ds, context=context, tags={"dvc.md5": hashes.get(rel, "")})
        n += 1
    return n


def open_stage_run(parent_run_id: str, name: str) -> str:
    """Create the run of stage ``name``, nested under ``parent_run_id``, before the stage
    starts, so that a training stage can log its step metrics into it (``StepLogger``)."""
    parent = mlflow.get_run(parent_run_id)
    run = mlflow.MlflowClient().create_run(parent.info.experiment_id, run_name=name,
                                           tags={"mlflow.parentRunId": parent_run_id, "stage": name, **owner_tags()})
    return run.info.run_id


@contextlib.contextmanager
def system_metrics(run_id: str, seconds: float):
    """MLflow's system metrics (CPU, memory, disk, network; GPU when ``nvidia-ml-py`` is
    installed and a GPU is present), sampled every ``seconds`` into run ``run_id`` while the
    block runs (``system/*`` metrics); nothing when ``seconds`` is 0."""
    if not seconds:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=seconds, samples_before_logging=1)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
        # the monitor drops the window it was in when stopped: a last sample, taken now, with
        # what that window collected (a stage shorter than the interval gets one too)
        monitor.collect_metrics()
        monitor.publish_metrics(monitor.aggregate_metrics())
        monitor.mlflow_logger.flush()


REPORTS_RUN_TAG = "reports_run_id"


def find_reports_run(experiment_id: str, stage: str, outs: dict[str, str]):
    """The most recent run of ``stage`` in the experiment that ran (not skipped nor restored)
    with exactly these DVC output hashes, so holds these outputs' reports; None if there is none."""
    if not outs or not all(outs.values()):
        return None
    clauses = [f"tags.stage = '{stage}'", "tags.`stage.state` = 'ran'"]
    clauses += [f"tags.`dvc.out.{path}` = '{md5}'" for path, md5 in sorted(outs.items())]
    runs = mlflow.search_runs(experiment_ids=[experiment_id], filter_string=" and ".join(clauses),
                              order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
    return runs[0] if runs else None


def _link_reports(run, source) -> None:
    """Tag ``run`` with the run holding its reports: id, where to look, and a note the UI shows."""
    page = f"#/experiments/{source.info.experiment_id}/runs/{source.info.run_id}"
    mlflow.set_tags({REPORTS_RUN_TAG: source.info.run_id, "reports_run_url": run_url(source),
                     "mlflow.note.content": f"DVC did not rerun this stage: its reports are the artifacts of "
                                            f"[run {source.info.run_id}]({page}), which produced the same outputs."})


def log_stage(root: Path, params: Params, info: StageInfo, parent_run_id: str, state: str,
              metrics: dict | None, seconds: float | None, extra_tags: dict[str, str] | None = None,
              run_id: str | None = None, timings: dict | None = None) -> str:
    """Record one stage in a run nested under ``parent_run_id`` (the one ``open_stage_run``
    made, when ``run_id`` is given); returns the nested run id. ``timings`` (the stage's
    record: wall clock, peak memory) become ``timing.*`` metrics. Reports are uploaded when
    the stage ran; when DVC skipped or restored it, the run links to the run that ran with the
    same output hashes instead (or uploads them, if no such run is found)."""
    tags = {"stage": info.name, "stage.state": state, **git_tags(root), **(extra_tags or {})}
    outs = locked_outs(root, info.name)
    for path, md5 in outs.items():
        tags[f"dvc.out.{path}"] = md5
    opened = (mlflow.start_run(run_id=run_id, nested=True, tags=tags) if run_id else
              mlflow.start_run(run_name=info.name, nested=True, parent_run_id=parent_run_id, tags=tags))
    with opened as run:
        p = stage_params(params, info)
        if p:
            mlflow.log_params(p)
        if metrics:
            mlflow.log_metrics(numeric_metrics(metrics))
        if timings:
            mlflow.log_metrics(numeric_metrics({"timing": timings}))
        if seconds is not None:
            mlflow.log_metric("stage.seconds", seconds)
        reports = [rel for rel in info.outs if rel.startswith("reports") and (root / rel).is_dir()]
        source = find_reports_run(run.info.experiment_id, info.name, outs) \
            if reports and state in ("skipped", "restored") else None
        if source is not None:
            _link_reports(run, source)
        else:
            for rel in reports:
                mlflow.log_artifacts(str(root / rel), artifact_path=rel)
        _log_datasets(root, info)
    if state == "failed":  # the block ended without an exception: MLflow would call it finished
        mlflow.MlflowClient().set_terminated(run.info.run_id, status="FAILED")
    return run.info.run_id


_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://)[^/?#\s]*@")
_SECRET_PARAM = re.compile(r"([?&;])([^=&;#]*(?:token|secret|passw|pwd|key|sig|credential|auth)[^=&;#]*)=[^&;#]*",
                           re.IGNORECASE)


def redact_uri(text: str) -> str:
    """``text`` (a URI, or a message holding URIs) with every URI's credentials replaced by
    ``***``: the user:password or token before the host (``http://***@host``) and the values of
    query parameters named like a secret (``?token=***``, ``X-Amz-Signature=***``). Whatever this
    tool prints, logs or records passes a URI through here; the client that connects keeps it whole."""
    def one(m: re.Match) -> str:
        return _SECRET_PARAM.sub(r"\1\2=***", _USERINFO.sub(r"\1***@", m.group(0)))
    return _URI.sub(one, text)


def run_url(run) -> str:
    """Where a person can look at a run: the server's page, or how to open the local store
    (credentials in the tracking URI redacted)."""
    uri = redact_uri(mlflow.get_tracking_uri())
    path = f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    if uri.startswith("http"):
        return f"{uri.rstrip('/')}/{path}"
    return f"{uri} (run {run.info.run_id}; open it with `subjectflow ui`, then http://127.0.0.1:5000/{path})"


STAGE_RUN_ENV = "SUBJECTFLOW_MLFLOW_RUN_ID"


class StepLogger:
    """How a stage process logs step metrics and images into its flow's MLflow run: the flow
    puts the run id in ``$SUBJECTFLOW_MLFLOW_RUN_ID`` (and the store in ``$MLFLOW_TRACKING_URI``).
    Run alone (``python -m components.<stage>``) there is no run, and it logs nothing."""

    def __init__(self, run_id: str | None = None):
        self.run_id = run_id or os.environ.get(STAGE_RUN_ENV)
        self.client = mlflow.MlflowClient() if self.run_id else None

    @property
    def active(self) -> bool:
        return self.client is not None

    def metrics(self, values: dict[str, float], step: int, prefix: str = "") -> None:
        if not self.client:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(_METRIC_NAME_BAD.sub("_", prefix + k), float(v), now, step)
                                                    for k, v in values.items()])

    def tag(self, key: str, value: str) -> None:
        if self.client:
            self.client.set_tag(self.run_id, key, value)

    def artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.client:
            self.client.log_artifact(self.run_id, str(path), artifact_path)
