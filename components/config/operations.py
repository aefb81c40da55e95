"""Sections that place the pipeline rather than shape its outputs: registry, resources, orchestration.

The names and URIs here are checked as MLflow checks them (mlflow/utils/validation.py: the
registry's model name and alias rules; the tracking stores by URI scheme), so a bad value fails
when params.yaml is loaded rather than at the register stage, after the model is logged."""
from __future__ import annotations

import posixpath
import re
from pathlib import PurePosixPath
from typing import Annotated, Literal
from urllib.parse import urlparse

from pydantic import Field, field_validator

from .base import Section

# mlflow.utils.validation: _REGISTERED_MODEL_ALIAS_REGEX, _REGISTERED_MODEL_ALIAS_VERSION_REGEX,
# MAX_REGISTERED_MODEL_ALIAS_LENGTH, MAX_EXPERIMENT_NAME_LENGTH; 256 = the registry tables' name
# column (mlflow/store/model_registry/dbmodels). tests/test_config.py checks they agree.
_ALIAS = re.compile(r"^[\w\-]*$")
_VERSION_ALIAS = re.compile(r"^[vV]\d+$")
MAX_ALIAS_LENGTH = 255
MAX_MODEL_NAME_LENGTH = 256
MAX_EXPERIMENT_NAME_LENGTH = 500
# Tracking stores MLflow ships (mlflow/tracking/_tracking_service/utils.py); plugins add theirs
# through the "mlflow.tracking_store" entry points.
_STORE_SCHEMES = {"", "file", "databricks", "databricks-uc", "uc", "http", "https", "postgresql", "mysql", "sqlite",
                  "mssql"}


class RegisterParams(Section):
    """Where the trained generators go in the MLflow model registry."""

    model_name: str = Field("subjectflow-generator", description="Registered model name (no '/', ':' or '%'; "
                            f"at most {MAX_MODEL_NAME_LENGTH} characters).")
    alias: str = Field("candidate", description="Alias of the best registered version (promotion moves @champion): "
                       "letters, digits, '_' and '-'; not 'latest' nor v<digits>, which MLflow reserves.")
    candidate_by: Literal["SC", "SA", "AES"] = Field(
        "SC", description="The candidate is the registered generator with the best Overall benchmark score in this.")

    @field_validator("model_name")
    @classmethod
    def _registry_name(cls, v):
        if not v.strip():
            raise ValueError("the registered model needs a name")
        bad = [c for c in "/:%" if c in v]
        if bad:
            raise ValueError(f"MLflow's registry refuses {bad} in a model name")
        norm = posixpath.normpath(v)
        if norm != v or norm == "." or norm.startswith(".."):
            raise ValueError(f"MLflow treats model names as paths, and {v!r} would resolve to {norm!r}")
        if len(v) > MAX_MODEL_NAME_LENGTH:
            raise ValueError(f"at most {MAX_MODEL_NAME_LENGTH} characters, got {len(v)}")
        return v

    @field_validator("alias")
    @classmethod
    def _registry_alias(cls, v):
        if not v:
            raise ValueError("the alias must not be empty")
        if not _ALIAS.match(v):
            raise ValueError("an alias may only hold letters, digits, underscores (_) and dashes (-)")
        if len(v) > MAX_ALIAS_LENGTH:
            raise ValueError(f"at most {MAX_ALIAS_LENGTH} characters, got {len(v)}")
        if v.lower() == "latest" or _VERSION_ALIAS.match(v):
            raise ValueError(f"MLflow reserves {v!r} (it means a version: 'latest', 'v3'); pick another, e.g. "
                             "'candidate'")
        return v


class Scores(Section):
    """One number per benchmark dimension."""

    SC: float
    SA: float
    AES: float


class PromoteParams(Section):
    """The gate that moves ``@champion`` (components/promote.py); not tracked by DVC: it decides
    about the registry and produces no file."""

    auto: bool = Field(True, description="The pipeline flow runs the gate after a whole-DAG run.")
    alias: str = Field("champion", description="The alias the gate moves (the model in use).")
    margins: Scores = Field(
        Scores(SC=0.0, SA=0.01, AES=0.01),
        description="Promote only if the paired-bootstrap 95% interval of candidate - champion (Overall, same "
                    "benchmark rows) has its low end above margins.SC, and not below -margins.SA / -margins.AES.")
    floors: Scores = Field(
        Scores(SC=0.2, SA=0.4, AES=0.2),
        description="With no champion yet, the candidate's Overall scores must reach these to become champion.")
    rescore: bool = Field(
        True, description="When the champion was scored by another benchmark than the candidate (new benchmark data, "
                          "judges, scoring settings or code), score the champion's registered model on the project's "
                          "benchmark before the gate compares; false: refuse such a comparison.")
    resamples: Annotated[int, Field(ge=100)] = Field(2000, description="Bootstrap resamples.")
    seed: int = Field(0, description="Bootstrap seed.")
    lock_timeout_seconds: Annotated[float, Field(gt=0)] = Field(
        600.0, description="How long a promotion waits for another one to finish before it gives up.")

    @field_validator("alias")
    @classmethod
    def _registry_alias(cls, v):
        return RegisterParams._registry_alias(v)

    @field_validator("margins")
    @classmethod
    def _margins(cls, v):
        if v.SA < 0 or v.AES < 0:
            raise ValueError("margins.SA and margins.AES are how much worse is tolerated: 0 or more")
        return v


