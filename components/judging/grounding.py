"""The grounding model: the world's Grounding DINO analogue, (image, category) -> top box or
"not found".

A small conv net (a U-shaped pair of stages at 1/2 and 1/4 resolution) scores every location of
a grid at half the image resolution against the queried category: objectness is the dot
product of the location's features with the category's query vector (an embedding, as Grounding
DINO scores regions against text tokens), and a box branch, FiLM-conditioned on the same
embedding, predicts FCOS-style distances from the location to the four box sides. The answer is
the box of the most confident location when its objectness reaches the threshold, otherwise
"not found".

Training reads ``JudgeData.scenes`` (targets and references). Because objectness is a dot
product, one pass scores all categories, so every image trains every query at once: each present
category is a positive query (target: the centre of its box), and every absent category a
negative query (target: nothing anywhere) — 9-10 of the 11 per image, densely, rather than a
sampled ~30%. Augmentations: horizontal flips (boxes flipped too) and copy-paste (Ghiasi et
al., 2021): a subject's box region, its own background around it, cut from another scene and
pasted at a random place, with its box as a new target and subjects it covers dropped. Real
detectors find subjects in collages and pasted composites; without this one missed half of the
subjects a copy-pasting generator draws.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from ..world import CATEGORIES
from .base import Grounding, iou
from .data import JudgeData
from .train import fit, to_tensor

STRIDE = 2            # pixels between output locations (the grid is half the image resolution)
DIST_SCALE = 4.0      # softplus(raw) * this = predicted distance in pixels (~3 px at init)
CENTER = 0.25         # positives: locations within this fraction of the box size of its centre
CLS_WEIGHT = 1.0      # softmax over categories at object locations: which category is it
POS_WEIGHT = 4.0      # BCE weight of positive locations (a handful among 256 per query)
PASTES = (0, 0, 1, 2)  # copy-paste augmentation: subjects pasted into an image, drawn uniformly
COVERED = 0.5         # a subject more than this fraction covered by a paste is no longer a target


def _block(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    # ReLU, not GELU: GELU's backward alone cost ~10% of a training step on CPU.
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, padding=(k - stride) // 2 if k > stride else 0),
                         nn.GroupNorm(math.gcd(4, cout), cout), nn.ReLU())


class GrounderNet(nn.Module, PyTorchModelHubMixin):
    """(B, 3, H, W) in [0, 1] and category indices (B,) -> objectness logits (B, H/2, W/2) and
    side distances in pixels (B, 4, H/2, W/2) as (left, top, right, bottom)."""

    def __init__(self, categories: list[str] | None = None, width: int = 32, threshold: float = 0.5):
        super().__init__()
        self.categories = list(categories or CATEGORIES)
        self.threshold = threshold  # kept in config.json so a saved folder answers like the original
        w = width
        self.embed = nn.Embedding(len(self.categories), 2 * w)
        # One thin conv at full resolution before patchifying: shapes of 8-pixel subjects are
        # only a few pixels of edge, and a 2x2 patchify alone learns them far more slowly.
        self.enc1 = nn.Sequential(_block(3, w // 2), _block(w // 2, w, 2, 2), _block(w, w))  # 1/2 res
        self.down = _block(w, 2 * w, 2, 2)                                          # 1/4 resolution
        self.mid = nn.Sequential(*[_Residual(_block(2 * w, 2 * w)) for _ in range(2)])
        self.lift = nn.Conv2d(2 * w, w, 1)
        self.dec = _block(w, w)
        # Objectness = <location feature, query vector>, as Grounding DINO scores regions against
        # the text: a location lights up only when its own features say "this category". Being a
        # dot product, it scores every category in one pass, so training supervises all of them.
        self.obj = nn.Conv2d(w, w, 1)
        self.query = nn.Linear(2 * w, w)
        # The box branch is FiLM-conditioned on the query (per-channel scale and shift), so where
        # subjects overlap it regresses the extent of the one asked for.
        self.film = nn.Linear(2 * w, 2 * w)
        nn.init.zeros_(self.film.weight), nn.init.zeros_(self.film.bias)
        # 1x1 convs only: the branch runs once per subject, and the trunk already gives context.
        self.box = nn.Sequential(nn.Conv2d(w, w, 1), nn.ReLU(), nn.Conv2d(w, 4, 1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Query-independent features (B, w, H/2, W/2)."""
        h1 = self.enc1(x - 0.5)
        h = self.mid(self.down(h1))
        return self.dec(h1 + self.lift(F.interpolate(h, scale_factor=2, mode="nearest")))

    def objectness(self, h: torch.Tensor, cats: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, H/2, W/2) for the queried categories, or (B, K, H/2, W/2) for all K."""
        f = self.obj(h)
        if cats is None:
            return torch.einsum("bchw,kc->bkhw", f, self.query(self.embed.weight)) / f.shape[1] ** 0.5
        return torch.einsum("bchw,bc->bhw", f, self.query(self.embed(cats))) / f.shape[1] ** 0.5

    def distances(self, h: torch.Tensor, cats: torch.Tensor) -> torch.Tensor:
        """Side distances in pixels (B, 4, H/2, W/2) of the queried category's box."""
        gamma, beta = self.film(self.embed(cats))[:, :, None, None].chunk(2, dim=1)
        return F.softplus(self.box(h * (1 + gamma) + beta)) * DIST_SCALE

    def forward(self, x: torch.Tensor, cats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.objectness(h, cats), self.distances(h, cats)


class _Residual(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.inner(x)


def _centres(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates (x, y) of the output locations, each (h, w)."""
    ys = torch.arange(h, dtype=torch.float32) * STRIDE + STRIDE / 2
    xs = torch.arange(w, dtype=torch.float32) * STRIDE + STRIDE / 2
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return x, y


class WorldGrounder:
    """``Grounder`` over a ``GrounderNet``: uint8 images and category names in, Groundings out."""

    def __init__(self, net: GrounderNet, threshold: float | None = None):
        self.net = net.eval()
        self.threshold = net.threshold if threshold is None else threshold
        self._index = {c: i for i, c in enumerate(net.categories)}

    @torch.no_grad()
    def scores(self, images: Sequence[np.ndarray], categories: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Best objectness (B,) and its box (B, 4) as float pixels, whatever the threshold."""
        unknown = sorted(set(categories) - set(self._index))
        if unknown:
            raise KeyError(f"unknown categories {unknown}; known: {', '.join(self._index)}")
        # Images are batched by size (the net is fully convolutional), 256 at a time.
        shapes = [np.asarray(im).shape[:2] for im in images]
        best, boxes = np.zeros(len(images), np.float32), np.zeros((len(images), 4), np.float32)
        for shape in set(shapes):
            idx = [i for i, s in enumerate(shapes) if s == shape]
            for lo in range(0, len(idx), 256):
                part = idx[lo:lo + 256]
                x = to_tensor(np.stack([images[i] for i in part]))
                c = torch.as_tensor([self._index[categories[i]] for i in part])
                logit, dist = self.net(x, c)
                p = torch.sigmoid(logit).flatten(1)
                k = p.argmax(1)
                cx, cy = (t.flatten()[k] for t in _centres(*logit.shape[1:]))
                d = dist.flatten(2)[torch.arange(len(part)), :, k]
                best[part] = p[torch.arange(len(part)), k].numpy()
                boxes[part] = torch.stack([cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]], 1).numpy()
        return best, boxes

    def ground(self, images: Sequence[np.ndarray], categories: Sequence[str]) -> list[Grounding]:
        """One Grounding per (image, category): the most confident box in pixels (exclusive
        ends, clipped to the image), or box None when its objectness is below the threshold."""
        if len(images) != len(categories):
            raise ValueError(f"{len(images)} images but {len(categories)} categories")
        if len(images) == 0:
            return []
        best, boxes = self.scores(images, categories)
        out = []
        for img, s, b in zip(images, best, boxes):
            h, w = np.asarray(img).shape[:2]
            x0, y0 = int(np.clip(round(b[0]), 0, w - 1)), int(np.clip(round(b[1]), 0, h - 1))
            x1, y1 = int(np.clip(round(b[2]), x0 + 1, w)), int(np.clip(round(b[3]), y0 + 1, h))
            box = (x0, y0, x1, y1)
            out.append(Grounding(box if s >= self.threshold else None, float(s), box))
        return out

    def save(self, directory: str | Path) -> Path:
        """Write a self-describing folder (config.json + model.safetensors)."""
        self.net.threshold = self.threshold
        self.net.save_pretrained(str(directory))
        return Path(directory)

    @classmethod
    def load(cls, directory: str | Path) -> "WorldGrounder":
        """The grounder saved by ``save`` in ``directory``."""
        return cls(GrounderNet.from_pretrained(str(directory)))


# --- training ---------------------------------------------------------------------------------

def _batch_maker(data: JudgeData, batch_size: int, categories: list[str]):
    images = np.stack([s.image for s in data.scenes])
    index = {c: i for i, c in enumerate(categories)}
    subjects = [[(index[f.category], f.box) for f in s.subjects] for s in data.scenes]
    width = images.shape[2]
    # Scenes are drawn in proportion to their subject count (every subject equally likely):
    # crowded scenes (small, touching subjects) are few in the data but are where grounding
    # fails; this cut the held-out miss rate from 0.17 to 0.12.
    weight = np.asarray([len(s) for s in subjects], dtype=float)
    weight /= weight.sum()

    def make(rng: np.random.Generator):
        pick = rng.choice(len(images), size=batch_size, p=weight)
        imgs = images[pick].copy()
        owner, cats, boxes = [], [], []
        for n, i in enumerate(pick):
            flip = rng.random() < 0.5  # horizontal flip, boxes flipped with it
            if flip:
                imgs[n] = imgs[n, :, ::-1]
            here = [(c, (width - x1, y0, width - x0, y1) if flip else (x0, y0, x1, y1)) for c, (x0, y0, x1, y1) in subjects[i]]
            for _ in range(PASTES[int(rng.integers(len(PASTES)))]):
                here = _paste(imgs[n], here, images, subjects, rng)
            for c, box in here:
                owner.append(n), cats.append(c), boxes.append(box)
        return (to_tensor(imgs), torch.as_tensor(owner), torch.as_tensor(cats),
                torch.as_tensor(boxes, dtype=torch.float32))
    return make


def _covered(box, patch) -> float:
    """Fraction of ``box``'s area inside ``patch``."""
    ix = max(0, min(box[2], patch[2]) - max(box[0], patch[0]))
    iy = max(0, min(box[3], patch[3]) - max(box[1], patch[1]))
    return ix * iy / max((box[2] - box[0]) * (box[3] - box[1]), 1)


def _paste(canvas: np.ndarray, here: list, images: np.ndarray, subjects: list, rng: np.random.Generator,
           pad: int = 1) -> list:
    """Paste one random subject's box region (plus ``pad`` pixels of its background) from a
    random scene into ``canvas`` in place; returns the canvas's subjects after the paste."""
    j = int(rng.integers(len(images)))
    if not subjects[j]:
        return here
    c, (x0, y0, x1, y1) = subjects[j][int(rng.integers(len(subjects[j])))]
    h, w = images.shape[1:3]
    px0, py0, px1, py1 = max(x0 - pad, 0), max(y0 - pad, 0), min(x1 + pad, w), min(y1 + pad, h)
    region = images[j, py0:py1, px0:px1]
    ty, tx = int(rng.integers(h - region.shape[0] + 1)), int(rng.integers(w - region.shape[1] + 1))
    canvas[ty:ty + region.shape[0], tx:tx + region.shape[1]] = region
    patch = (tx, ty, tx + region.shape[1], ty + region.shape[0])
    kept = [(k, b) for k, b in here if _covered(b, patch) <= COVERED]
    return kept + [(c, (tx + x0 - px0, ty + y0 - py0, tx + x1 - px0, ty + y1 - py0))]


def grounder_loss(net: GrounderNet, batch) -> torch.Tensor:
    """Objectness BCE over every category of every image (positives: locations near the centre
    of a subject, in its category's map; an absent category is a negative query with no
    positive anywhere) plus the IoU loss of the box each present subject's query predicts at its
    positive locations."""
    images, owner, cats, boxes = batch
    h = net.features(images)
    logits = net.objectness(h)                                             # (B, K, gh, gw)
    x, y = _centres(*logits.shape[2:])
    x0, y0, x1, y1 = (boxes[:, i, None, None] for i in range(4))
    near = ((x - (x0 + x1) / 2).abs() <= torch.clamp(CENTER * (x1 - x0), min=STRIDE)) & \
           ((y - (y0 + y1) / 2).abs() <= torch.clamp(CENTER * (y1 - y0), min=STRIDE))
    pos = near & (x > x0) & (x < x1) & (y > y0) & (y < y1)                 # (N, gh, gw)
    target = torch.zeros_like(logits).index_put_((owner, cats), pos.float(), accumulate=True).clamp_(max=1)
    obj = F.binary_cross_entropy_with_logits(logits, target, pos_weight=torch.tensor(POS_WEIGHT))
    obj = obj * logits.shape[1]  # a sum over the K category maps: each is one query's loss
    if not pos.any():  # no subject large enough to own a location: objectness only
        return obj
    # Independent BCEs let look-alike categories (cat, robot, house) all fire on one subject;
    # making the categories compete where a subject is cuts those false positives.
    at = logits[owner].permute(0, 2, 3, 1)[pos]                            # (P, K)
    cls = F.cross_entropy(at, cats[:, None, None].expand_as(pos)[pos])
    dist = net.distances(h[owner], cats)                                   # (N, 4, gh, gw)
    tgt = torch.stack([x - x0, y - y0, x1 - x, y1 - y], 1).permute(0, 2, 3, 1)[pos]   # (P, 4)
    prd = dist.permute(0, 2, 3, 1)[pos]
    inter = (torch.minimum(prd[:, 0], tgt[:, 0]) + torch.minimum(prd[:, 2], tgt[:, 2])) * \
            (torch.minimum(prd[:, 1], tgt[:, 1]) + torch.minimum(prd[:, 3], tgt[:, 3]))
    area = lambda d: (d[:, 0] + d[:, 2]) * (d[:, 1] + d[:, 3])  # noqa: E731
    box_iou = inter / (area(prd) + area(tgt) - inter).clamp(min=1e-6)
    return obj + CLS_WEIGHT * cls + (1 - box_iou).mean()


def train_grounder(data: JudgeData, cfg, seed: int) -> tuple[WorldGrounder, list[float]]:
    """Train a grounder on the scenes of ``data`` with ``cfg`` (a ``JudgesParams``: width,
    grounder_steps, batch_size, lr, grounding_threshold); returns it and the loss of every step."""
    if not data.scenes:
        raise ValueError("the grounder needs scenes, and the data has none")
    torch.manual_seed(seed)  # the initial weights belong to the seed as well
    net = GrounderNet(list(CATEGORIES), cfg.width, cfg.grounding_threshold)
    losses = fit(net, _batch_maker(data, cfg.batch_size, net.categories), grounder_loss,
                 cfg.grounder_steps, cfg.lr, seed)
    return WorldGrounder(net), losses


def evaluate_grounder(grounder: WorldGrounder, data: JudgeData, seed: int = 0) -> dict:
    """Every subject of every scene queried by its category, plus one absent category per scene.
    Returns mean_iou (present; 0 when not found), miss_rate (present: not found or IoU < 0.5),
    fp_rate (absent: found anything), accuracy_iou50 (all queries answered right) and counts."""
    rng = np.random.default_rng(seed)
    cats_known = list(grounder.net.categories)
    images, cats, truth = [], [], []
    for s in data.scenes:
        here = {f.category for f in s.subjects}
        for f in s.subjects:
            images.append(s.image), cats.append(f.category), truth.append(f.box)
        absent = [c for c in cats_known if c not in here]
        if absent:
            images.append(s.image), cats.append(str(rng.choice(absent))), truth.append(None)
    found = grounder.ground(images, cats)
    ious = np.asarray([iou(g.box, t) for g, t in zip(found, truth) if t is not None])
    fps = np.asarray([g.found for g, t in zip(found, truth) if t is None])
    hit = ious >= 0.5
    return {"mean_iou": float(ious.mean()) if len(ious) else float("nan"),
            "miss_rate": float(1 - hit.mean()) if len(ious) else float("nan"),
            "fp_rate": float(fps.mean()) if len(fps) else float("nan"),
            "accuracy_iou50": float((hit.sum() + (~fps).sum()) / max(len(ious) + len(fps), 1)),
            "present": int(len(ious)), "absent": int(len(fps))}
