"""params.yaml, validated. One pydantic model per section; unknown keys and bad values are
errors that name the file, the key and what is wrong."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from .world import TASKS


def known_tasks(weights: dict[str, float], what: str) -> dict[str, float]:
    """``weights`` keyed by PSR task (= benchmark subset) names, or a ValueError naming the others."""
    unknown = sorted(set(weights) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown {what}(s) {unknown}; allowed: {list(TASKS)}")
    return weights


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SynthesizeParams(Section):
    """The synthesize stage: the world's settings and how many samples of each dataset."""

    seed: int = Field(0, description="Root seed; every sample's rng is derived from (seed, split, index).")
    resolution: Annotated[int, Field(ge=8, le=1024)] = Field(32, description="Image side in pixels.")
    supersample: Annotated[int, Field(ge=1, le=16)] = Field(4, description="Anti-aliasing factor of the renderer.")
    heldout_fraction: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.1, description="Fraction of identities reserved for the benchmark (never in training).")
    identity_salt: str = Field("subjectflow-v1", description="Salt of the identity split hash.")
    single: Annotated[int, Field(ge=0)] = Field(3000, description="Single-subject pairs.")
    single_same_placement: Annotated[float, Field(ge=0, le=1)] = Field(
        0.5, description="Share of single-subject pairs whose target keeps the reference's pose, size and place "
                         "(only the background changes).")
    standardize: Annotated[int, Field(ge=0)] = Field(1500, description="Standardization pairs.")
    multi: Annotated[int, Field(ge=0)] = Field(3000, description="Multi-subject scenes.")
    multi_tasks: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: {t: 1.0 for t in TASKS}, description="Relative weight of each PSR task in `multi`.")
    bench_per_subset: Annotated[int, Field(ge=1)] = Field(50, description="Benchmark samples per subset.")
    bench_rows: dict[str, Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: {"Three": 200, "Four": 200}, description="Subsets given another number of benchmark samples than bench_per_subset "
                                          "(more rows resolve smaller differences); rows 0..n-1 of a subset are "
                                          "the same whatever n is.")
    character_fraction: Annotated[float, Field(ge=0, le=1)] = Field(
        0.5, description="Fraction of standardization pairs showing the person (SerialGen's whole-body case).")
    grid_samples: Annotated[int, Field(ge=1, le=64)] = Field(8, description="Rows of each dataset's sample grid.")

    @field_validator("multi_tasks")
    @classmethod
    def _known_tasks(cls, v):
        known_tasks(v, "task")
        if sum(v.values()) <= 0:
            raise ValueError("weights must not all be zero")
        return v

    @field_validator("bench_rows")
    @classmethod
    def _known_subsets(cls, v):
        known_tasks(v, "subset")
        return v

    def bench_size(self, subset: str) -> int:
        """Benchmark samples of ``subset``."""
        return self.bench_rows.get(subset, self.bench_per_subset)


class ValidateParams(Section):
    """The validate stage: the Great Expectations gate on every manifest."""

    decode_images: bool = Field(True, description="Open every PNG and check it decodes at the stated size.")
    min_samples: Annotated[int, Field(ge=0)] = Field(1, description="Fewest rows a dataset may have.")
    report_rows: Annotated[int, Field(ge=1)] = Field(20, description="Failing row ids listed per expectation.")


class JudgesParams(Section):
    """The judges stage: two independent judge sets (reward, eval) trained on disjoint halves of
    the synthesized data with different seeds; or real pretrained models named by id or path."""

    reward_seed: int = Field(101, description="Seed of the reward judge set (trained on even rows).")
    eval_seed: int = Field(202, description="Seed of the evaluation judge set (trained on odd rows).")
    max_rows: Annotated[int, Field(ge=2)] | None = Field(
        None, description="Rows read per dataset for training (None = all).")
    crop_size: Annotated[int, Field(ge=8, le=256)] = Field(32, description="Side of the subject crops the encoder reads.")
    width: Annotated[int, Field(ge=4, le=512)] = Field(32, description="Base channel width of the judge networks.")
    embed_dim: Annotated[int, Field(ge=4, le=1024)] = Field(64, description="Subject embedding size.")
    batch_size: Annotated[int, Field(ge=2)] = Field(64, description="Training batch size of every judge.")
    lr: Annotated[float, Field(gt=0)] = Field(3e-3, description="Peak learning rate (one-cycle schedule).")
    encoder_steps: Annotated[int, Field(ge=0)] = Field(600, description="Training steps of the subject encoder.")
    grounder_steps: Annotated[int, Field(ge=0)] = Field(800, description="Training steps of the grounding model.")
    semantic_steps: Annotated[int, Field(ge=0)] = Field(600, description="Training steps of the semantic judge.")
    aesthetic_steps: Annotated[int, Field(ge=0)] = Field(400, description="Training steps of the aesthetic judge.")
    temperature: Annotated[float, Field(gt=0)] = Field(0.1, description="InfoNCE temperature of the encoder.")
    grounding_threshold: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.5, description="Objectness below which the grounder answers 'not found'.")
    encoder_model: str | None = Field(
        None, description="Use a pretrained transformers vision model (DINO / CLIP) by id or path instead of training one.")
    grounder_model: str | None = Field(
        None, description="Use a pretrained zero-shot detector (transformers) by id or path instead of training one.")


