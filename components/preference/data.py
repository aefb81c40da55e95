"""PatchDPO's training data: the SFT model's own images for training rows, with their patch
quality and loss weights (the builder the paper never released).

For ``patchdpo.rows`` rows of ``data/multisubject`` (training identities, never the benchmark's),
the starting model draws ``samples_per_row`` images with its recorded sampling settings (each with
its own seed). The **reward** judge set's encoder scores every subject's patches against that
subject's own reference (``quality.py``). The threshold between good and bad patches is
calibrated on the rows' own targets (bootstrapped images whose subjects passed the consistency
filter): the ``good_quantile`` of their patch qualities. Weights:

- generated image: ``M_gen = (q - tau) / (1 - tau)``, clamped to ``[-negative_clamp, 1]``, on its
  subjects; ``background_weight`` elsewhere;
- each reference: ``1 - M_ref``, its own map calibrated the same way (its patches the output lost
  weigh most), 0 elsewhere;
- the subjects' weights times ``patchdpo.subject_weight`` (1: the patch map alone; null:
  ``training.subject_weight``, as SFT weighs subject pixels).

The stage stores the quality maps; the weights are derived from them where they are used
(``pair_weights``: the patchdpo stage, this stage's reports).

Output ``data/patchdpo``: ``images/`` (the drawn images), ``maps.npz`` (per sample: the quality maps of
the output and of its references, per-subject quality and found flags),
``manifest.parquet`` (sample id, source row, sample number, image, image-level quality) and
``calibration.json``. Reports: the weight statistics and quality maps over sample outputs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..config import Params
from ..data.grids import load_rgb
from ..data.manifest import MANIFEST, read_manifest
from ..data.rows import Rows, load_rows
from ..io import atomic_dir
from ..judging.sets import load_judge_set
from ..models.generator import SubjectGenerator
from ..models.sampling import SamplingSettings
from .quality import QualityMaps, calibrate, quality_maps, reference_weights, weights

MAPS = "maps.npz"
CALIBRATION = "calibration.json"
MAX_REFS = 4


def pick_rows(rows: Rows, n: int, seed: int) -> np.ndarray:
    """``n`` row indices drawn without replacement (all rows, in order, when ``n`` covers them)."""
    if n >= len(rows.prompts):
        return np.arange(len(rows.prompts))
    return np.sort(np.random.default_rng(seed).choice(len(rows.prompts), size=n, replace=False))


def draw(model: SubjectGenerator, sampling: SamplingSettings, rows: Rows, seed: int, batch: int = 64) -> list:
    """One image per row, batched by reference count, each batch's noise from ``seed`` and the
    batch's place (so the images depend on the rows and the seed only). The references go in as
    stored: as the model read them in training, as RL rolls out from them."""
    images: list = [None] * len(rows.prompts)
    for k, idx in rows.by_ref_count().items():
        for start in range(0, len(idx), batch):
            chunk = idx[start:start + batch]
            out = model.sample([rows.prompts[i] for i in chunk], [rows.refs[i] for i in chunk], steps=sampling.steps,
                               guidance=sampling.guidance, seed=seed * 1_000_003 + k * 10_007 + start,
                               precision=sampling.precision)["images"]
            for i, im in zip(chunk, out):
                images[i] = im
    return images


@dataclass
class Calibration:
    threshold: float
    quantile: float
    patches: int  # patches of the targets it was computed on
    target_quality: float  # their mean


def calibrate_on_targets(judges, data_dir: Path, rows: Rows, picked: np.ndarray, quantile: float,
                         crop_size: int) -> Calibration:
    """The threshold from the picked rows' targets scored against their own references."""
    m = read_manifest(data_dir).set_index("id")
    targets = [load_rgb(data_dir / m.loc[rows.ids[i], "target"]) for i in picked]
    maps = quality_maps(judges, targets, [rows.meta[i] for i in picked], crop_size)
    good = np.concatenate([q for qm in maps for q in qm.patches]) if any(qm.patches for qm in maps) else np.zeros(0)
    return Calibration(calibrate(good, quantile), quantile, int(good.size), float(good.mean()) if good.size else 0.0)


def build(params: Params, data_dir: Path, init: Path, judges_dir: Path, out: Path, reports: Path) -> dict:
    """Draw, score and weight (module docstring); returns the stage's metrics."""
    cfg = params.patchdpo
    rows = load_rows(data_dir)
    picked = pick_rows(rows, cfg.rows, cfg.seed)
    judges = load_judge_set(judges_dir / cfg.judge_set, params.judges)
    crop = params.judges.crop_size
    cal = calibrate_on_targets(judges, data_dir, rows, picked, cfg.good_quantile, crop)
    print(f"patchdpo_data: threshold {cal.threshold:.3f} (the {cal.quantile:.0%} quantile of {cal.patches} target "
          f"patches, mean {cal.target_quality:.3f})", flush=True)
    model = SubjectGenerator.from_pretrained(init).eval()
    sampling = SamplingSettings.load(init)
    images, maps, source, sample_no = [], [], [], []
    for s in range(cfg.samples_per_row):  # sample s of every row, then the next: each with its own noise
        chosen = rows.take(picked)
        drawn = draw(model, sampling, chosen, cfg.seed + 7919 * s)
        images += drawn
        maps += quality_maps(judges, drawn, chosen.meta, crop)
        source += list(picked)
        sample_no += [s] * len(picked)
    reports.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        records = []
        for i, s, img, qm in zip(source, sample_no, images, maps):
            name = f"images/{rows.ids[i]}-s{s}.png"
            Image.fromarray(img).save(tmp / name)
            records.append({"id": f"{rows.ids[i]}-s{s}", "row": rows.ids[i], "sample": int(s),
                            "image": name, "n_subjects": len(qm.subject), "found": int(qm.found.sum()),
                            "quality": round(qm.score, 5)})
        arrays = stack_maps(maps)
        np.savez_compressed(tmp / MAPS, **arrays)
        pd.DataFrame(records).to_parquet(tmp / MANIFEST, index=False)
        (tmp / CALIBRATION).write_text(json.dumps(cal.__dict__, indent=2) + "\n")
    ref_w, gen_w = pair_weights(arrays, cal.threshold, cfg, 1.0, "patch")  # before subject weighting: comparable
    metrics = weight_statistics(arrays, ref_w, gen_w, cal, cfg.negative_clamp, records)
    from .report import write_reports  # plotting only here

    write_reports(reports, rows.take(source), images, arrays["quality"], ref_w, gen_w, metrics)
    return metrics


