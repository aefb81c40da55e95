"""params.yaml, validated. One pydantic model per section; unknown keys and bad values are
errors that name the file, the key and what is wrong."""
from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ConfigDict, Field, ValidationError, model_validator

from ..world.scenes import N_SUBJECTS
from .base import ParamsError, Section, known_tasks
from .data import GROUNDER_STRIDE, EvaluateParams, JudgesParams, SynthesizeParams, ValidateParams
from .operations import PipelineParams, PromoteParams, RegisterParams, ResourcesParams
from .resolve import check_resolvable
from .training import (
    GeneratorParams,
    MultisubjectParams,
    PatchDPOParams,
    PretrainParams,
    RLParams,
    SftParams,
    StageTrainingParams,
    StandardizerParams,
    TrainConfig,
    TrainingParams,
)

__all__ = ["EvaluateParams", "GeneratorParams", "JudgesParams", "MultisubjectParams", "Params", "PatchDPOParams", "ParamsError",
           "PipelineParams", "PretrainParams", "PromoteParams", "RegisterParams", "ResourcesParams", "RLParams", "Section", "SftParams",
           "StageTrainingParams", "StandardizerParams", "SynthesizeParams", "TrainConfig", "TrainingParams", "ValidateParams",
           "check_resolvable", "known_tasks", "load_params", "section_dict"]


class Params(Section):
    synthesize: SynthesizeParams = SynthesizeParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    judges: JudgesParams = JudgesParams()
    generator: GeneratorParams = GeneratorParams()
    training: TrainingParams = TrainingParams()
    pretrain: PretrainParams = PretrainParams()
    standardizer: StandardizerParams = StandardizerParams()
    multisubject: MultisubjectParams = MultisubjectParams()
    sft: SftParams = SftParams()
    rl: RLParams = RLParams()
    patchdpo: PatchDPOParams = PatchDPOParams()
    register_: RegisterParams = Field(RegisterParams(), alias="register")
    evaluate: EvaluateParams = EvaluateParams()
    promote: PromoteParams = PromoteParams()
    resources: ResourcesParams = ResourcesParams()
    pipeline: PipelineParams = PipelineParams()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _sections_agree(self):
        """Rules across sections, checked before any stage starts; each names its keys. All that
        fail are reported together, one line each."""
        problems = [*self._image_sizes(), *self._dataset_sizes(), *self._reference_counts()]
        if self.multisubject.judge_set != "reward":
            problems.append("multisubject.judge_set must be 'reward': bootstrapping filters training data with the "
                            "judges that give rewards; the 'eval' judges score the benchmark and must never have "
                            "shaped what the generator trains on")
        if self.promote.alias == self.register_.alias:
            problems.append(f"promote.alias and register.alias are both {self.promote.alias!r}: the gate moves "
                            "@champion to the version register points @candidate at, so they need two names")
        if problems:
            raise ValueError("\n  ".join(problems))
        return self

    def _image_sizes(self) -> list[str]:
        res, patch = self.synthesize.resolution, self.generator.patch
        found = []
        if not self.generator.pretrained and res % patch:  # the real profile's packing: components/config/resolve.py
            found.append(f"synthesize.resolution {res} is not divisible by generator.patch {patch}: the generator "
                         f"cuts images into patch x patch tokens (try resolution {res - res % patch})")
        if res % GROUNDER_STRIDE:
            found.append(f"synthesize.resolution {res} is not divisible by {GROUNDER_STRIDE}: the judges stage trains "
                         f"a grounder whose deepest features are 1/{GROUNDER_STRIDE} of the image "
                         f"(try resolution {res - res % GROUNDER_STRIDE})")
        return found

    def _dataset_sizes(self) -> list[str]:
        """The validate stage rejects a synthesized dataset of fewer than validate.min_samples rows."""
        syn, need = self.synthesize, self.validate_.min_samples
        sizes = {"synthesize.single": syn.single, "synthesize.standardize": syn.standardize,
                 "synthesize.multi": syn.multi,
                 "synthesize.bench_per_subset / bench_rows": sum(syn.bench_size(t) for t in N_SUBJECTS),
                 "synthesize.wild_per_subset": sum(syn.wild_size(t) for t in N_SUBJECTS),
                 "synthesize.serial_identities x serial_prompts": syn.serial_identities * syn.serial_prompts}
        return [f"{key} gives {n} rows, fewer than validate.min_samples {need}: the validate stage would reject "
                f"the dataset; raise it or lower validate.min_samples" for key, n in sizes.items() if n < need]

    def _reference_counts(self) -> list[str]:
        """sft.ref_count_probs against the pairs the data can hold: a count given a positive
        probability that no dataset can have would leave sft nothing (or less) to draw from."""
        syn, ms = self.synthesize, self.multisubject
        held = {1} if syn.single else set()
        if syn.multi:
            held |= {N_SUBJECTS[t] for t in N_SUBJECTS if syn.multi_tasks.get(t, 0) > 0 or ms.recompose.get(t, 0) > 0}
        found = []
        for k, p in sorted(self.sft.ref_count_probs.items()):
            if p <= 0 or k in held:
                continue
            if k == 1:
                why, fix = "synthesize.single is 0", "set synthesize.single > 0"
            else:
                tasks = [t for t, n in N_SUBJECTS.items() if n == k]
                why = ("synthesize.multi is 0" if not syn.multi else
                       f"neither synthesize.multi_tasks nor multisubject.recompose weights a {k}-subject task {tasks}")
                fix = f"weight one of {tasks} in synthesize.multi_tasks"
            found.append(f"sft.ref_count_probs gives {k} reference(s) probability {p}, but no data holds such pairs "
                         f"({why}): set it to 0 or {fix}")
        return found

    def train_config(self, stage: str) -> TrainConfig:
        """The whole configuration of training stage ``stage`` (``pretrain``, ``sft``): the shared
        ``training`` section, the stage's own, and the generator's sampling settings."""
        own = getattr(self, stage).model_dump(include=set(StageTrainingParams.model_fields))
        return TrainConfig(**self.training.model_dump(), **own, sample_steps=self.generator.sample_steps,
                           guidance=self.generator.guidance, sample_precision=self.generator.sample_precision)


def _format(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: {len(err.errors())} invalid setting(s)"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]).replace("validate_", "validate").replace("register_", "register")
        if not key:  # a rule across sections: its message names the keys
            lines.append(f"  {e['msg'].removeprefix('Value error, ')}")
        elif e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (misspelt? remove it or use a documented name)")
        elif key in _MAY_HOLD_SECRETS:  # user:password@host; the message says what is wrong without it
            lines.append(f"  {key}: {e['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


_MAY_HOLD_SECRETS = ("pipeline.tracking_uri", "pipeline.artifact_location")


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml, and resolve everything it names in its project (the folder
    holding it; see resolve.py): generators, models by path or hub id, dvc.yaml's stages. Raises
    ParamsError with one readable line per problem."""
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
        params = Params.model_validate(raw)
    except ValidationError as e:
        raise ParamsError(_format(path, e)) from None
    check_resolvable(params, path.resolve().parent, path)
    return params


def section_dict(params: Params, name: str) -> dict:
    """One section as a plain dict, as written in params.yaml."""
    return params.model_dump(by_alias=True, mode="json")[name]
