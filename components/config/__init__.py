"""params.yaml, validated. One pydantic model per section; unknown keys and bad values are
errors that name the file, the key and what is wrong."""
from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ConfigDict, Field, ValidationError, model_validator

from .base import Section, known_tasks
from .data import EvaluateParams, JudgesParams, SynthesizeParams, ValidateParams
from .operations import PipelineParams, RegisterParams, ResourcesParams
from .training import (
    GeneratorParams,
    MultisubjectParams,
    PretrainParams,
    SftParams,
    StageTrainingParams,
    TrainConfig,
    TrainingParams,
)

__all__ = ["EvaluateParams", "GeneratorParams", "JudgesParams", "MultisubjectParams", "Params", "ParamsError",
           "PipelineParams", "PretrainParams", "RegisterParams", "ResourcesParams", "Section", "SftParams",
           "StageTrainingParams", "SynthesizeParams", "TrainConfig", "TrainingParams", "ValidateParams", "known_tasks",
           "load_params", "section_dict"]


class Params(Section):
    synthesize: SynthesizeParams = SynthesizeParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    judges: JudgesParams = JudgesParams()
    generator: GeneratorParams = GeneratorParams()
    training: TrainingParams = TrainingParams()
    pretrain: PretrainParams = PretrainParams()
    multisubject: MultisubjectParams = MultisubjectParams()
    sft: SftParams = SftParams()
    register_: RegisterParams = Field(RegisterParams(), alias="register")
    evaluate: EvaluateParams = EvaluateParams()
    resources: ResourcesParams = ResourcesParams()
    pipeline: PipelineParams = PipelineParams()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _sections_agree(self):
        """Rules across sections, checked before any stage starts (each names its keys)."""
        res, patch = self.synthesize.resolution, self.generator.patch
        if not self.generator.pretrained and res % patch:
            raise ValueError(f"synthesize.resolution {res} is not divisible by generator.patch {patch}: the "
                             f"generator cuts images into patch x patch tokens (try resolution {res - res % patch})")
        if self.multisubject.judge_set != "reward":
            raise ValueError("multisubject.judge_set must be 'reward': bootstrapping filters training data with "
                             "the judges that give rewards; the 'eval' judges score the benchmark and must never "
                             "have shaped what the generator trains on")
        return self

    def train_config(self, stage: str) -> TrainConfig:
        """The whole configuration of training stage ``stage`` (``pretrain``, ``sft``): the shared
        ``training`` section, the stage's own, and the generator's sampling settings."""
        own = getattr(self, stage).model_dump(exclude={"ref_count_probs"})
        return TrainConfig(**self.training.model_dump(), **own, sample_steps=self.generator.sample_steps,
                           guidance=self.generator.guidance)


class ParamsError(ValueError):
    """params.yaml is malformed; the message names the file, the key and the fix."""


def _format(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: {len(err.errors())} invalid setting(s)"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]).replace("validate_", "validate").replace("register_", "register")
        if not key:  # a rule across sections: its message names the keys
            lines.append(f"  {e['msg'].removeprefix('Value error, ')}")
        elif e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (misspelt? remove it or use a documented name)")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; raises ParamsError with a readable message."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found (run from the project folder or pass --params)") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: top level must be a mapping of sections")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise ParamsError(_format(path, e)) from None


def section_dict(params: Params, name: str) -> dict:
    """One section as a plain dict, as written in params.yaml."""
    return params.model_dump(by_alias=True, mode="json")[name]
