"""The semantic judge (PSRBench's VLM analogue): reads the facts a prompt can claim.

An image-level head names the background; a subject head reads one subject's crop together
with its box geometry and names its size and action. Crops are scale-normalised by
``crop_subject``, so the box's size relative to the image is what carries the absolute size;
the crop tells the net the shape and rotation that relate box extent to subject scale.
Position claims are not judged by a model: ``geometry.relation_from_boxes`` applies PSR's box rules.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from ..config import JudgesParams
from ..world import backgrounds, shapes
from ..world.render import SIZES
from ..world.subjects import CHARACTER
from .base import Box, as_batch, crop_subject
from .data import JudgeData
from .train import fit, to_tensor

BACKGROUNDS = tuple(sorted(backgrounds.PHRASES))
SIZE_NAMES = tuple(SIZES)
ACTIONS = tuple(shapes.ROTATIONS) + tuple(shapes.POSES)
_CHUNK = 512  # inference batch: bounds memory on long lists


def _block(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, padding=(k - 1) // 2 if k % 2 else 1, bias=False),
                         nn.BatchNorm2d(cout), nn.GELU())


def box_geometry(box: Box, height: int, width: int) -> list[float]:
    """Box width and height relative to the image, and the relative side of its area."""
    bw, bh = (box[2] - box[0]) / width, (box[3] - box[1]) / height
    return [bw, bh, float(np.sqrt(bw * bh))]


def action_mask(categories: Sequence[str], actions: Sequence[str] = ACTIONS) -> torch.Tensor:
    """(B, A) bool: the actions valid for each category (poses for the person, else rotations)."""
    poses, rots = set(shapes.POSES), set(shapes.ROTATIONS)
    rows = [[a in (poses if c == CHARACTER else rots) for a in actions] for c in categories]
    return torch.tensor(rows, dtype=torch.bool)


class SemanticNet(nn.Module, PyTorchModelHubMixin):
    """Background classifier over the whole image + size/action classifier over a subject crop
    and its box geometry. The label names are part of the config, so a saved net decodes its
    own outputs."""

    def __init__(self, width: int = 32, crop_size: int = 32, backgrounds: list[str] = list(BACKGROUNDS),
                 sizes: list[str] = list(SIZE_NAMES), actions: list[str] = list(ACTIONS), geom_dim: int = 3):
        super().__init__()
        w = width
        self.crop_size, self.backgrounds, self.sizes, self.actions = crop_size, list(backgrounds), list(sizes), list(actions)
        # Backgrounds are large, flat regions: a half-resolution, shallow trunk suffices.
        self.scene = nn.Sequential(nn.AvgPool2d(2), _block(3, w, 3, 2), _block(w, 2 * w, 3, 2))
        self.bg_head = nn.Linear(4 * w, len(self.backgrounds))
        # Crops upsample a 9-17 px subject ~2x, so the first stride-2 layer loses little; the
        # flattened 4x4 map keeps the layout that tells rotations and poses apart.
        self.subject = nn.Sequential(_block(3, w, 4, 2), _block(w, 2 * w, 3, 2), _block(2 * w, 4 * w, 3, 2),
                                     nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.mlp = nn.Sequential(nn.Linear(4 * w * 16 + 8 * geom_dim, 4 * w), nn.GELU())
        self.geom_dim = geom_dim
        self.size_head = nn.Linear(4 * w, len(self.sizes))
        self.action_head = nn.Linear(4 * w, len(self.actions))

    def background_logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, n_backgrounds)."""
        f = self.scene(images - 0.5)
        return self.bg_head(torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1))

    def subject_logits(self, crops: torch.Tensor, geom: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Crops (B, 3, S, S) in [0, 1] and geometry (B, geom_dim) -> (size, action) logits."""
        # Geometry is a handful of numbers next to thousands of crop features: expand it with
        # fixed Fourier-like features so the size thresholds are easy to represent.
        freqs = torch.arange(1, 5, dtype=geom.dtype, device=geom.device) * np.pi
        g = geom[:, :, None] * freqs
        g = torch.cat([torch.sin(g), torch.cos(g)], 2).flatten(1)
        h = self.mlp(torch.cat([self.subject(crops - 0.5), g], 1))
        return self.size_head(h), self.action_head(h)


class WorldSemanticJudge:
    """``SemanticJudge`` backed by a world-trained ``SemanticNet``."""

    def __init__(self, net: SemanticNet):
        self.net = net.eval()

    @torch.no_grad()
    def background(self, images: Sequence[np.ndarray]) -> list[str]:
        """The background name of each image."""
        batch = as_batch(images)
        out: list[str] = []
        for i in range(0, len(batch), _CHUNK):
            idx = self.net.background_logits(to_tensor(batch[i:i + _CHUNK])).argmax(1)
            out += [self.net.backgrounds[int(k)] for k in idx]
        return out

    @torch.no_grad()
    def describe(self, images: Sequence[np.ndarray], boxes: Sequence[Box], categories: Sequence[str]) -> list[dict]:
        """For each (image, box, category): {"size", "action"}; the action is the best among
        those valid for the category."""
        out: list[dict] = []
        for i in range(0, len(images), _CHUNK):
            ims, bxs, cats = images[i:i + _CHUNK], boxes[i:i + _CHUNK], categories[i:i + _CHUNK]
            crops = np.stack([crop_subject(im, b, self.net.crop_size) for im, b in zip(ims, bxs)])
            geom = torch.tensor([box_geometry(b, *im.shape[:2]) for im, b in zip(ims, bxs)], dtype=torch.float32)
            size, action = self.net.subject_logits(to_tensor(crops), geom)
            action = action.masked_fill(~action_mask(cats, self.net.actions), float("-inf"))
            out += [{"size": self.net.sizes[int(s)], "action": self.net.actions[int(a)]}
                    for s, a in zip(size.argmax(1), action.argmax(1))]
        return out

    def save(self, directory: str | Path) -> None:
        """Write weights and config (safetensors + config.json) to ``directory``."""
        self.net.save_pretrained(Path(directory))

    @classmethod
    def load(cls, directory: str | Path) -> "WorldSemanticJudge":
        """The judge saved in ``directory``."""
        return cls(SemanticNet.from_pretrained(Path(directory)))


def _subjects(data: JudgeData):
    """Every subject of ``data`` as (scene index, fact)."""
    return [(i, f) for i, s in enumerate(data.scenes) for f in s.subjects]


def _subject_arrays(data: JudgeData, crop_size: int):
    """Crops, geometry, size / action labels and action masks of every subject, computed once."""
    subs = _subjects(data)
    crops = np.stack([crop_subject(data.scenes[i].image, f.box, crop_size) for i, f in subs])
    geom = np.array([box_geometry(f.box, *data.scenes[i].image.shape[:2]) for i, f in subs], dtype=np.float32)
    size = np.array([SIZE_NAMES.index(f.size) for _, f in subs])
    action = np.array([ACTIONS.index(f.action) for _, f in subs])
    mask = action_mask([f.category for _, f in subs]).numpy()
    return crops, geom, size, action, mask


def train_semantic(data: JudgeData, cfg: JudgesParams, seed: int) -> tuple[WorldSemanticJudge, list[float]]:
    """Train a semantic judge on ``data`` (backgrounds, sizes, actions); returns it and the
    per-step losses. Same data and seed, same judge."""
    images = np.stack([s.image for s in data.scenes])
    bg = np.array([BACKGROUNDS.index(s.background) for s in data.scenes])
    crops, geom, size, action, mask = _subject_arrays(data, cfg.crop_size)
    torch.manual_seed(seed)  # the init, which fit's own seeding comes too late for
    net = SemanticNet(width=cfg.width, crop_size=cfg.crop_size)

    def make_batch(rng: np.random.Generator):
        i = rng.integers(len(images), size=cfg.batch_size)
        j = rng.integers(len(crops), size=cfg.batch_size)
        # Colours carry no size or action and the benchmark's identities have unseen colour
        # combinations: permute the crop's channels so the net cannot lean on colour.
        perms = np.array([rng.permutation(3) for _ in j])
        c = np.take_along_axis(crops[j], perms[:, None, None, :], axis=3)
        return (to_tensor(images[i]), torch.from_numpy(bg[i]), to_tensor(c), torch.from_numpy(geom[j]),
                torch.from_numpy(size[j]), torch.from_numpy(action[j]), torch.from_numpy(mask[j]))

    def loss_fn(model: SemanticNet, batch) -> torch.Tensor:
        ims, bgs, cr, ge, sz, ac, mk = batch
        size_logits, action_logits = model.subject_logits(cr, ge)
        # Train the action head as it is used: a choice among the category's valid actions.
        action_logits = action_logits.masked_fill(~mk, -1e4)
        return (F.cross_entropy(model.background_logits(ims), bgs) + F.cross_entropy(size_logits, sz)
                + F.cross_entropy(action_logits, ac))

    losses = fit(net, make_batch, loss_fn, cfg.semantic_steps, cfg.lr, seed)
    return WorldSemanticJudge(net), losses


def evaluate_semantic(judge: WorldSemanticJudge, data: JudgeData) -> dict:
    """Accuracy per fact type on ``data``: background over every image, size and action over
    every subject (action also split into person and object subjects)."""
    bg_pred = judge.background([s.image for s in data.scenes])
    subs = _subjects(data)
    desc = judge.describe([data.scenes[i].image for i, _ in subs], [f.box for _, f in subs],
                          [f.category for _, f in subs])
    size_ok = np.array([d["size"] == f.size for d, (_, f) in zip(desc, subs)])
    action_ok = np.array([d["action"] == f.action for d, (_, f) in zip(desc, subs)])
    person = np.array([f.category == CHARACTER for _, f in subs])

    def mean(x):
        return float(x.mean()) if len(x) else float("nan")

    return {
        "background_acc": mean(np.array([p == s.background for p, s in zip(bg_pred, data.scenes)])),
        "size_acc": mean(size_ok), "action_acc": mean(action_ok),
        "action_acc_person": mean(action_ok[person]), "action_acc_object": mean(action_ok[~person]),
        "n_images": len(data.scenes), "n_subjects": len(subs),
    }
