"""Sections of the generator and its training stages: the architecture and sampling settings, the
shared training block, pretrain, multisubject bootstrapping and sft."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from ..world.scenes import N_SUBJECTS
from .base import Section, known_tasks

# The rewards an RL stage can weigh (judging/rewards.py's registry, less ``mix``, which is the
# weighting itself; tests/test_rl.py checks the two agree): named here so that validating
# params.yaml does not import the judges.
RL_REWARDS = ("aesthetic", "confusion", "psr", "semantic")
# Reference counts a training batch can have: 1 (data/single) or a PSR task's subject count.
REF_COUNTS = sorted({1, *N_SUBJECTS.values()})


class GeneratorParams(Section):
    """The generator's architecture (FLUX.1 Kontext's transformer at a tiny size by default)."""

    patch: Annotated[int, Field(ge=1, le=16)] = Field(4, description="Pixels per patch side (tokens = (res/patch)^2).")
    width: Annotated[int, Field(ge=8)] = Field(128, description="Transformer width (heads x head dim).")
    heads: Annotated[int, Field(ge=1)] = Field(4, description="Attention heads.")
    double_blocks: Annotated[int, Field(ge=0)] = Field(2, description="FLUX double-stream (MMDiT) blocks.")
    single_blocks: Annotated[int, Field(ge=0)] = Field(4, description="FLUX single-stream blocks.")
    text_hidden: Annotated[int, Field(ge=8)] = Field(64, description="Width of the tiny CLIP text encoder.")
    text_layers: Annotated[int, Field(ge=1)] = Field(2, description="Layers of the tiny CLIP text encoder.")
    text_tokens: Annotated[int, Field(ge=8, le=512)] = Field(
        32, description="Tokens the tiny text encoder reads (prompts padded to it; the world's longest prompt has 29). "
                        "Every token is attended by every image token: 48 cost 17% more per training step.")
    pretrained: Annotated[str, Field(min_length=1)] | None = Field(
        None, description="Real profile: FLUX.1 Kontext in diffusers' layout (transformer/, vae/, text_encoder/, "
                          "text_encoder_2/, tokenizer/, tokenizer_2/), by hub id (black-forest-labs/FLUX.1-Kontext-dev: "
                          "found in the local cache, else on the hub) or by path (a relative path is read from the "
                          "project folder, where DVC runs every stage); checked when params.yaml is loaded. Its weights "
                          "are frozen and LoRA adapters trained. None = the tiny model from scratch.")
    lora_rank: Annotated[int, Field(ge=1)] = Field(16, description="LoRA rank of the real profile.")
    prediction: Literal["velocity", "sample"] = Field(
        "velocity", description="Transformer output: velocity (FLUX) or clean image (x-prediction, JiT).")
    sample_steps: Annotated[int, Field(ge=1)] = Field(
        20, description="ODE steps a trained generator samples with; recorded in its folder (sampling.json), where "
                        "the benchmark, the registered model and `subjectflow generate` read it.")
    guidance: Annotated[float, Field(ge=1)] = Field(
        2.5, description="CFG scale a trained generator samples with (1 = off); recorded in its folder like sample_steps.")
    sample_precision: Literal["fp32", "bf16"] = Field(
        "bf16", description="Precision of the transformer when a trained generator samples (bf16 = under bf16 "
                            "autocast, the integrated state kept in fp32); recorded in its folder like sample_steps.")

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
        "bf16", description="accelerate mixed precision: bf16 autocast with fp32 master weights (an unquoted `no` counts as 'no').")
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
    compile: bool = Field(
        False, description="torch.compile the transformer for training: faster steps after a compilation of 40-90 s "
                           "per input shape on 2 cores (cached on disk); worth it for long runs of one shape.")


class PretrainParams(StageTrainingParams):
    """Single-subject personalization on data/single."""

    steps: Annotated[int, Field(ge=1)] = Field(3000, description="Optimizer steps.")
    lr: Annotated[float, Field(gt=0)] = Field(2e-3, description="Peak learning rate (AdamW).")
    ema_decay: Annotated[float, Field(gt=0, lt=1)] | None = Field(
        0.999, description="EMA of the weights, saved as the model (None = off; warm-up: training.EMA).")
    checkpoint_every: Annotated[int, Field(ge=0)] = Field(
        500, description="Resumable checkpoint every N steps in .checkpoints/ (0 = end only).")
    sample_every: Annotated[int, Field(ge=0)] = Field(500, description="Steps between sample grids (0 = end only).")
    compile: bool = Field(
        True, description="torch.compile the transformer for training: 1.3-1.4x faster steps after a compilation of "
                          "about 45 s (one shape: batches of one reference); docs/performance.md.")


class TrainConfig(TrainingParams, StageTrainingParams):
    """One training stage's whole configuration: the shared section, the stage's own, and the
    generator's sampling settings (for its sample grids). Built by ``Params.train_config``."""

    sample_steps: int = 20
    guidance: float = 1.0
    sample_precision: str = "fp32"


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
    sample_precision: Literal["fp32", "bf16"] | None = Field(
        None, description="Sampling precision of the regenerations (None = what the single-subject model's folder records).")
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
        from ..models.layout import SLOTS

        if self.recompose_layout == "slots":
            bad = [t for t, n in self.recompose.items() if n and N_SUBJECTS[t] not in SLOTS]
            if bad:
                raise ValueError(f"recompose_layout 'slots' has slots for {sorted(SLOTS)} subjects only; "
                                 f"recompose names {bad}")
        return self


