"""Fitting a generator to a dataset with the trainer and the flow-matching objective: what
pretrain and sft have in common.

A dataset is read once into memory (targets, prompts, references grouped by how many a row
has; at 32 px the whole of ``single`` is a few MB). Each step draws a batch of rows with the same
number of references, so a batch is one token sequence length. Step metrics (loss, every term of
the objective, learning rate, throughput) go to the stage's MLflow run when the flow started it,
and a sample grid every ``sample_every`` steps to ``reports/<stage>/samples/`` and MLflow.
Checkpoints live outside the DVC outputs, in ``<checkpoints>/<stage>-<fingerprint>``, keyed by
the stage's config, architecture, data and initial weights, so a crashed stage rerun by DVC
resumes where it stopped and a changed stage starts afresh.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..config import GeneratorParams, Params, TrainConfig
from ..data.grids import grid, load_rgb
from ..data.manifest import MANIFEST, read_manifest
from ..models.generator import GeneratorConfig, SubjectGenerator
from ..models.sampling import SamplingSettings
from ..objectives import FlowMatching, FlowMatchingBatch
from ..pipeline.tracking import StepLogger
from .loop import LoopConfig, Trainer, process_state


@dataclass
class Pairs:
    """Rows of a dataset in memory: targets (N, H, W, 3), prompts, references per row.
    ``layouts``: per row, the layout its references are still to be arranged in once standardized
    (rows rebuilt from their targets where the data packed them); None: every row's references
    are already arranged as the generator reads them (a dataset as stored)."""

    targets: np.ndarray
    masks: np.ndarray  # (N, H, W) uint8 label maps: 0 background, k + 1 subject k
    prompts: list[str]
    refs: list[list[np.ndarray]]
    ids: list[str]
    layouts: list[str] | None = None

    def pending_layouts(self) -> list[str]:
        return self.layouts if self.layouts is not None else ["as_given"] * len(self)

    def __len__(self) -> int:
        return len(self.prompts)

    def by_ref_count(self) -> dict[int, np.ndarray]:
        """Row indices grouped by their number of references."""
        counts = np.array([len(r) for r in self.refs])
        return {int(k): np.flatnonzero(counts == k) for k in np.unique(counts)}


def load_pairs(dataset_dir: str | Path, manifest: pd.DataFrame | None = None) -> Pairs:
    d = Path(dataset_dir)
    m = read_manifest(d) if manifest is None else manifest
    return Pairs(np.stack([load_rgb(d / t) for t in m.target]), np.stack([_label_map(d / p) for p in m["mask"]]),
                 list(m.prompt),
                 [[load_rgb(d / r) for r in refs] for refs in m.refs], list(m.id))


def concat_pairs(*parts: Pairs) -> Pairs:
    """One dataset of several, rows in the given order."""
    return Pairs(np.concatenate([p.targets for p in parts]), np.concatenate([p.masks for p in parts]),
                 [x for p in parts for x in p.prompts], [x for p in parts for x in p.refs],
                 [x for p in parts for x in p.ids],
                 None if all(p.layouts is None for p in parts) else [x for p in parts for x in p.pending_layouts()])


def _label_map(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def build_generator(gen: GeneratorParams, resolution: int, seed: int) -> SubjectGenerator:
    if gen.pretrained:  # the real profile: FLUX.1 Kontext + LoRA
        from ..models.flux import from_flux

        return from_flux(gen.pretrained, resolution, gen.lora_rank, seed=seed)
    return SubjectGenerator.tiny(GeneratorConfig(resolution=resolution, patch=gen.patch, prediction=gen.prediction), width=gen.width,
                                 double_blocks=gen.double_blocks, single_blocks=gen.single_blocks, heads=gen.heads,
                                 text_hidden=gen.text_hidden, text_layers=gen.text_layers,
                                 text_tokens=gen.text_tokens, seed=seed)


def fingerprint(*parts) -> str:
    """A short hash of JSON-able parts (params, data digests)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def checkpoint_folder(root: str | Path, stage: str, fp: str) -> Path:
    """``root/<stage>-<fp>``, the checkpoints of this configuration of ``stage``; those of any
    other fingerprint (a parameter set abandoned) are removed, by the main process."""
    folder = Path(root) / f"{stage}-{fp}"
    if process_state().is_main_process:
        for old in folder.parent.glob(f"{stage}-" + "?" * len(fp)):
            if old != folder and old.is_dir():
                print(f"{stage}: removing {old}, the checkpoints of an earlier configuration", flush=True)
                shutil.rmtree(old, ignore_errors=True)
    return folder


