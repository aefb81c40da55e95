"""Rewards: pure functions ``(images, prompts, meta) -> RewardOutput``, one registry by name.

A reward is built from a judge set with ``make_reward(name, judges, **kwargs)``; what comes back
only reads its arguments. ``meta[i]`` describes sample i: ``refs`` (reference images, one per
subject, in prompt order), ``categories`` (one per subject) and ``claims`` (what the prompt
states, as world.scenes writes them).

- ``psr``: PSR's pairwise subject-consistency reward. Each subject is grounded by its category
  in the output and in its own reference, both crops are embedded, and the cosines are averaged
  over subjects. A subject the grounder cannot find in the output scores 0 and is counted in
  ``missing``; no silent whole-image fallback.
- ``confusion``: the diagnostic beside it: how similar subject i's output crop is to the *other*
  references (high when subjects are swapped or blended).
- ``semantic``: the fraction of the prompt's claims that hold in the output (presence, size,
  action, background read by the semantic judge; relations by box geometry, as PSRBench does).
- ``aesthetic``: the aesthetic judge's calibrated score squashed to (0, 1).
- ``mix``: a weighted sum, PSR's 0.4 psr + 0.4 semantic + 0.2 aesthetic by default.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..registry import Registry
from .base import JudgeSet, crop_subject
from .geometry import relation_from_boxes

PSR_WEIGHTS = {"psr": 0.4, "semantic": 0.4, "aesthetic": 0.2}


@dataclass
class RewardOutput:
    """Per-sample scores, plus named per-sample diagnostics (misses, per-claim results...)."""

    scores: np.ndarray
    info: dict[str, np.ndarray] = field(default_factory=dict)


RewardFn = Callable[[Sequence[np.ndarray], Sequence[str], Sequence[dict]], RewardOutput]
REWARDS: Registry[Callable[..., RewardFn]] = Registry("reward")
register = REWARDS.register


def make_reward(name: str, judges: JudgeSet, **kwargs) -> RewardFn:
    """The reward ``name`` bound to ``judges``."""
    return REWARDS.get(name)(judges, **kwargs)


def available() -> list[str]:
    return REWARDS.names()


def ground(judges: JudgeSet, images_per_sample: list[list[np.ndarray]], categories: list[list[str]]):
    """Ground category k of sample i in images_per_sample[i][k], in one batched call; returns
    the groundings in the same nested shape."""
    flat_imgs = [img for imgs in images_per_sample for img in imgs]
    flat_cats = [c for cats in categories for c in cats]
    flat = judges.grounder.ground(flat_imgs, flat_cats) if flat_imgs else []
    out, k = [], 0
    for cats in categories:
        out.append(flat[k:k + len(cats)])
        k += len(cats)
    return out


def _ground_outputs(judges: JudgeSet, images, meta):
    """Each subject grounded by its category in the sample's output image."""
    return ground(judges, [[img] * len(m["categories"]) for img, m in zip(images, meta)],
                   [list(m["categories"]) for m in meta])


def _ground_subjects(judges: JudgeSet, images, meta):
    """Each subject grounded in the output and in its own reference."""
    cats = [list(m["categories"]) for m in meta]
    return _ground_outputs(judges, images, meta), ground(judges, [list(m["refs"]) for m in meta], cats)


def remember_references(judges: JudgeSet, meta, crop_size: int = 32) -> None:
    """Ground and embed every subject's reference once, in one fixed pass. With judges that
    remember (``memo.py``, what ``load_judge_set`` gives), whatever is scored afterwards reads
    the references from memory. Called before a benchmark scores its first generator, it keeps a
    generator's scores independent of which generators were scored before it in the process
    (batched CPU kernels round differently for other batch sizes, in the last bits)."""
    per_ref = ground(judges, [list(m["refs"]) for m in meta], [list(m["categories"]) for m in meta])
    crops = [crop_subject(m["refs"][k], g.box, crop_size) for m, found in zip(meta, per_ref)
             for k, g in enumerate(found) if g.found]
    if crops:
        judges.encoder.embed(crops)


def subject_embeddings(judges: JudgeSet, images, meta, crop_size: int, candidates: bool = False):
    """Embeddings of every grounded subject crop in the outputs and in the references, with
    None where the grounder found nothing (or, with ``candidates``, where it proposed no box
    at all in the output: a subject below the threshold is then cropped at its candidate)."""
    per_out, per_ref = _ground_subjects(judges, images, meta)
    crops, where = [], []
    for i, (img, m) in enumerate(zip(images, meta)):
        for k, (go, gr) in enumerate(zip(per_out[i], per_ref[i])):
            box = go.box if go.found else (go.candidate if candidates else None)
            if box is not None:
                crops.append(crop_subject(img, box, crop_size))
                where.append((i, k, "out"))
            if gr.found:
                crops.append(crop_subject(m["refs"][k], gr.box, crop_size))
                where.append((i, k, "ref"))
    emb = judges.encoder.embed(crops) if crops else np.zeros((0, 1), np.float32)
    out = [[None] * len(m["categories"]) for m in meta]
    ref = [[None] * len(m["categories"]) for m in meta]
    for e, (i, k, side) in zip(emb, where):
        (out if side == "out" else ref)[i][k] = e
    return out, ref, per_out, per_ref