class StandardizerParams(StageTrainingParams):
    """SerialGen's stage I: a reference analyser (segmenter and pose estimator), then the
    standardizer, an in-context generator trained from scratch on data/standardize."""

    steps: Annotated[int, Field(ge=1)] = Field(3000, description="Optimizer steps of the standardizer.")
    lr: Annotated[float, Field(gt=0)] = Field(2e-3, description="Peak learning rate (AdamW).")
    ema_decay: Annotated[float, Field(gt=0, lt=1)] | None = Field(
        0.995, description="EMA of the weights, saved as the model (None = off; warm-up: training.EMA).")
    checkpoint_every: Annotated[int, Field(ge=0)] = Field(
        1000, description="Resumable checkpoint every N steps in .checkpoints/ (0 = end only).")
    sample_every: Annotated[int, Field(ge=0)] = Field(1000, description="Steps between sample grids (0 = end only).")
    fbdm: bool = Field(True, description="FBDM's analogue: learned foreground / background embeddings added to the "
                                         "reference's tokens by the analyser's mask share of each token.")
    rpim: bool = Field(True, description="RPIM's analogue: the analyser's pose estimate, through a small MLP, added "
                                         "to the reference's tokens.")
    objects: Literal["warp", "cut", "generate"] = Field(
        "cut", description="How an object reaches its standard view. warp = cut out by the analyser's mask, its "
        "rotation undone, centred and scaled to the training standard views' size, on the plain background. cut = the "
        "same, not turned (the pose estimator is 45 degrees off on held-out objects). generate = redrawn like the "
        "person, which turned objects into blobs (docs/experiments/serialgen.md). The person is always redrawn.")
    seed: int = Field(0, description="Seed of the analyser and of the held-out evaluation pairs.")
    analyser_steps: Annotated[int, Field(ge=1)] = Field(1500, description="Steps of the reference analyser.")
    analyser_lr: Annotated[float, Field(gt=0)] = Field(3e-3, description="Peak learning rate of the analyser.")
    analyser_batch_size: Annotated[int, Field(ge=1)] = Field(64, description="Batch of the analyser.")
    eval_rows: Annotated[int, Field(ge=1)] = Field(
        240, description="Held-out standardization pairs (benchmark identities, rendered by the stage) it is scored on.")
    grid_rows: Annotated[int, Field(ge=1, le=64)] = Field(12, description="Rows of the held-out grid.")


