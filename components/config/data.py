"""Sections of the data stages: synthesize, validate, judges and the benchmark (evaluate)."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from ..world import TASKS
from .base import Section, known_tasks

# The benchmark's reference generators (components/benchmark/generators.py registers exactly
# these, and checks so when imported): named here so that params.yaml is checked without
# importing the benchmark and its torch-heavy dependencies into every stage.
REFERENCE_GENERATORS = ("background_only", "copy_paste", "noise", "oracle")
# Pixels per patch side of the trained subject encoder (components/judging/encoder.py PATCH).
ENCODER_PATCH = 4
# The trained grounder's deepest feature map is 1/4 of the image, upsampled back to 1/2 and added
# to the 1/2 one (components/judging/grounding.py): the image side must divide by 4.
GROUNDER_STRIDE = 4

MODEL_SPEC = ("a Hugging Face hub id (org/name: found in the local cache, else on the hub) or a path to a "
              "save_pretrained folder; a relative path is read from the project folder (the folder of "
              "params.yaml, where DVC runs every stage). Checked when params.yaml is loaded.")


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
    wild_per_subset: Annotated[int, Field(ge=0)] = Field(
        50, description="Benchmark rows per subset (the first ones) also drawn with wild references (data/wild: the "
                        "same targets and prompts, each reference small, off-centre, rotated or oddly posed, on a "
                        "busy background); capped at the subset's size.")
    serial_identities: Annotated[int, Field(ge=0)] = Field(
        44, description="Held-out identities of the serial set (data/serial; categories in turn, the person among "
                        "them): each one wild reference and serial_prompts single-subject prompts.")
    serial_prompts: Annotated[int, Field(ge=2)] = Field(4, description="Prompts per identity of the serial set.")
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

    def wild_size(self, subset: str) -> int:
        """Rows of ``subset`` in the wild-reference variant (its first ones)."""
        return min(self.wild_per_subset, self.bench_size(subset))


class ValidateParams(Section):
    """The validate stage: the Great Expectations gate on every manifest."""

    decode_images: bool = Field(True, description=(
        "Open every PNG: it decodes at the stated size and mode, masks hold the row's labels and match its boxes, "
        "and no training image is a byte copy of a benchmark image (false: paths and existence only)."))
    min_samples: Annotated[int, Field(ge=0)] = Field(1, description="Fewest rows a dataset may have.")
    report_rows: Annotated[int, Field(ge=1)] = Field(20, description="Failing row ids listed per expectation.")


class JudgesParams(Section):
    """The judges stage: two independent judge sets (reward, eval) trained on disjoint halves of
    the synthesized data with different seeds; or real pretrained models named by id or path."""

    reward_seed: int = Field(101, description="Seed of the reward judge set (trained on even rows).")
    eval_seed: int = Field(202, description="Seed of the evaluation judge set (trained on odd rows).")
    max_rows: Annotated[int, Field(ge=2)] | None = Field(
        None, description="Rows read per dataset for training (None = all).")
    crop_size: Annotated[int, Field(ge=8, le=256, multiple_of=ENCODER_PATCH)] = Field(
        32, description=f"Side of the subject crops the encoder reads (a multiple of {ENCODER_PATCH}: the trained "
                        f"encoder cuts them into {ENCODER_PATCH}-pixel patches).")
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
    encoder_model: Annotated[str, Field(min_length=1)] | None = Field(
        None, description="Use a pretrained transformers vision model (DINO ViT, DINOv2, CLIP) instead of the trained "
                          "encoder: " + MODEL_SPEC)
    grounder_model: Annotated[str, Field(min_length=1)] | None = Field(
        None, description="Use a pretrained zero-shot detector (OWL-ViT, OWLv2, Grounding DINO) instead of the trained "
                          "grounder: " + MODEL_SPEC)


class EvaluateParams(Section):
    """The evaluate stage: the PSRBench-style benchmark on the `bench` dataset, its rows with wild
    references (`wild`) and the serial set (`serial`)."""

    generators: list[str] = Field(
        default_factory=lambda: ["oracle", "copy_paste", "background_only", "noise", "pretrain", "sft", "sft_std", "rl",
                                 "patchdpo"],
        min_length=1,
        description=f"Generators to score, each once: reference generators by name {list(REFERENCE_GENERATORS)} and "
                    "trained ones by their folder under models/: one a dvc.yaml stage produces (pretrain, sft, ...) "
                    "or one already there (holding generator_config.json). Checked when params.yaml is loaded.")
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
    sample_precision: Literal["fp32", "bf16"] | None = Field(
        None, description="Sampling precision of every trained generator (None = what each one's folder records).")
    compare: list[tuple[str, str]] = Field(
        default_factory=lambda: [("pretrain", "sft"), ("sft", "rl"), ("sft", "sft_std"), ("sft", "patchdpo")],
        description="Pairs [baseline, candidate] of scored generators whose per-row differences are bootstrapped "
                    "(paired: the same bench rows) into a mean and 95% interval per subset and dimension.")
    bootstrap: Annotated[int, Field(ge=100)] = Field(2000, description="Bootstrap resamples of each comparison.")

    @field_validator("generators")
    @classmethod
    def _names_once(cls, v):
        twice = sorted({g for g in v if v.count(g) > 1})
        if twice:
            raise ValueError(f"{twice} listed more than once: each generator's scores are one entry of the metrics")
        paths = [g for g in v if "/" in g or "\\" in g or g in (".", "..")]
        if paths:
            raise ValueError(f"{paths} are paths: name a trained generator by its folder under models/ "
                             "(its name keys the metrics and the report files)")
        return v

    @field_validator("compare")
    @classmethod
    def _compared_are_scored(cls, v, info):
        scored = set(info.data.get("generators", []))
        for pair in v:
            missing = [g for g in pair if g not in scored]
            if missing:
                raise ValueError(f"compare names {missing}, which evaluate.generators does not score")
            if pair[0] == pair[1]:
                raise ValueError(f"compare pairs {pair[0]!r} with itself: a pair is [baseline, candidate]")
        return v
