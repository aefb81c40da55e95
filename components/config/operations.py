"""Sections that place the pipeline rather than shape its outputs: registry, resources, orchestration."""
from __future__ import annotations

from typing import Annotated

from pydantic import Field

from .base import Section


class RegisterParams(Section):
    """Where the trained generator goes in the MLflow model registry."""

    model_name: str = Field("subjectflow-generator", description="Registered model name.")
    alias: str = Field("candidate", description="Alias the new version gets (promotion moves @champion).")


class ResourcesParams(Section):
    """Machine resources; no stage output depends on them, so DVC does not track them."""

    workers: Annotated[int, Field(ge=0)] = Field(0, description="Worker processes for fan-out work; 0 = all cores.")


class PipelineParams(Section):
    """Orchestration and tracking; not tracked by DVC."""

    experiment: str = Field("subjectflow", description="MLflow experiment name.")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default: $MLFLOW_TRACKING_URI, else sqlite:///<project>/mlflow.db.")
    artifact_location: str | None = Field(
        None, description="Artifact root of a new experiment; default: <project>/mlartifacts.")
    retries: Annotated[int, Field(ge=0)] = Field(1, description="Prefect retries per stage task.")
    retry_delay_seconds: Annotated[float, Field(ge=0)] = Field(2.0, description="Delay between retries.")
    push: bool = Field(True, description="`dvc push` the outputs to the default remote when the flow ends.")