class SftParams(StageTrainingParams):
    """Multi-subject SFT: the shared loop on the bootstrapped data, from the pretrained weights."""

    standardize_refs: bool = Field(False, description="SerialGen's stage II: every reference is first standardized by "
                                   "models/standardizer (frozen), which the model carries and samples through.")
    standardize_from: Literal["target", "reference"] = Field(
        "target", description="What the standardizer reads for a training reference. target = the target's own "
        "subject, as PSR's redraw was handed it (re-centred, or in place with placement keep). reference = PSR's "
        "redraw, a style the standardizer was not trained on (docs/experiments/serialgen.md, section 5).")
    standardize_placement: Literal["keep", "centre"] = Field(
        "keep", description="Where a standardized reference shows its subject. keep = where the reference showed it, "
        "as large (this generator takes each subject's place from its reference); centre = SerialGen's canonical view.")
    standardize_min_extent: Annotated[float, Field(ge=0, le=1)] = Field(0.36, description="With keep, a subject whose "
        "box's longer side is under this share of the side is enlarged to it (0: never). Both recorded in the model.")

    ref_count_probs: dict[Annotated[int, Field(ge=1)], Annotated[float, Field(ge=0)]] = Field(
        {1: 0.2, 2: 0.2, 3: 0.25, 4: 0.35}, description="Probability of a batch with 2, 3 or 4 references; "
        "1 = a batch of single-subject pairs from data/single (replay). A count given a positive probability must be "
        "one the data can hold (synthesize.multi_tasks or multisubject.recompose has a task of that many subjects).")

    @field_validator("ref_count_probs")
    @classmethod
    def _some_probability(cls, v):
        if not v or sum(v.values()) <= 0:
            raise ValueError("at least one reference count needs a positive probability")
        never = sorted(k for k in v if k not in REF_COUNTS)
        if never:
            raise ValueError(f"no data holds pairs with {never} references; the counts are {REF_COUNTS}")
        return v