class EvaluateParams(Section):
    """The evaluate stage: the PSRBench-style benchmark on the `bench` dataset."""

    generators: list[str] = Field(
        default_factory=lambda: ["oracle", "copy_paste", "background_only", "noise", "pretrain", "sft"],
        description="Generators to score: reference generators by name (benchmark.generators.available()) "
                    "and trained ones by their folder under models/ (pretrain, sft, ...).")
    judge_set: Literal["eval", "reward"] = Field(
        "eval", description="Which judge set scores: 'eval' (independent of the rewards) or 'reward' (diagnostics).")
    seed: int = Field(0, description="Base seed of every generator call (row i uses seed + i).")
    per_subset: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Rows per subset to score (None = the whole benchmark).")
    grid_rows: Annotated[int, Field(ge=1, le=64)] = Field(8, description="Rows of each generator's sample grid.")
    sample_steps: Annotated[int, Field(ge=1)] | None = Field(
        None, description="ODE steps of trained generators (None = what each generator's folder records).")
    guidance: Annotated[float, Field(ge=1)] | None = Field(
        None, description="CFG scale of trained generators (None = what each generator's folder records).")
    compare: list[tuple[str, str]] = Field(
        default_factory=lambda: [("pretrain", "sft")],
        description="Pairs [baseline, candidate] of scored generators whose per-row differences are bootstrapped "
                    "(paired: the same bench rows) into a mean and 95% interval per subset and dimension.")
    bootstrap: Annotated[int, Field(ge=100)] = Field(2000, description="Bootstrap resamples of each comparison.")

    @field_validator("compare")
    @classmethod
    def _compared_are_scored(cls, v, info):
        scored = set(info.data.get("generators", []))
        for pair in v:
            missing = [g for g in pair if g not in scored]
            if missing:
                raise ValueError(f"compare names {missing}, which evaluate.generators does not score")
        return v


class GeneratorParams(Section):
    """The generator's architecture (FLUX.1 Kontext's transformer at a tiny size by default)."""

    patch: Annotated[int, Field(ge=1, le=16)] = Field(4, description="Pixels per patch side (tokens = (res/patch)^2).")
    width: Annotated[int, Field(ge=8)] = Field(128, description="Transformer width (heads x head dim).")
    heads: Annotated[int, Field(ge=1)] = Field(4, description="Attention heads.")
    double_blocks: Annotated[int, Field(ge=0)] = Field(2, description="FLUX double-stream (MMDiT) blocks.")
    single_blocks: Annotated[int, Field(ge=0)] = Field(4, description="FLUX single-stream blocks.")
    text_hidden: Annotated[int, Field(ge=8)] = Field(64, description="Width of the tiny CLIP text encoder.")
    text_layers: Annotated[int, Field(ge=1)] = Field(2, description="Layers of the tiny CLIP text encoder.")
    pretrained: str | None = Field(
        None, description="Real profile: a FLUX.1 Kontext folder or hub id (black-forest-labs/FLUX.1-Kontext-dev); "
                          "its weights are frozen and LoRA adapters trained. None = the tiny model from scratch.")
    lora_rank: Annotated[int, Field(ge=1)] = Field(16, description="LoRA rank of the real profile.")
    prediction: Literal["velocity", "sample"] = Field(
        "velocity", description="Transformer output: velocity (FLUX) or clean image (x-prediction, JiT).")
    sample_steps: Annotated[int, Field(ge=1)] = Field(
        20, description="ODE steps a trained generator samples with; recorded in its folder (sampling.json), where "
                        "the benchmark, the registered model and `subjectflow generate` read it.")
    guidance: Annotated[float, Field(ge=1)] = Field(
        2.5, description="CFG scale a trained generator samples with (1 = off); recorded in its folder like sample_steps.")

    @model_validator(mode="after")
    def _heads_divide_width(self):
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads} (width = heads x head dim)")
        if self.width // self.heads < 4:
            raise ValueError(f"width / heads = {self.width // self.heads}: a head needs at least 4 dimensions "
                             "(RoPE splits them over frame, row and column)")
        return self