def stack_maps(maps: list[QualityMaps]) -> dict[str, np.ndarray]:
    """The per-sample arrays of ``maps.npz``: ``quality`` (N, H, W) and ``ref_quality``
    (N, 4, H, W), NaN off the subjects (and past a row's references), ``subject_quality`` (N, 4)
    and ``found`` (N, 4) (False past a row's references). Weights are derived from them
    (``pair_weights``), so a changed weighting does not redraw the images."""
    n, (h, w) = len(maps), maps[0].gen.shape
    ref_q = np.full((n, MAX_REFS, h, w), np.nan, np.float16)
    subject, found = np.zeros((n, MAX_REFS), np.float32), np.zeros((n, MAX_REFS), bool)
    for i, qm in enumerate(maps):
        for k, r in enumerate(qm.refs):
            ref_q[i, k] = r
        subject[i, :len(qm.subject)], found[i, :len(qm.found)] = qm.subject, qm.found
    return {"quality": np.stack([qm.gen for qm in maps]).astype(np.float16), "ref_quality": ref_q,
            "subject_quality": subject, "found": found}


def pair_weights(arrays: dict[str, np.ndarray], threshold: float, cfg, subject_weight: float,
                 objective: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel weights (references (N, 4, H, W), outputs (N, H, W)) of ``objective``:
    ``patch``: PatchDPO's (``1 - M_ref`` on each reference's subject, 0 off it, ``M_ref`` calibrated
    or raw as ``cfg.reference_weights`` says; ``M_gen`` on the output's subjects,
    ``background_weight`` off them), the subjects' weights times ``subject_weight`` (with
    ``normalize_weights``, scaled so that the subjects' weights average ``subject_weight`` over all
    pairs, per image kind); ``flow_matching``: the patch maps replaced by 1, so ``subject_weight``
    on the subjects and 1 elsewhere (SFT's flow matching when it is ``training.subject_weight``)."""
    q, q_ref = arrays["quality"].astype(np.float32), arrays["ref_quality"].astype(np.float32)
    if objective == "flow_matching":
        return (np.where(np.isnan(q_ref), 1.0, subject_weight).astype(np.float32),
                np.where(np.isnan(q), 1.0, subject_weight).astype(np.float32))
    ref_w = reference_weights(q_ref, threshold, cfg.negative_clamp, subject_weight, cfg.reference_weights == "calibrated")
    gen_w = weights(q, threshold, cfg.negative_clamp, cfg.background_weight, subject_weight)
    if cfg.normalize_weights:
        for w, on in ((ref_w, ~np.isnan(q_ref)), (gen_w, ~np.isnan(q))):
            mean = float(w[on].mean()) if on.any() else 0.0
            if mean > 0:
                w[on] *= subject_weight / mean
    return ref_w, gen_w


def weight_statistics(arrays: dict[str, np.ndarray], ref_w: np.ndarray, gen_w: np.ndarray, cal: Calibration,
                      clamp: float, records: list[dict]) -> dict:
    """What the maps and weights look like: the threshold, the share of subject pixels called bad
    (and clamped), the weights' means on the subjects (before ``subject_weight``), the references'
    weights, and the grounder's finds."""
    q = arrays["quality"].astype(np.float32)
    on = ~np.isnan(q)
    ref_on = ~np.isnan(arrays["ref_quality"].astype(np.float32))
    n_subjects = sum(r["n_subjects"] for r in records)

    def mean(x):
        return round(float(x.mean()), 4) if x.size else None
    return {"samples": len(records), "rows": len({r["row"] for r in records}),
            "threshold": round(cal.threshold, 4), "target_quality": round(cal.target_quality, 4),
            "generated_quality": mean(q[on]), "bad_pixel_share": mean(gen_w[on] < 0),
            "clamped_pixel_share": mean(gen_w[on] <= -clamp), "subject_weight_mean": mean(gen_w[on]),
            "reference_weight_mean": mean(ref_w[ref_on]),
            "found_rate": round(sum(r["found"] for r in records) / max(n_subjects, 1), 4),
            "image_quality_mean": round(float(np.mean([r["quality"] for r in records])), 4)}