class RLParams(Section):
    """PSR's RL stage: Flow-GRPO on the SFT generator with the reward judges' rewards."""

    seed: int = Field(0, description="Seed of the rollouts, the probe and the adapter's initial weights.")
    steps: Annotated[int, Field(ge=1)] = Field(
        60, description="Optimizer steps; an iteration (one collection) gives batches x inner_epochs / grad_accum of them.")
    lr: Annotated[float, Field(gt=0)] = Field(3e-4, description="Peak learning rate (AdamW; warm-up, then cosine to 10%).")
    warmup_steps: Annotated[int, Field(ge=0)] = Field(0, description="Linear warm-up steps.")
    ema_decay: Annotated[float, Field(gt=0, lt=1)] | None = Field(
        0.9, description="EMA of the policy, saved as the model and probed (None = off; warm-up: training.EMA).")
    rewards: dict[str, Annotated[float, Field(gt=0)]] = Field(
        {"psr": 0.4, "semantic": 0.4, "aesthetic": 0.2},
        description="Rewards (judging/rewards.py registry names) and their weights; PSR's mix by default.")
    psr_misses: Literal["zero", "graded"] = Field(
        "zero", description="How the PSR reward scores a subject its grounder misses: zero (PSR's, and the benchmark's "
                            "SC) or graded (the crop at the below-threshold candidate box, its cosine times "
                            "confidence / threshold). The evaluation judges always use zero.")
    objective: Literal["flow_grpo", "weighted_fm"] = Field(
        "flow_grpo", description="flow_grpo: Flow-GRPO's clipped ratio on the SDE window's log-probabilities; "
                                 "weighted_fm: advantage-weighted flow matching on the finished rollouts (DiffusionNFT's "
                                 "on-policy gradient; likelihood-free). docs/experiments/rl.md compares them.")
    advantage: Literal["per_reward", "sum"] = Field(
        "per_reward", description="per_reward: each reward normalised within its group, then weighted (the weights "
                                  "mean what they say); sum: Flow-GRPO's weighted sum normalised within its group.")
    advantage_scale: Literal["group", "batch"] = Field(
        "group", description="What a sample's deviation from its group's mean is divided by: the group's std (group, "
                             "GRPO's) or the within-group std pooled over the iteration's groups that vary (batch; "
                             "not Flow-GRPO's global_std, the batch's total std): groups that barely differ then "
                             "keep small advantages.")
    group_size: Annotated[int, Field(ge=2)] = Field(6, description="G: samples per group (one prompt with its references).")
    groups_per_batch: Annotated[int, Field(ge=1)] = Field(4, description="Groups in one training batch.")
    batches: Annotated[int, Field(ge=1)] = Field(2, description="Training batches rolled out per iteration.")
    grad_accum: Annotated[int, Field(ge=1)] = Field(2, description="Batches per optimizer step.")
    inner_epochs: Annotated[int, Field(ge=1)] = Field(1, description="Passes over each iteration's rollouts.")
    rollout_steps: Annotated[int, Field(ge=2)] = Field(
        10, description="Sampler steps of a rollout (the benchmark samples with generator.sample_steps).")
    rollout_guidance: Annotated[float, Field(ge=1)] | None = Field(
        None, description="CFG scale of rollouts and of the trained steps (None = the SFT model's generator.guidance; "
                          "1 = no CFG: one transformer call per step instead of two).")
    window_size: Annotated[int, Field(ge=1)] = Field(2, description="SDE steps per rollout: the steps trained.")
    window_range: tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=1)]] = Field(
        (0, 5), description="The window starts at a step drawn in [lo, hi) per iteration; ODE before and after it.")
    eta: Annotated[float, Field(gt=0)] = Field(0.7, description="Noise level a of the SDE (Flow-GRPO's 0.7).")
    clip_range: Annotated[float, Field(gt=0)] = Field(1e-3, description="PPO ratio clip epsilon.")
    adv_clip: Annotated[float, Field(gt=0)] = Field(5.0, description="Advantages clipped to +-this.")
    beta: Annotated[float, Field(ge=0)] = Field(0.01, description="KL weight (closed-form Gaussian KL to the SFT model).")
    ref_count_probs: dict[Annotated[int, Field(ge=2)], Annotated[float, Field(ge=0)]] = Field(
        {2: 0.3, 3: 0.35, 4: 0.35}, description="Probability that an iteration's groups have 2, 3 or 4 references.")
    probe_rows: Annotated[int, Field(ge=1)] = Field(
        96, description="Held-out training rows (never trained on) the probe samples and scores.")
    probe_every: Annotated[int, Field(ge=1)] = Field(10, description="Steps between probes (a multiple divides steps).")
    guard_threshold: Annotated[float, Field(ge=0)] = Field(
        0.03, description="Reward hacking is flagged when, since the best evaluation probe, the reward judges' mix rose "
                          "more than this while the evaluation judges' mix fell more than this.")
    output: Literal["guarded", "best", "last"] = Field(
        "guarded", description="The saved model: guarded = the last EMA, or the best-probed one if hacking was "
                               "flagged; best = the best-probed EMA; last = the last EMA.")
    lora_rank: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Rank of the LoRA adapter RL trains on the transformer's attention projections (PSR: 64 on "
                        "FLUX), over the frozen SFT adapter in the real profile; the KL's reference is the network with "
                        "it off. None = the tiny profile's whole transformer (its reference a frozen copy; the real profile then uses "
                        "generator.lora_rank).")
    checkpoint_every: Annotated[int, Field(ge=0)] = Field(10, description="Resumable checkpoint every N steps.")
    judge_set: Literal["reward"] = Field("reward", description="Judges that give the rewards (the reward set).")

    @field_validator("rewards")
    @classmethod
    def _known_rewards(cls, v):
        unknown = sorted(set(v) - set(RL_REWARDS))
        if unknown:
            raise ValueError(f"unknown reward(s) {unknown}: name them among {list(RL_REWARDS)} with their weights "
                             "(the weighting is the mix)")
        if not v:
            raise ValueError("name at least one reward")
        return v

    @model_validator(mode="after")
    def _shapes(self):
        lo, hi = self.window_range
        if hi <= lo or hi - 1 + self.window_size > self.rollout_steps - 1:
            raise ValueError(f"window_range {list(self.window_range)} with window_size {self.window_size} must keep the "
                             f"SDE window inside the first {self.rollout_steps - 1} of rollout_steps {self.rollout_steps} "
                             "(never the last step)")
        if self.batches * self.inner_epochs % self.grad_accum:
            raise ValueError(f"batches x inner_epochs ({self.batches} x {self.inner_epochs}) must be a multiple of "
                             f"grad_accum {self.grad_accum}: an iteration fills whole optimizer steps")
        if self.steps % self.steps_per_iteration:
            raise ValueError(f"steps {self.steps} must be a multiple of the {self.steps_per_iteration} optimizer "
                             "steps of an iteration")
        if not any(p > 0 for p in self.ref_count_probs.values()):
            raise ValueError("ref_count_probs needs a positive probability")
        return self

    @property
    def steps_per_iteration(self) -> int:
        return self.batches * self.inner_epochs // self.grad_accum