@register("psr")
def psr_reward(judges: JudgeSet, crop_size: int = 32, misses: str = "zero") -> RewardFn:
    """``misses``: how a subject the grounder misses in the output scores. ``zero`` (PSR's,
    the benchmark's SC) gives it 0; ``graded`` gives it the cosine of the crop at the
    grounder's below-threshold candidate box times confidence / threshold, so a subject almost
    found earns almost its similarity instead of dropping off a cliff (a reward shaping for RL:
    the same images' ``missing`` count is unchanged)."""
    if misses not in ("zero", "graded"):
        raise ValueError(f"misses must be 'zero' or 'graded', got {misses!r}")
    graded = misses == "graded"
    threshold = float(judges.grounder.threshold) if graded else 1.0

    def reward(images, prompts, meta) -> RewardOutput:
        out, ref, per_out, _ = subject_embeddings(judges, images, meta, crop_size, candidates=graded)
        scores, missing, ref_missing, confusion = [], [], [], []
        for o, r, gs in zip(out, ref, per_out):
            sims, conf = [], []
            for i, (oi, ri, g) in enumerate(zip(o, r, gs)):
                weight = 1.0 if g.found else min(1.0, g.score / threshold)
                sims.append(weight * float(oi @ ri) if oi is not None and ri is not None else 0.0)
                others = [float(oi @ rj) for j, rj in enumerate(r)
                          if j != i and g.found and oi is not None and rj is not None]
                if others:
                    conf.append(max(others))
            scores.append(float(np.mean(sims)) if sims else 0.0)
            missing.append(sum(not g.found for g in gs))
            ref_missing.append(sum(x is None for x in r))
            confusion.append(float(np.mean(conf)) if conf else np.nan)
        return RewardOutput(np.asarray(scores, np.float32), {
            "missing": np.asarray(missing), "ref_missing": np.asarray(ref_missing),
            "confusion": np.asarray(confusion, np.float32)})
    return reward


@register("confusion")
def confusion_reward(judges: JudgeSet, crop_size: int = 32) -> RewardFn:
    """Mean over subjects of max_{j != i} cos(output crop i, reference j); NaN for one subject."""
    psr = psr_reward(judges, crop_size)

    def reward(images, prompts, meta) -> RewardOutput:
        r = psr(images, prompts, meta)
        return RewardOutput(r.info["confusion"], {"missing": r.info["missing"]})
    return reward


CLAIM_TYPES = ("present", "size", "action", "relation", "background")


@register("semantic")
def semantic_reward(judges: JudgeSet) -> RewardFn:
    def reward(images, prompts, meta) -> RewardOutput:
        per_out = _ground_outputs(judges, images, meta)
        backgrounds = judges.semantic.background(images)
        # Describe every found subject in one batched call.
        queries = [(i, k, g.box, m["categories"][k]) for i, (m, gs) in enumerate(zip(meta, per_out))
                   for k, g in enumerate(gs) if g.found]
        described = judges.semantic.describe([images[i] for i, *_ in queries], [q[2] for q in queries],
                                             [q[3] for q in queries]) if queries else []
        facts = {(i, k): d for (i, k, *_), d in zip(queries, described)}
        scores = []
        held = {t: np.full(len(meta), np.nan, np.float32) for t in CLAIM_TYPES}
        for i, (m, gs) in enumerate(zip(meta, per_out)):
            results = {t: [] for t in CLAIM_TYPES}
            for c in m["claims"]:
                t = c["type"]
                if t == "present":
                    ok = gs[c["subject"]].found
                elif t in ("size", "action"):
                    ok = facts.get((i, c["subject"]), {}).get(t) == c["value"]
                elif t == "relation":
                    a, b = gs[c["subject"]], gs[c["object"]]
                    ok = a.found and b.found and relation_from_boxes(a.box, b.box) == c["value"]
                elif t == "background":
                    ok = backgrounds[i] == c["value"]
                else:
                    raise ValueError(f"unknown claim type {t!r}")
                results[t].append(bool(ok))
            every = [x for v in results.values() for x in v]
            scores.append(float(np.mean(every)) if every else 1.0)
            for t, v in results.items():
                if v:
                    held[t][i] = float(np.mean(v))
        return RewardOutput(np.asarray(scores, np.float32), held)
    return reward


@register("aesthetic")
def aesthetic_reward(judges: JudgeSet, sharpness: float = 3.0) -> RewardFn:
    """sigmoid(sharpness * score): with a calibrated judge (clean about +1, damaged about -1)
    a clean render gets about 0.95 and a damaged one about 0.05."""
    def reward(images, prompts, meta) -> RewardOutput:
        raw = np.asarray(judges.aesthetic.score(images), np.float32)
        # sigmoid(x) as 0.5 (1 + tanh(x / 2)): no overflow for far-off scores.
        return RewardOutput((0.5 * (1.0 + np.tanh(sharpness * raw / 2))).astype(np.float32), {"raw": raw})
    return reward


@register("mix")
def mix_reward(judges: JudgeSet, weights: dict[str, float] | None = None, crop_size: int = 32) -> RewardFn:
    """sum_k w_k R_k; PSR uses 0.4 psr + 0.4 semantic + 0.2 aesthetic (psr alone is hacked by
    copy-paste)."""
    weights = dict(weights or PSR_WEIGHTS)
    parts = {k: make_reward(k, judges, **({"crop_size": crop_size} if k in ("psr", "confusion") else {}))
             for k in weights}

    def reward(images, prompts, meta) -> RewardOutput:
        outs = {k: f(images, prompts, meta) for k, f in parts.items()}
        total = sum(w * outs[k].scores for k, w in weights.items())
        return RewardOutput(np.asarray(total, np.float32), {k: o.scores for k, o in outs.items()})
    return reward
