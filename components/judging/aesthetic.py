"""The aesthetic judge (PSR's HPS analogue): scores clean renders above damaged or empty ones.

A small conv net maps an image to one score. It is trained as a Bradley–Terry preference model
on pairs (clean render, rejected image): ``loss = -log sigmoid(s(clean) - s(rejected))``. The
rejected image is a render damaged by one of ``damage.DAMAGES`` (noise, blur, seams, pasted
patches, colour shifts, melted shapes) or, as ``empty``, the scene's bare background: HPS, which
this judge stands in for, reads the prompt too and ranks an image that shows none of its
subjects low, and the benchmark's aesthetic floor must not be a clean empty backdrop. Half of the
pairs share their content (the net learns what a damage does), half do not (the score must put
every clean render above every rejected one, not just above its own damaged copy).

A Bradley–Terry score has no fixed origin or unit, so after training the judge is calibrated on
its own training images: ``score`` returns ``(raw - mid) / half_gap``, where mid and half_gap
come from the median raw score of clean images and of rejected ones. Clean renders then score
about +1, rejected ones about -1, and 0 is the boundary; the aesthetic reward maps that to (0, 1).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from ..config import JudgesParams
from ..world import backgrounds
from .base import as_batch
from .damage import DAMAGES, damage
from .data import JudgeData
from .train import fit, to_tensor

_CHUNK = 512  # inference batch: bounds memory on long lists
_CALIBRATION = 1024  # training images the calibration reads
EMPTY = "empty"  # the rejected image is the scene's background with nothing on it
REJECTIONS = (*DAMAGES, EMPTY)
CROSS = 0.5  # fraction of training pairs whose rejected image comes from another scene


def reject(image: np.ndarray, background: str, rng: np.random.Generator, kind: str | None = None) -> np.ndarray:
    """A rejected version of a clean render: damaged by ``kind`` or, for ``empty``, a fresh
    drawing of its background alone; ``kind`` None draws one of ``REJECTIONS``."""
    if kind is None:
        kind = REJECTIONS[int(rng.integers(len(REJECTIONS)))]
    if kind == EMPTY:
        h, w = image.shape[:2]
        return (backgrounds.draw(background, int(rng.integers(2**31)), h, w) * 255).round().astype(np.uint8)
    return damage(image, rng, kind)


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(4, cout), nn.ReLU())


class AestheticNet(nn.Module, PyTorchModelHubMixin):
    """(B, 3, H, W) in [0, 1] -> (B,) scores, any resolution. The first layer runs at full
    resolution because noise, blur and seams live in single pixels; mean and max pooling keep
    a small local damage (a pasted patch, a melted subject) from averaging away."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.trunk = nn.Sequential(_block(3, w, 1), _block(w, w, 2), _block(w, 2 * w, 2), _block(2 * w, 2 * w, 2))
        self.head = nn.Sequential(nn.Linear(4 * w, 2 * w), nn.ReLU(), nn.Linear(2 * w, 1))
        # Median raw score of rejected and of clean images, set by ``calibrate`` (saved with the weights).
        self.register_buffer("calibration", torch.tensor([-1.0, 1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw Bradley–Terry scores."""
        h = self.trunk(x - 0.5)
        return self.head(torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1)).squeeze(1)

    def calibrated(self, raw: torch.Tensor) -> torch.Tensor:
        damaged, clean = self.calibration
        return (raw - (clean + damaged) / 2) / ((clean - damaged) / 2).clamp_min(1e-6)


class WorldAestheticJudge:
    """``AestheticJudge`` backed by a world-trained ``AestheticNet``."""

    def __init__(self, net: AestheticNet):
        self.net = net.eval()

    @torch.no_grad()
    def raw(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(B,) float32 uncalibrated scores."""
        batch = as_batch(images)
        if len(batch) == 0:
            return np.zeros(0, np.float32)
        return torch.cat([self.net(to_tensor(batch[i:i + _CHUNK])) for i in range(0, len(batch), _CHUNK)]).numpy()

    def score(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(B,) float32 calibrated scores: clean renders about +1, damaged or empty ones about -1."""
        return self.net.calibrated(torch.from_numpy(self.raw(images))).numpy()

    def calibrate(self, images: np.ndarray, names: Sequence[str], seed: int = 0) -> tuple[float, float]:
        """Set the calibration from the median raw score of ``images`` (backgrounds ``names``)
        and of the same images rejected once each; returns (rejected, clean). A judge that does
        not rank clean above rejected (too little training) keeps its calibration, with a warning."""
        rng = np.random.default_rng(seed)
        clean = float(np.median(self.raw(images)))
        damaged = float(np.median(self.raw(np.stack([reject(im, n, rng) for im, n in zip(images, names)]))))
        if clean <= damaged:
            warnings.warn(f"aesthetic judge not calibrated: it scores damaged images at least as high as clean "
                          f"ones (median {damaged:.3f} >= {clean:.3f}); train it longer", stacklevel=2)
        else:
            self.net.calibration.copy_(torch.tensor([damaged, clean]))
        return damaged, clean

    def save(self, directory: str | Path) -> None:
        """Write weights and config (safetensors + config.json) to ``directory``."""
        self.net.save_pretrained(Path(directory))

    @classmethod
    def load(cls, directory: str | Path) -> "WorldAestheticJudge":
        """The judge saved in ``directory``."""
        return cls(AestheticNet.from_pretrained(Path(directory)))


def preference_loss(net: AestheticNet, batch) -> torch.Tensor:
    """Bradley–Terry loss of ``(clean, damaged)``: -log sigmoid(s(clean) - s(damaged))."""
    clean, damaged = batch
    s = net(torch.cat([clean, damaged]))
    n = len(clean)
    return F.softplus(s[n:] - s[:n]).mean()


def train_aesthetic(data: JudgeData, cfg: JudgesParams, seed: int) -> tuple[WorldAestheticJudge, list[float]]:
    """Train an aesthetic judge on the images of ``data``, each batch damaged afresh (a damage
    kind drawn per image); returns it and the per-step losses. Same data and seed, same judge."""
    if not data.scenes:
        raise ValueError("the aesthetic judge needs images, and the data has none")
    images = np.stack([s.image for s in data.scenes])
    names = [s.background for s in data.scenes]
    torch.manual_seed(seed)  # the init, which fit's own seeding comes too late for
    net = AestheticNet(cfg.width)

    def make_batch(rng: np.random.Generator):
        idx = rng.integers(len(images), size=cfg.batch_size)
        other = np.where(rng.random(cfg.batch_size) < CROSS, rng.integers(len(images), size=cfg.batch_size), idx)
        clean, source = images[idx], images[other]
        if rng.random() < 0.5:  # mirrored scenes are as clean as the originals
            clean, source = clean[:, :, ::-1], source[:, :, ::-1]
        rejected = np.stack([reject(im, names[o], rng) for im, o in zip(source, other)])
        return to_tensor(clean), to_tensor(rejected)

    losses = fit(net, make_batch, preference_loss, cfg.aesthetic_steps, cfg.lr, seed)
    judge = WorldAestheticJudge(net)
    if cfg.aesthetic_steps:
        pick = np.random.default_rng(seed).choice(len(images), size=min(len(images), _CALIBRATION), replace=False)
        pick = np.sort(pick)
        judge.calibrate(images[pick], [names[i] for i in pick], seed)
    return judge, losses


def evaluate_aesthetic(judge: WorldAestheticJudge, data: JudgeData, seed: int = 0) -> dict:
    """Pairwise accuracy on ``data``: the fraction of (clean, rejected) pairs scored in the
    right order, per rejection kind (every image rejected once by each kind) and over all kinds;
    ``pairwise_acc_cross`` pairs each clean image with another image's rejection; and the median
    calibrated score of clean and of rejected images (about +1 and -1 when calibrated)."""
    if not data.scenes:
        return {"pairwise_acc": float("nan"), "pairs": 0}
    images = np.stack([s.image for s in data.scenes])
    clean = judge.score(images)
    rng = np.random.default_rng(seed)
    out, hits, rejected = {}, [], []
    for kind in REJECTIONS:
        r = judge.score(np.stack([reject(im, s.background, rng, kind) for im, s in zip(images, data.scenes)]))
        ok = r < clean
        out[f"pairwise_acc_{kind}"] = float(ok.mean())
        hits.append(ok)
        rejected.append(r)
    every = np.concatenate(rejected)
    cross = every[rng.integers(len(every), size=len(clean))] < clean
    return {"pairwise_acc": float(np.concatenate(hits).mean()), **out, "pairwise_acc_cross": float(cross.mean()),
            "pairs": int(sum(len(h) for h in hits)),
            "score_clean_median": float(np.median(clean)), "score_rejected_median": float(np.median(every))}