def _yaml_no(v):
    """YAML 1.1 reads an unquoted ``no`` as false: take it for the string it was meant to be."""
    return "no" if v is False else v


class TrainingParams(Section):
    """What every training stage (pretrain, sft) shares: the loop (components/training) and the
    flow-matching objective (components/objectives). Each stage's own section adds what differs."""

    seed: int = Field(0, description="Seed of the initial weights and of every step's randomness.")
    batch_size: Annotated[int, Field(ge=1)] = Field(16, description="Samples per process and micro-step.")
    grad_accum: Annotated[int, Field(ge=1)] = Field(1, description="Micro-steps per optimizer step.")
    subject_weight: Annotated[float, Field(ge=1)] = Field(
        5.0, description="Loss weight of subject pixels (from the dataset's masks) relative to background.")
    mixed_precision: Annotated[Literal["no", "bf16", "fp16"], BeforeValidator(_yaml_no)] = Field(
        "no", description="accelerate mixed precision (an unquoted `no` counts as 'no').")
    # advanced
    warmup_steps: Annotated[int, Field(ge=0)] = Field(30, description="Linear warm-up, then cosine decay to 10%.")
    weight_decay: Annotated[float, Field(ge=0)] = Field(0.0, description="AdamW weight decay.")
    max_grad_norm: Annotated[float, Field(gt=0)] | None = Field(1.0, description="Gradient clipping (None = off).")
    drop_text: Annotated[float, Field(ge=0, le=1)] = Field(0.1, description="P(prompt dropped) for CFG.")
    drop_refs: Annotated[float, Field(ge=0, le=1)] = Field(0.05, description="P(references dropped) for CFG.")
    drop_both: Annotated[float, Field(ge=0, le=1)] = Field(0.05, description="P(both dropped) for CFG.")
    log_every: Annotated[int, Field(ge=1)] = Field(10, description="Steps between loss / LR / throughput logs.")
    grid_rows: Annotated[int, Field(ge=1, le=64)] = Field(8, description="Rows of each sample grid.")

    @field_validator("drop_both")
    @classmethod
    def _dropout_sums_to_at_most_one(cls, v, info):
        if v + info.data.get("drop_text", 0) + info.data.get("drop_refs", 0) > 1:
            raise ValueError("drop_text + drop_refs + drop_both must not exceed 1")
        return v


class StageTrainingParams(Section):
    """A training stage's own settings, on top of the shared ``training`` section."""

    steps: Annotated[int, Field(ge=1)] = Field(600, description="Optimizer steps.")
    lr: Annotated[float, Field(gt=0)] = Field(1e-3, description="Peak learning rate (AdamW).")
    ema_decay: Annotated[float, Field(gt=0, lt=1)] | None = Field(
        0.995, description="EMA of the weights, saved as the model (None = off; warm-up: training.EMA).")
    checkpoint_every: Annotated[int, Field(ge=0)] = Field(
        200, description="Resumable checkpoint every N steps in .checkpoints/ (0 = end only).")
    sample_every: Annotated[int, Field(ge=0)] = Field(400, description="Steps between sample grids (0 = end only).")


class PretrainParams(StageTrainingParams):
    """Single-subject personalization on data/single."""

    steps: Annotated[int, Field(ge=1)] = Field(3000, description="Optimizer steps.")
    lr: Annotated[float, Field(gt=0)] = Field(2e-3, description="Peak learning rate (AdamW).")
    ema_decay: Annotated[float, Field(gt=0, lt=1)] | None = Field(
        0.999, description="EMA of the weights, saved as the model (None = off; warm-up: training.EMA).")
    checkpoint_every: Annotated[int, Field(ge=0)] = Field(
        500, description="Resumable checkpoint every N steps in .checkpoints/ (0 = end only).")
    sample_every: Annotated[int, Field(ge=0)] = Field(500, description="Steps between sample grids (0 = end only).")


