"""PatchDPO's patch-quality estimation, on the reward judges' subject encoder.

For each subject of a generated image: ground it by its category in the output and in *its own*
reference (as the PSR reward grounds), take both square crops, and read the encoder's patch
features (8x8 patches of a 32-pixel crop; the encoder was trained with PatchDPO's
self-supervised patch alignment, ``judging/encoder.py``). Then

- ``q_gen[p] = max_j cos(f_gen[p], f_ref[j])``: how well generated patch p is explained by some
  patch of the reference (the max over all reference patches, so poses need not line up);
- ``q_ref[j] = max_p cos(f_ref[j], f_gen[p])``: how well reference patch j is reproduced
  somewhere in the output: low where the output lost that part of the subject, and 0 over the
  whole subject when the grounder did not find it in the output (the output lost all of it; the
  PSR reward counts such a subject 0 too).

Each crop's patch grid is painted back onto the image it came from (``paint``), so every pixel
of a subject gets its patch's quality; pixels of no subject stay NaN. ``weights`` turns quality
maps into PatchDPO's loss weights with a calibrated threshold (``calibrate``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..judging.base import JudgeSet, crop_subject, crop_window
from ..judging.rewards import ground


def patch_quality(gen: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``gen`` (P, D) and ``ref`` (Q, D) L2-normalised patch features -> (q_gen (P,), q_ref (Q,)):
    each patch's best cosine among the other image's patches."""
    sims = gen @ ref.T
    return sims.max(1), sims.max(0)


def paint(values: np.ndarray, box, shape: tuple[int, int], pad: float = 0.1) -> np.ndarray:
    """A (H, W) map, NaN outside the crop of ``box`` and, inside it, the value of the crop patch
    (``values``: (G*G,) in raster order) each pixel falls in."""
    g = int(round(np.sqrt(values.size)))
    left, top, n = crop_window(box, pad)
    out = np.full(shape, np.nan, np.float32)
    ys, xs = np.arange(max(top, 0), min(top + n, shape[0])), np.arange(max(left, 0), min(left + n, shape[1]))
    if len(ys) and len(xs):
        r, c = (ys - top) * g // n, (xs - left) * g // n
        out[np.ix_(ys, xs)] = values.reshape(g, g)[np.ix_(r, c)]
    return out


def _combine(maps: list[np.ndarray], shape) -> np.ndarray:
    """Several subjects' maps as one: where they overlap, the lower quality."""
    out = np.full(shape, np.nan, np.float32)
    for m in maps:
        out = np.fmin(out, m)
    return out


@dataclass
class QualityMaps:
    """One generated image's patch quality. ``gen``: (H, W) over the output, NaN off the
    subjects; ``refs[k]``: (H, W) over reference k (NaN off its subject; 0 over it when subject
    k was not found in the output; all NaN when it was not found in its reference); ``subject``:
    mean q_gen per subject (0 for a subject the grounder missed in the output, as the PSR reward
    counts it); ``found``: per subject."""

    gen: np.ndarray
    refs: list[np.ndarray]
    subject: np.ndarray
    found: np.ndarray
    patches: list[np.ndarray] = field(default_factory=list)  # q_gen per found subject, (G*G,)

    @property
    def score(self) -> float:
        """The image-level quality: the mean over subjects (what image-level DPO ranks by)."""
        return float(self.subject.mean()) if self.subject.size else 0.0


def quality_maps(judges: JudgeSet, images, meta, crop_size: int = 32) -> list[QualityMaps]:
    """Patch-quality maps of ``images`` (uint8 (H, W, 3)) against ``meta[i]["refs"]``, each
    subject read against its own reference only (module docstring)."""
    cats = [list(m["categories"]) for m in meta]
    per_out = ground(judges, [[img] * len(c) for img, c in zip(images, cats)], cats)
    per_ref = ground(judges, [list(m["refs"]) for m in meta], cats)
    crops, where = [], []
    for i, (img, m) in enumerate(zip(images, meta)):
        for k, (go, gr) in enumerate(zip(per_out[i], per_ref[i])):
            if go.found and gr.found:
                crops += [crop_subject(img, go.box, crop_size), crop_subject(m["refs"][k], gr.box, crop_size)]
                where.append((i, k))
    feats = judges.encoder.patch_features(crops) if crops else np.zeros((0, 1, 1), np.float32)
    pairs = {w: (feats[2 * n], feats[2 * n + 1]) for n, w in enumerate(where)}
    out = []
    for i, (img, m) in enumerate(zip(images, meta)):
        shape = img.shape[:2]
        gen_maps, ref_maps, subject, patches = [], [], np.zeros(len(cats[i]), np.float32), []
        for k in range(len(cats[i])):
            if (i, k) not in pairs:  # missed in the output: none of its reference was reproduced
                gr = per_ref[i][k]
                ref_maps.append(paint(np.zeros(1, np.float32), gr.box, m["refs"][k].shape[:2]) if gr.found
                                else np.full(m["refs"][k].shape[:2], np.nan, np.float32))
                continue
            q_gen, q_ref = patch_quality(*pairs[(i, k)])
            gen_maps.append(paint(q_gen, per_out[i][k].box, shape))
            ref_maps.append(paint(q_ref, per_ref[i][k].box, m["refs"][k].shape[:2]))
            subject[k] = q_gen.mean()
            patches.append(q_gen)
        found = np.array([(i, k) in pairs for k in range(len(cats[i]))])
        out.append(QualityMaps(_combine(gen_maps, shape), ref_maps, subject, found, patches))
    return out


def calibrate(good: np.ndarray, quantile: float) -> float:
    """The threshold between good and bad patches: the ``quantile`` of the patch qualities of
    images known to be right (a dataset's targets against their own references), so a generated
    patch is called bad when it scores below what all but that share of right patches score."""
    if good.size == 0:
        raise ValueError("no patch of a right image to calibrate the threshold on (the grounder found none)")
    return float(np.quantile(good, quantile))


def _calibrated(q: np.ndarray, threshold: float, clamp: float) -> np.ndarray:
    """``(q - threshold) / (1 - threshold)`` clamped to ``[-clamp, 1]``: 1 for a perfect patch, 0 at
    the threshold, negative below it."""
    return np.clip((q - threshold) / max(1.0 - threshold, 1e-6), -clamp, 1.0)


def weights(q: np.ndarray, threshold: float, clamp: float, background: float, subject: float = 1.0) -> np.ndarray:
    """PatchDPO's generated-image weights ``M_gen`` from a quality map ``q`` (NaN off the
    subjects): the calibrated quality (positive for good patches, 1 for a perfect one, negative
    for bad ones, clamped at ``-clamp``) times ``subject`` on the subjects; ``background`` off them."""
    return np.where(np.isnan(q), background, _calibrated(q, threshold, clamp) * subject).astype(np.float32)


def reference_weights(q_ref: np.ndarray, threshold: float, clamp: float, subject: float = 1.0,
                      calibrated: bool = True) -> np.ndarray:
    """The reference image's weights ``1 - M_ref``, ``M_ref`` its quality map calibrated as the
    generated image's: 0 for a patch the output reproduced perfectly, 1 at the threshold, up to
    ``1 + clamp`` for one it lost (``calibrated=False``: ``M_ref`` the quality itself, clipped to
    [0, 1]); times ``subject`` on the subject, 0 off it."""
    m_ref = _calibrated(q_ref, threshold, clamp) if calibrated else np.clip(q_ref, 0.0, 1.0)
    return np.where(np.isnan(q_ref), 0.0, (1.0 - m_ref) * subject).astype(np.float32)