def data_digest(dataset_dir: str | Path) -> str:
    return hashlib.md5((Path(dataset_dir) / MANIFEST).read_bytes()).hexdigest()



def sample_grid(model: SubjectGenerator, data: Pairs, rows: np.ndarray, cfg: TrainConfig, caption: str) -> Image.Image:
    """References | sample for ``rows`` of ``data`` (grouped by reference count for sampling)."""
    images: dict[int, np.ndarray] = {}
    groups: dict[int, list[int]] = {}
    for i in rows:
        groups.setdefault(len(data.refs[i]), []).append(int(i))
    for idx in groups.values():
        out = model.sample([data.prompts[i] for i in idx], [data.refs[i] for i in idx], steps=cfg.sample_steps,
                           guidance=cfg.guidance, seed=cfg.seed, precision=cfg.sample_precision)["images"]
        images.update(zip(idx, out))
    model.train()
    return grid([(data.refs[i], images[int(i)], f"{caption}: {data.prompts[i]}") for i in rows])


def encode_pairs(model: SubjectGenerator, data: Pairs, groups: dict[int, np.ndarray], batch: int = 256):
    """Every target, and every group's references, in the model's space, computed once: a
    frozen autoencoder would otherwise encode the same images at every step. Returns targets
    (N, C, S, S) and {k: (rows with k refs, k, C, S, S)} in the order of ``groups[k]``."""
    def enc(images):
        return torch.cat([model.encode_images(images[i:i + batch]) for i in range(0, len(images), batch)]) \
            if len(images) else None

    targets = enc(data.targets)
    refs = {}
    for k, rows in groups.items():
        flat = [im for i in rows for im in data.refs[i]]
        z = enc(np.stack(flat)) if k else targets.new_zeros(len(rows), 0, *targets.shape[1:])
        refs[k] = z.reshape(len(rows), k, *targets.shape[1:]) if k else z
    return targets, refs