class TrainConfig(TrainingParams, StageTrainingParams):
    """One training stage's whole configuration: the shared section, the stage's own, and the
    generator's sampling settings (for its sample grids). Built by ``Params.train_config``."""

    sample_steps: int = 20
    guidance: float = 1.0


class MultisubjectParams(Section):
    """PSR's data bootstrapping: regenerate each subject of a multi-subject scene with the
    single-subject model and keep the pairs whose regenerations are consistent with it."""

    seed: int = Field(0, description="Seed of the new backgrounds and of the sampler.")
    max_scenes: Annotated[int, Field(ge=1)] | None = Field(1000, description="Scenes of data/multi used (None = all).")
    subset_weights: dict[str, Annotated[float, Field(gt=0)]] = Field(
        {"Three": 2.0, "Four": 3.0}, description="Relative weight of a subset's scenes when max_scenes are drawn (unnamed subsets: 1); "
        "pairs of more subjects survive the filter less often, so they can be drawn more.")
    judge_set: Literal["reward", "eval"] = Field(
        "reward", description="Judges that ground and filter: must be the reward set (checked; the eval set never "
                              "sees the training signal).")
    threshold: Annotated[float, Field(ge=-1, le=1)] = Field(
        0.6, description="Minimum encoder cosine between a regenerated reference and its subject.")
    subject_size: Annotated[int, Field(ge=4)] = Field(
        20, description="Side in pixels of the subject crop given to the single-subject model, centred.")
    in_place: Annotated[float, Field(ge=0, le=1)] = Field(
        0.5, description="Share of the scenes whose subjects are handed to the model where they sit in the scene "
        "(alone, the surround continued from the box) rather than re-centred at subject_size: their references "
        "show each subject at its target placement.")
    batch_size: Annotated[int, Field(ge=1)] = Field(64, description="Regenerations per sampler call.")
    candidates: Annotated[int, Field(ge=1)] = Field(
        6, description="Most redraws per subject (other seeds): it is redrawn until one passes the threshold.")
    sample_steps: Annotated[int, Field(ge=1)] | None = Field(
        None, description="ODE steps per regeneration (None = what the single-subject model's folder records).")
    guidance: Annotated[float, Field(ge=1)] | None = Field(
        None, description="CFG scale of the regenerations (None = what the single-subject model's folder records).")
    grid_rows: Annotated[int, Field(ge=1, le=64)] = Field(8, description="Rows of the kept / dropped example grids.")
    recompose: dict[str, Annotated[int, Field(ge=0)]] = Field(
        {"Three": 300, "Four": 300}, description="Pairs per task rendered anew with the identities whose reference passed, each with "
        "its passing reference (a k-subject scene keeps only when all k pass, so many-subject pairs are scarce).")
    recompose_layout: Literal["as_given", "slots"] = Field(
        "slots", description="Layout of the recomposed pairs: as_given = the world's free layout, references as "
        "they passed; slots = subject k in slot k of a fixed arrangement, its re-centred reference shrunk into the "
        "same slot (models/layout.py); the trained generator then packs three or four references the same way.")

    @field_validator("subset_weights", "recompose")
    @classmethod
    def _known_subsets(cls, v):
        return known_tasks(v, "subset")

    @model_validator(mode="after")
    def _slots_fit(self):
        from .models.layout import SLOTS
        from .world.scenes import N_SUBJECTS

        if self.recompose_layout == "slots":
            bad = [t for t, n in self.recompose.items() if n and N_SUBJECTS[t] not in SLOTS]
            if bad:
                raise ValueError(f"recompose_layout 'slots' has slots for {sorted(SLOTS)} subjects only; "
                                 f"recompose names {bad}")
        return self


class SftParams(StageTrainingParams):
    """Multi-subject SFT: the shared loop on the bootstrapped data, from the pretrained weights."""

    ref_count_probs: dict[Annotated[int, Field(ge=1)], Annotated[float, Field(ge=0)]] = Field(
        {1: 0.2, 2: 0.2, 3: 0.25, 4: 0.35}, description="Probability of a batch with 2, 3 or 4 references; "
        "1 = a batch of single-subject pairs from data/single (replay).")

    @field_validator("ref_count_probs")
    @classmethod
    def _some_probability(cls, v):
        if not v or sum(v.values()) <= 0:
            raise ValueError("at least one reference count needs a positive probability")
        return v


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