class PatchDPOParams(StageTrainingParams):
    """PatchDPO on the SFT generator: its own images for training rows, their patch quality read
    by the reward judges' encoder (patchdpo_data), and patch-weighted training (patchdpo)."""

    seed: int = Field(0, description="Seed of the rows drawn and of their images' noise.")
    rows: Annotated[int, Field(ge=1)] = Field(
        1200, description="Training rows of data/multisubject the SFT model draws for (all of them when fewer).")
    samples_per_row: Annotated[int, Field(ge=1)] = Field(
        2, description="Images per row, each with its own noise (image-level DPO pairs two of them).")
    judge_set: Literal["reward"] = Field(
        "reward", description="Judges whose encoder scores the patches (the reward set: the eval set only scores "
                              "the benchmark).")
    good_quantile: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.1, description="The threshold between good and bad patches: this quantile of the patch qualities of the "
                         "rows' own targets against their references.")
    negative_clamp: Annotated[float, Field(ge=0)] = Field(
        0.3, description="Negative weights of bad generated patches are clamped at -this (the loss is unbounded "
                         "below without it).")
    background_weight: Annotated[float, Field(ge=0)] = Field(
        1.0, description="Weight of the generated image's pixels off every subject (the subjects' weights are "
                         "times subject_weight, below).")
    subject_weight: Annotated[float, Field(ge=0)] | None = Field(
        1.0, description="patch and its control: the factor on the subjects' pixel weights of both images; 1 = the "
                         "patch map alone, as the paper; null = training.subject_weight, as SFT weighs subject pixels "
                         "(higher SC, lower AES: docs/experiments/patchdpo.md, run 4).")
    reference_weights: Literal["calibrated", "raw"] = Field(
        "calibrated", description="patch: the reference's 1 - M_ref with M_ref its quality map calibrated as the "
                                  "output's (0 for a patch the output reproduced, 1 at the threshold, up to "
                                  "1 + negative_clamp for one it lost), or raw: 1 - the quality itself, clipped to [0, 1].")
    missed_references: bool = Field(
        False, description="patch and its control: also train on the references of subjects the grounder missed in "
                           "the output (quality 0 over them, so they weigh most); off, a pair's reference is one of "
                           "the subjects found in its output.")
    normalize_weights: bool = Field(
        False, description="patch: scale the subjects' weights of the outputs and of the references so that each "
                           "averages the subject weight (above) over the pairs, as the control's do: the patch map then "
                           "moves where the loss looks, not how much of it there is.")
    objective: Literal["patch", "flow_matching", "image_dpo"] = Field(
        "patch", description="patch: PatchDPO's patch-weighted loss; flow_matching: the same pairs with every patch "
                             "weight 1 (subjects subject_weight, the rest 1: SFT's flow matching when subject_weight "
                             "is null; the same-pairs control); image_dpo: image-level Diffusion-DPO on the two samples of "
                             "a row, ranked by their image-level patch quality.")
    beta: Annotated[float, Field(gt=0)] = Field(
        500.0, description="Diffusion-DPO's beta (image_dpo only), on per-sample mean squared velocity errors.")
    min_gap: Annotated[float, Field(ge=0)] = Field(
        0.02, description="image_dpo: a row's two samples make a pair only when their image-level quality differs "
                          "by more than this.")
    steps: Annotated[int, Field(ge=1)] = Field(300, description="Optimizer steps.")
    lr: Annotated[float, Field(gt=0)] = Field(2e-4, description="Peak learning rate (AdamW).")
    ema_decay: Annotated[float, Field(gt=0, lt=1)] | None = Field(
        0.99, description="EMA of the weights, saved as the model (None = off).")
    checkpoint_every: Annotated[int, Field(ge=0)] = Field(
        100, description="Resumable checkpoint every N steps in .checkpoints/ (0 = end only).")
    sample_every: Annotated[int, Field(ge=0)] = Field(150, description="Steps between sample grids (0 = end only).")
