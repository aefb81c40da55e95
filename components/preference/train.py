"""The patchdpo stage's run: pairs from ``data/patchdpo`` and ``data/multisubject``, the objective
``patchdpo.objective`` picks, the shared trainer, and a generator folder that samples as the
starting model does.

A pair shares a row's prompt and references (in context for both images):

- ``patch`` and ``flow_matching``: first = one reference image of the row (a subject the grounder
  found in the output, drawn per batch; with ``missed_references`` also one it missed there, whose
  reference has quality 0 and so weighs most), weighted by ``1 - M_ref``; second = the model's own
  image, weighted by ``M_gen`` (``data.pair_weights``). ``flow_matching`` weighs the same pixels
  with the patch maps replaced by 1 (subjects ``patchdpo.subject_weight``, the rest 1; SFT's
  weighting when that is null): the control.
- ``image_dpo``: the row's two samples, the one of higher image-level quality the winner; rows
  whose two samples are within ``min_gap`` make no pair.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import Params
from ..data.grids import load_rgb
from ..data.manifest import read_manifest
from ..data.rows import load_rows
from ..io import atomic_dir, folder_hash
from ..models.generator import SubjectGenerator
from ..models.sampling import SamplingSettings
from ..objectives.grpo import FrozenReference
from ..objectives.patchdpo import ImageDPO, PairBatch, PatchDPO
from ..pipeline.tracking import StepLogger
from ..training.fit import checkpoint_folder, data_digest, fingerprint, sample_grid
from ..training.loop import LoopConfig, Trainer, process_state
from .data import CALIBRATION, MAPS, pair_weights


@dataclass
class PairSet:
    """Every pair's images in the model's space, grouped by reference count: per count k,
    ``first`` / ``second`` (n, C, S, S), their pixel weights (n, H, W), prompts, references
    (n, k, C, S, S) and, for reference-image pairs, the candidate reference subjects per pair
    (n, k): those found in the output (with ``missed_references``, every subject with a quality
    map over its reference)."""

    first: dict[int, torch.Tensor]
    second: dict[int, torch.Tensor]
    first_weight: dict[int, torch.Tensor]
    second_weight: dict[int, torch.Tensor]
    prompts: dict[int, list[str]]
    refs: dict[int, torch.Tensor]
    candidates: dict[int, np.ndarray]
    ref_images: dict[int, torch.Tensor]  # (n, k, C, S, S): the references as training images

    def counts(self) -> dict[int, int]:
        return {k: len(v) for k, v in self.prompts.items()}


def load_pairs(params: Params, pairs_dir: Path, data_dir: Path, model: SubjectGenerator) -> tuple[PairSet, dict]:
    """The stage's pairs (module docstring) and what was kept or dropped."""
    cfg = params.patchdpo
    manifest = read_manifest(pairs_dir)
    arrays = dict(np.load(pairs_dir / MAPS))
    rows = load_rows(data_dir)
    where = {rid: i for i, rid in enumerate(rows.ids)}
    images = np.stack([load_rgb(pairs_dir / p) for p in manifest.image])
    info: dict = {"samples": len(manifest)}
    if cfg.objective == "image_dpo":
        keep, order = [], []
        for _, g in manifest.reset_index().groupby("row", sort=False):
            if len(g) < 2:
                continue
            a, b = g.iloc[0], g.iloc[1]
            if abs(a.quality - b.quality) > cfg.min_gap:
                keep.append(a["index"] if a.quality > b.quality else b["index"])
                order.append(b["index"] if a.quality > b.quality else a["index"])
        first_idx, second_idx = np.array(keep, int), np.array(order, int)
        info.update(pairs=len(first_idx), rows_tied=int(manifest.row.nunique() - len(first_idx)))
        row_idx = np.array([where[r] for r in manifest.row.iloc[first_idx]], int)
        first_w = second_w = None
    else:
        has_map = ~np.isnan(arrays["ref_quality"].astype(np.float32)).all((2, 3))  # (N, 4)
        candidates = has_map if cfg.missed_references else has_map & arrays["found"]
        usable = np.flatnonzero(candidates.any(1))
        first_idx = second_idx = usable
        row_idx = np.array([where[r] for r in manifest.row.iloc[usable]], int)
        info.update(pairs=len(usable), samples_without_subject=int(len(manifest) - len(usable)))
        threshold = json.loads((pairs_dir / CALIBRATION).read_text())["threshold"]
        subject_weight = params.training.subject_weight if cfg.subject_weight is None else cfg.subject_weight
        first_w, second_w = pair_weights(arrays, threshold, cfg, subject_weight, cfg.objective)
    out = PairSet({}, {}, {}, {}, {}, {}, {}, {})
    counts = np.array([len(rows.refs[i]) for i in row_idx])
    for k in np.unique(counts):
        sel = np.flatnonzero(counts == k)
        k = int(k)
        ridx = row_idx[sel]
        refs = model.encode_images(np.stack([im for i in ridx for im in rows.refs[i]]))
        out.refs[k] = refs.reshape(len(sel), k, *refs.shape[1:])
        out.prompts[k] = [rows.prompts[i] for i in ridx]
        out.second[k] = model.encode_images(images[second_idx[sel]])
        if cfg.objective == "image_dpo":
            out.first[k] = model.encode_images(images[first_idx[sel]])
        else:
            out.ref_images[k] = out.refs[k]
            out.candidates[k] = candidates[second_idx[sel], :k]
            out.first_weight[k] = torch.as_tensor(first_w[second_idx[sel], :k])
            out.second_weight[k] = torch.as_tensor(second_w[second_idx[sel]])
    info["pairs_by_ref_count"] = {str(k): v for k, v in out.counts().items()}
    return out, info