class ResourcesParams(Section):
    """Machine resources; no stage output depends on them, so DVC does not track them."""

    workers: Annotated[int, Field(ge=0)] = Field(0, description="Worker processes for fan-out work; 0 = all cores.")
    engine: Literal["local", "dask"] = Field(
        "local", description="Where fan-out work (synthesis) runs: local (a process pool of `workers`) or dask "
                             "(the cluster at dask_address, else a LocalCluster of `workers` processes).")
    dask_address: str | None = Field(
        None, description="Dask scheduler (tcp://host:8786) for engine dask; null = a LocalCluster per call.")


def _local_path(uri: str) -> str | None:
    """The path of a local-file URI or plain path, None for any other URI."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return parsed.path
    return uri if parsed.scheme == "" else None


class PipelineParams(Section):
    """Orchestration and tracking; not tracked by DVC.

    The flow and every stage are separate processes that must reach the same MLflow store, and
    they need not start in the same folder: a local store or artifact root must be absolute."""

    experiment: str = Field("subjectflow", description="MLflow experiment name.")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI (sqlite:////abs/mlflow.db, http://host:5000, an absolute folder, ...); "
                          "default: $MLFLOW_TRACKING_URI, else sqlite:///<project>/mlflow.db.")
    artifact_location: str | None = Field(
        None, description="Artifact root of a new experiment (an absolute folder or a URI: s3://..., file:///...); "
                          "default: <project>/mlartifacts.")
    http_retries: Annotated[int, Field(ge=0)] = Field(
        3, description="Retries of a failed request to an MLflow tracking server (MLFLOW_HTTP_REQUEST_MAX_RETRIES, "
                       "which wins when set): an artifact store that is down fails the stage in seconds, not minutes.")
    http_backoff_factor: Annotated[int, Field(ge=0)] = Field(
        1, description="Backoff between those retries: factor * 2^n seconds (MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR).")
    retries: Annotated[int, Field(ge=0)] = Field(1, description="Prefect retries per stage task.")
    retry_delay_seconds: Annotated[float, Field(ge=0)] = Field(2.0, description="Delay between retries.")
    push: bool = Field(True, description="`dvc push` the outputs to the default remote when the flow ends.")
    dvc_remote: str | None = Field(
        None, description="The DVC remote the flow pushes to and `subjectflow pull` pulls from (s3://bucket/prefix, or "
                          "any URL DVC takes); written to .dvc/config as the default remote `storage` when the flow "
                          "starts. null: the remote .dvc/config names (a folder beside the project).")
    s3_endpoint_url: str | None = Field(
        None, description="An S3-compatible endpoint for dvc_remote (MinIO, Ceph, moto: http://host:9000); null = AWS. "
                          "Credentials come from the environment (AWS_ACCESS_KEY_ID, ...), never from this file.")
    system_metrics_seconds: Annotated[float, Field(ge=0)] = Field(
        10.0, description="Sample CPU, memory (and GPU with nvidia-ml-py) into each running stage's MLflow run every "
                          "this many seconds (system/* metrics); 0 = off.")

    @field_validator("experiment")
    @classmethod
    def _experiment_name(cls, v):
        if not v.strip():
            raise ValueError("the MLflow experiment needs a name")
        if len(v) > MAX_EXPERIMENT_NAME_LENGTH:
            raise ValueError(f"MLflow takes at most {MAX_EXPERIMENT_NAME_LENGTH} characters, got {len(v)}")
        return v

    @field_validator("tracking_uri")
    @classmethod
    def _tracking_store(cls, v):
        if v is None or v in ("databricks", "databricks-uc", "uc"):  # MLflow takes these bare
            return v
        scheme = urlparse(v).scheme.lower()
        engine = scheme.split("+", 1)[0]
        if scheme.count("+") > 1 or (engine not in _STORE_SCHEMES and engine not in _plugin_schemes()):
            raise ValueError(f"no MLflow tracking store has the scheme {scheme!r}; known: "
                             f"{sorted(_STORE_SCHEMES - {''}) + sorted(_plugin_schemes())}, or an absolute folder")
        if scheme in ("http", "https") and not urlparse(v).netloc:
            raise ValueError(f"{v!r} names no host (http://host:port)")
        if engine == "sqlite":
            db = v.split(":///", 1)[1] if ":///" in v else ""
            if not db or db == ":memory:":
                raise ValueError("an in-memory SQLite store is lost when each process ends: give sqlite:////abs/mlflow.db")
            if not db.startswith("/"):
                raise ValueError(f"sqlite:///{db} is relative to whatever folder each process starts in: write it "
                                 f"absolute, sqlite:////abs/path/{PurePosixPath(db).name}")
        local = _local_path(v)
        if local is not None and not local.startswith("/"):
            raise ValueError(f"{local!r} is relative to whatever folder each process starts in: give an absolute folder")
        return v

    @field_validator("artifact_location")
    @classmethod
    def _artifact_root(cls, v):
        if v is None:
            return v
        if v.startswith("runs:"):
            raise ValueError("MLflow refuses a runs:/ URI as an experiment's artifact location")
        local = _local_path(v)
        if local is not None and not local.startswith("/"):
            raise ValueError(f"{local!r} is relative to whatever folder the process creating the experiment starts in: "
                             "give an absolute folder or a URI (file:///abs/mlartifacts, s3://bucket/path)")
        return v


def _plugin_schemes() -> set[str]:
    """Tracking-store schemes that installed MLflow plugins register."""
    from importlib.metadata import entry_points

    return {e.name for e in entry_points(group="mlflow.tracking_store")}