class _BatchDraw:
    """``make_batch`` of the trainer: each micro-step picks a reference count with ``probs``, then
    ``batch_size`` rows with that many references. Counts the batches of each reference count,
    checkpointed with the training state so a resumed run reports the whole run's."""

    def __init__(self, data: Pairs, groups: dict[int, np.ndarray], probs: np.ndarray, targets, refs, batch_size: int):
        self.data, self.groups, self.probs, self.targets, self.refs = data, groups, probs, targets, refs
        self.counts, self.batch_size = sorted(groups), batch_size
        self.drawn = {k: 0 for k in self.counts}

    def __call__(self, rng, gen) -> FlowMatchingBatch:
        k = self.counts[int(rng.choice(len(self.counts), p=self.probs))]
        self.drawn[k] += 1
        pick = rng.choice(len(self.groups[k]), size=self.batch_size)
        idx = self.groups[k][pick]
        return FlowMatchingBatch(self.targets[idx], [self.data.prompts[i] for i in idx], self.refs[k][pick],
                                 self.data.masks[idx])

    def state_dict(self) -> dict:
        return {"drawn": {str(k): v for k, v in self.drawn.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.drawn = {k: int(state["drawn"].get(str(k), 0)) for k in self.counts}


def fit_generator(stage: str, model: SubjectGenerator, data: Pairs, cfg: TrainConfig, out: Path, reports: Path,
                  checkpoints: Path, ref_count_probs: dict[int, float] | None = None,
                  grid_pool: int | None = None) -> dict:
    """Train ``model`` on ``data`` with the shared loop; save it to ``out`` (save_pretrained)
    and return the stage metrics. ``ref_count_probs`` picks each batch's reference count (SFT's
    1/2/3/4 with configurable probabilities); by default in proportion to the rows. The sample
    grids show rows among the first ``grid_pool`` (default: all)."""
    groups = data.by_ref_count()
    counts = sorted(groups)
    if ref_count_probs:
        missing = [k for k in ref_count_probs if k not in groups and ref_count_probs[k] > 0]
        probs = np.array([ref_count_probs.get(k, 0.0) for k in counts], dtype=float)
        if probs.sum() <= 0:
            raise ValueError(f"{stage}: no rows with {sorted(ref_count_probs)} references in the data")
        if missing:  # e.g. the bootstrapping filter kept no 4-subject pair: say so, train on the rest
            print(f"{stage}: WARNING no rows with {missing} references; their probability goes to the others",
                  flush=True)
    else:
        probs = np.array([len(groups[k]) for k in counts], dtype=float)
    probs /= probs.sum()
    logger = StepLogger()
    (reports / "samples").mkdir(parents=True, exist_ok=True)
    pool = len(data) if grid_pool is None else grid_pool
    grid_rows = np.random.default_rng(cfg.seed).choice(pool, size=min(cfg.grid_rows, pool), replace=False)

    targets, refs = encode_pairs(model, data, groups)
    make_batch = _BatchDraw(data, groups, probs, targets, refs, cfg.batch_size)

    objective = FlowMatching(drop_text=cfg.drop_text, drop_refs=cfg.drop_refs, drop_both=cfg.drop_both,
                             subject_weight=cfg.subject_weight)

    def log_step(step, record):  # one step's record into the stage's MLflow run
        logger.metrics({k: v for k, v in record.items() if k not in ("step", "local_loss")}, step, prefix="train/")

    def on_log(step, record):
        log_step(step, record)
        print(f"{stage} step {step}: loss {record['loss']:.4f} lr {record['lr']:.2e} "
              f"{record['samples_per_second']:.1f} samples/s", flush=True)

    # Grids are kept beside the checkpoints until the end: DVC empties the reports folder before
    # it reruns a crashed stage, and the resumed run must still show the grids of its first part.
    kept = checkpoints / "samples"
    kept.mkdir(parents=True, exist_ok=True)

    def on_sample(m, step):
        path = kept / f"step-{step:07d}.png"
        sample_grid(m, data, grid_rows, cfg, f"step {step}").save(path)
        logger.artifact(path, f"reports/{stage}/samples")

    loop = LoopConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
                      weight_decay=cfg.weight_decay, grad_accum=cfg.grad_accum, mixed_precision=cfg.mixed_precision,
                      max_grad_norm=cfg.max_grad_norm, ema_decay=cfg.ema_decay, checkpoint_every=cfg.checkpoint_every,
                      log_every=cfg.log_every, sample_every=cfg.sample_every, seed=cfg.seed,
                      compile=cfg.compile and not model.config.base)  # real profile (LoRA): not tried compiled
    result = Trainer(model, objective, loop, checkpoints, make_batch=make_batch, on_log=on_log,
                     on_sample=on_sample).run()
    final = result.model
    if process_state().is_main_process:  # under `accelerate launch`, one process writes
        if result.resumed_from:  # the steps logged before the crash, into this run too
            for h in result.history:
                if h["step"] <= result.resumed_from:
                    log_step(h["step"], h)
        final.save_pretrained(out)
        sample_grid(final, data, grid_rows, cfg, "final").save(reports / "samples.png")
        for path in sorted(kept.glob("step-*.png")):
            shutil.copy2(path, reports / "samples" / path.name)
        pd.DataFrame(result.history).to_csv(reports / "history.csv", index=False)
        shutil.rmtree(checkpoints, ignore_errors=True)  # done: a rerun must start afresh
    losses = [h["loss"] for h in result.history]
    return {"steps": result.step, "final_loss": round(losses[-1], 5), "first_loss": round(losses[0], 5),
            "resumed_from_step": result.resumed_from or 0,
            "timings": {"train_seconds": round(result.seconds, 2), "samples_per_second": round(
                float(np.mean([h["samples_per_second"] for h in result.history])), 2)},
            "parameters": sum(p.numel() for p in final.transformer.parameters()), "rows": len(data),
            "ref_counts": {str(k): len(groups[k]) for k in counts},
            "ref_counts_missing": sorted(int(k) for k in (ref_count_probs or {}) if k not in groups
                                         and ref_count_probs[k] > 0),
            "batches_by_ref_count": {str(k): v for k, v in make_batch.drawn.items()}}  # drawn by this process


def run_fit(stage: str, params: Params, dataset_dir: Path, out: Path, reports: Path, checkpoints: Path,
            init: Path | None = None, ref_count_probs: dict[int, float] | None = None,
            replay: Path | None = None, reference_layout: str = "as_given", standardizer: Path | None = None,
            placement: str = "centre", min_extent: float = 0.0,
            model: SubjectGenerator | None = None, data: Pairs | None = None, extra: dict | None = None,
            name: str | None = None, write_extras: Callable[[Path], None] | None = None) -> dict:
    """Load data, build (or load ``init``) the generator, train it with ``params.train_config(stage)``
    into ``out`` atomically, with the sampling settings it is to be used with (``sampling.json``).
    ``replay``: a second dataset whose rows join the first's (SFT's single-subject replay); the
    sample grids still show the first's. Checkpoints go to ``checkpoints/<stage>-<fingerprint>``,
    keyed by everything that decides the result: config, architecture, data and initial weights.
    ``standardizer``: a standardizer folder (SerialGen's stage II): every reference is standardized
    by it before training (``prepare_references``, as sampling does; then arranged as the data has
    it, ``Pairs.layouts``) and the model carries it, its
    standard views at ``placement``, subjects under ``min_extent`` enlarged (``models/standardizer.py``).
    ``model`` and ``data``: a model and rows built by the caller (the standardizer's), ``extra``
    what else decides them (into the checkpoints' fingerprint). ``name``: the stage's name when it
    trains with another stage's settings (sft_std with sft's): its checkpoints and logs.
    ``write_extras``: writes more files into the model's folder before it is swapped in whole."""
    from ..io import atomic_dir, folder_hash
    from ..models.sampling import prepare_references
    from ..models.standardizer import Standardizer

    cfg = params.train_config(stage)
    if data is None:
        data = load_pairs(dataset_dir)
    grid_pool = len(data)
    if replay is not None:
        data = concat_pairs(data, load_pairs(replay))
    if model is None:
        model = SubjectGenerator.from_pretrained(init) if init else \
            build_generator(params.generator, params.synthesize.resolution, cfg.seed)
    standardized = None  # what decides the standardized references, into the fingerprint
    if standardizer is not None:
        model.standardizer = Standardizer.load(standardizer).placed(placement, min_extent)
        print(f"{stage}: standardizing {sum(len(r) for r in data.refs)} references with {standardizer}", flush=True)
        data.refs = prepare_references(data.refs, data.pending_layouts(), model.standardizer)
        standardized = folder_hash(standardizer), asdict(model.standardizer.routes), data.layouts
    # compile is left out: a speed setting (a compiled run's checkpoint resumes an eager run and back)
    fp = fingerprint(stage, cfg.model_dump(exclude={"compile"}), params.generator.model_dump(), data_digest(dataset_dir),
                     data_digest(replay) if replay is not None else None, folder_hash(init) if init else None,
                     standardized, extra)
    name = name or stage
    checkpoints = checkpoint_folder(checkpoints, name, fp)
    reports.mkdir(parents=True, exist_ok=True)
    sampling = SamplingSettings(cfg.sample_steps, cfg.guidance, reference_layout, cfg.sample_precision)
    if not process_state().is_main_process:
        return fit_generator(name, model, data, cfg, out, reports, checkpoints, ref_count_probs, grid_pool)
    with atomic_dir(out) as tmp:
        metrics = fit_generator(name, model, data, cfg, tmp, reports, checkpoints, ref_count_probs, grid_pool)
        sampling.save(tmp)
        if write_extras is not None:
            write_extras(tmp)
    return {**metrics, "sampling": asdict(sampling)}