class PairDraw:
    """``make_batch``: a reference count drawn in proportion to its pairs, then ``batch_size``
    pairs of it; for reference-image pairs, each pair's reference subject drawn among its
    candidates."""

    def __init__(self, pairs: PairSet, batch_size: int):
        self.pairs, self.batch_size = pairs, batch_size
        n = pairs.counts()
        self.ks = sorted(n)
        self.probs = np.array([n[k] for k in self.ks], float) / sum(n.values())

    def __call__(self, rng: np.random.Generator, gen: torch.Generator) -> PairBatch:
        p = self.pairs
        k = self.ks[int(rng.choice(len(self.ks), p=self.probs))]
        pick = rng.choice(len(p.prompts[k]), size=self.batch_size)
        prompts, refs = [p.prompts[k][i] for i in pick], p.refs[k][pick]
        if k not in p.ref_images:  # image-level pairs: winner, loser
            return PairBatch(p.first[k][pick], p.second[k][pick], prompts, refs)
        subject = np.array([rng.choice(np.flatnonzero(c)) for c in p.candidates[k][pick]])
        return PairBatch(p.ref_images[k][pick, subject], p.second[k][pick], prompts, refs,
                         p.first_weight[k][pick, subject], p.second_weight[k][pick])


def run_patchdpo(params: Params, paths) -> dict:
    """Train ``paths.init`` further on the pairs of ``paths.pairs`` with ``patchdpo.objective``."""
    cfg, tc = params.patchdpo, params.train_config("patchdpo")
    logger = StepLogger()
    model = SubjectGenerator.from_pretrained(paths.init)
    sampling = SamplingSettings.load(paths.init)
    for frozen in (model.text_encoder, model.text_encoder_2):
        if frozen is not None:
            frozen.requires_grad_(False)
    pairs, info = load_pairs(params, paths.pairs, paths.data, model)
    if not pairs.counts():
        raise ValueError(f"patchdpo: no pairs in {paths.pairs} for objective {cfg.objective} ({info})")
    dropout = {"drop_text": tc.drop_text, "drop_refs": tc.drop_refs, "drop_both": tc.drop_both}
    if cfg.objective == "image_dpo":
        objective = ImageDPO(cfg.beta, FrozenReference(model), **dropout)
    else:
        objective = PatchDPO(**dropout)  # patch and its control differ in their weights (pair_weights)
    fp = fingerprint("patchdpo", cfg.model_dump(), tc.model_dump(exclude={"compile"}), data_digest(paths.pairs),
                     data_digest(paths.data), folder_hash(paths.init))
    checkpoints = checkpoint_folder(paths.checkpoints, "patchdpo", fp)
    paths.reports.mkdir(parents=True, exist_ok=True)
    grid_rows = list(range(min(tc.grid_rows, 8)))
    probe = load_rows(paths.data).take(grid_rows)

    def on_log(step, record):
        logger.metrics({k: v for k, v in record.items() if k not in ("step", "local_loss")}, step, prefix="train/")
        print(f"patchdpo step {step}: loss {record['loss']:.4f} lr {record['lr']:.2e}", flush=True)

    kept = checkpoints / "samples"  # beside the checkpoints: a resumed run still shows its first part's grids
    kept.mkdir(parents=True, exist_ok=True)

    def on_sample(m, step):
        path = kept / f"step-{step:07d}.png"
        sample_grid(m, probe, np.arange(len(grid_rows)), tc, f"step {step}").save(path)
        logger.artifact(path, "reports/patchdpo/samples")

    loop = LoopConfig(steps=tc.steps, batch_size=tc.batch_size, lr=tc.lr, warmup_steps=tc.warmup_steps,
                      weight_decay=tc.weight_decay, grad_accum=tc.grad_accum, mixed_precision=tc.mixed_precision,
                      max_grad_norm=tc.max_grad_norm, ema_decay=tc.ema_decay, checkpoint_every=tc.checkpoint_every,
                      log_every=tc.log_every, sample_every=tc.sample_every, seed=tc.seed)
    result = Trainer(model, objective, loop, checkpoints, make_batch=PairDraw(pairs, tc.batch_size), on_log=on_log,
                     on_sample=on_sample).run()
    history = pd.DataFrame(result.history)
    metrics = {"objective": cfg.objective, "steps": result.step, **info,
               "calibration": json.loads((paths.pairs / CALIBRATION).read_text()),
               "first_loss": round(float(history.loss.iloc[0]), 5), "final_loss": round(float(history.loss.iloc[-1]), 5),
               "resumed_from_step": result.resumed_from or 0,
               "timings": {"train_seconds": round(result.seconds, 2)}}
    for term in ("mse_first", "mse_second", "negative_share", "accuracy", "margin"):
        if term in history:
            metrics[f"final_{term}"] = round(float(history[term].tail(5).mean()), 5)
    if not process_state().is_main_process:
        return metrics
    history.to_csv(paths.reports / "history.csv", index=False)
    (paths.reports / "samples").mkdir(exist_ok=True)
    for p in sorted(kept.glob("step-*.png")):
        shutil.copy2(p, paths.reports / "samples" / p.name)
    with atomic_dir(paths.out) as tmp:
        result.model.save_pretrained(tmp)
        sampling.save(tmp)
    shutil.rmtree(checkpoints, ignore_errors=True)
    return {**metrics, "sampling": asdict(sampling)}
