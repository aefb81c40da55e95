"""Redrawing subjects with the single-subject model and judging the redraws: the crop handed to the
model (re-centred, or in place), its prompt and new background, batched sampling, the grounded
encoder cosine against the subject, and rejection sampling scene by scene."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import ResourcesParams
from ..fanout import fan_out
from ..judging.base import Box, JudgeSet, crop_subject
from ..models.generator import SubjectGenerator
from ..world import backgrounds

SEED_STRIDE = 100_003  # sampler seed offset between redraw rounds (more than any round has batches)


def draw_scenes(subsets: pd.Series, n: int, weights: dict[str, float], seed: int) -> np.ndarray:
    """``n`` row indices drawn without replacement, each row weighted by its subset's weight
    (default 1), in ascending order."""
    w = subsets.map(lambda s: weights.get(s, 1.0)).to_numpy(float)
    return np.sort(np.random.default_rng(seed).choice(len(subsets), n, replace=False, p=w / w.sum()))


def regeneration_prompt(category: str, background: str) -> str:
    """A single-subject prompt, as the pretraining data words them."""
    return f"the {category} from image 1 {backgrounds.PHRASES[background]}"


def new_backgrounds(rng: np.random.Generator, avoid: list[str]) -> list[str]:
    """One background per subject, each different from the scene's own (``avoid``)."""
    return [str(rng.choice([b for b in backgrounds.SCENE_BACKGROUNDS if b != a])) for a in avoid]


def regenerate(model: SubjectGenerator, inputs: list[np.ndarray], prompts: list[str], batch_size: int,
               steps: int, guidance: float, seed: int, precision: str = "fp32",
               fan: tuple[ResourcesParams, Path] | None = None) -> list[np.ndarray]:
    """The single-subject model's image for each (isolated subject, prompt), in batches, batch b
    seeded ``seed + b``. ``fan``: (resources, the model's folder): with ``resources.engine: dask``
    the batches go to the cluster (``fanout.py``), each worker loading the model from the folder
    once; every batch keeps its inputs and seed, so the images are the same."""
    jobs = [(prompts[start:start + batch_size], inputs[start:start + batch_size], steps, guidance, seed + b, precision)
            for b, start in enumerate(range(0, len(inputs), batch_size))]
    if fan is not None and fan[0].engine == "dask":
        resources, folder = fan
        batches = fan_out(_regenerate_batch, [(str(Path(folder).resolve()), *job) for job in jobs], resources)
    else:
        batches = (_sample_batch(model, *job) for job in jobs)
    return [image for batch in batches for image in batch]


def _sample_batch(model: SubjectGenerator, prompts, inputs, steps, guidance, seed, precision) -> list[np.ndarray]:
    return list(model.sample(prompts, [[x] for x in inputs], steps=steps, guidance=guidance, seed=seed,
                             precision=precision)["images"])


@functools.lru_cache(maxsize=2)
def _loaded(folder: str) -> SubjectGenerator:
    return SubjectGenerator.from_pretrained(folder).eval()


def _regenerate_batch(job) -> list[np.ndarray]:
    """One batch on a fan-out worker (``regenerate``)."""
    folder, *rest = job
    return _sample_batch(_loaded(folder), *rest)


def consistency(judges: JudgeSet, targets: list[np.ndarray], target_boxes: list[Box], regens: list[np.ndarray],
                categories: list[str], crop_size: int) -> tuple[list[Box | None], np.ndarray]:
    """Ground each category in its regeneration and compare the encoder embeddings of the
    subject's crop in the target and in the regeneration. Returns the regeneration boxes (None:
    not found) and the cosines (NaN where not found)."""
    found = judges.grounder.ground(regens, categories)
    boxes = [g.box for g in found]
    sims = np.full(len(regens), np.nan, np.float32)
    idx = [i for i, b in enumerate(boxes) if b is not None]
    if idx:
        a = judges.encoder.embed([crop_subject(targets[i], target_boxes[i], crop_size) for i in idx])
        b = judges.encoder.embed([crop_subject(regens[i], boxes[i], crop_size) for i in idx])
        sims[idx] = np.sum(a * b, axis=1)
    return boxes, sims


def _rank(sim: float) -> float:
    """Ordering of candidates: a higher cosine is better, and any found subject beats none (NaN)."""
    return -np.inf if np.isnan(sim) else float(sim)


@dataclass
class Redraws:
    """Per subject: the best regeneration drawn (None: never drawn), its box in it, its cosine
    to the subject (NaN: not found in it) and how many times it was drawn."""

    images: list
    boxes: list
    sims: np.ndarray
    tries: np.ndarray


def redraw_scenes(model: SubjectGenerator, judges: JudgeSet, scenes: list[list[int]], targets: list[np.ndarray],
                  target_boxes: list[Box], inputs: list[np.ndarray], prompts: list[str], categories: list[str], cfg,
                  crop_size: int, fan: tuple[ResourcesParams, Path] | None = None) -> Redraws:
    """Rejection sampling of references, scene by scene. ``scenes`` lists each scene's subjects
    (indices into the other lists) in order. Every round redraws the current subject of every
    live scene in one batched sampler pass (seed ``cfg.seed + round * SEED_STRIDE``) and judges
    it: a subject passes when its cosine reaches ``cfg.threshold`` and the scene moves on to its
    next subject; a subject that fails ``cfg.candidates`` draws ends its scene, whose later
    subjects are never drawn (a pair needs every subject, so they could not save it). The best
    draw of each subject is kept for the reports. ``fan``: see ``regenerate``."""
    n = len(inputs)
    out = Redraws([None] * n, [None] * n, np.full(n, np.nan, np.float32), np.zeros(n, int))
    cursor = {s: 0 for s, members in enumerate(scenes) if members}  # live scene -> position of its current subject
    rnd = 0
    while cursor:
        current = [scenes[s][pos] for s, pos in cursor.items()]
        regens = regenerate(model, [inputs[j] for j in current], [prompts[j] for j in current], cfg.batch_size,
                            cfg.sample_steps, cfg.guidance, cfg.seed + rnd * SEED_STRIDE, cfg.sample_precision, fan)
        boxes, sims = consistency(judges, [targets[j] for j in current], [target_boxes[j] for j in current], regens,
                                  [categories[j] for j in current], crop_size)
        for j, image, box, sim in zip(current, regens, boxes, sims):
            out.tries[j] += 1
            if out.images[j] is None or _rank(sim) > _rank(out.sims[j]):
                out.images[j], out.boxes[j], out.sims[j] = image, box, sim
        for s in list(cursor):
            j = scenes[s][cursor[s]]
            if _rank(out.sims[j]) >= cfg.threshold:
                cursor[s] += 1
                if cursor[s] == len(scenes[s]):
                    del cursor[s]  # every subject passed
            elif out.tries[j] >= cfg.candidates:
                del cursor[s]  # this subject failed: the pair is lost
        rnd += 1
        print(f"multisubject round {rnd}: {len(current)} redraws, {int(np.sum(sims >= cfg.threshold))} passed, "
              f"{len(cursor)} scenes still drawing", flush=True)
    return out
