"""The subject encoder: the world's DINO ViT-S/16 analogue, trained self-supervised.

A small conv net reads a square subject crop (``crop_subject``) and gives per-patch features on
a coarse grid (4-pixel patches: 8x8 for 32-pixel crops) and a global identity embedding (mean
and max pooled patches through a projection head), all L2-normalised.

No identity is ever used as a class. Two objectives:
- identity InfoNCE: a subject's crop in a target scene and the same identity's crop in its
  reference scene (another pose, size, background) are two views; the other pairs of the batch
  are the negatives. Both views get identity-preserving geometric jitter (shift, scale, flip) —
  never colour jitter, because colour *is* the identity in this world.
- patch alignment (PatchDPO's self-supervised fine-tuning): two geometric views of one crop with
  a known patch correspondence (an integer patch shift and/or a horizontal flip) must agree patch
  for patch, InfoNCE over the patches of the image (positive = the corresponding patch).

Colour nearly identifies a subject in this world, and the encoder leans on it: it ranks a
subject's reference above a look-alike (same colours, another category or pattern) ~95% of the
time, but the look-alike's cosine is ~0.5-0.7 against ~0.9 for the reference, so an absolute
threshold on the cosine (the multisubject filter) separates them only in the tails.
``evaluate_encoder`` reports both (``lookalike_acc``, ``cos_lookalike``, and the same for the
reference with its pixels shuffled). Adding look-alikes as hard negatives to the InfoNCE did not
move these figures (measured); the ranking is already right, the margin is what it is.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from PIL import Image
from torch import nn

from .base import crop_subject
from .data import JudgeData
from .train import fit, to_tensor

PATCH = 4            # pixels per patch side at the crop size; the patch grid is crop_size // PATCH
CROP_PAD = 0.1       # crop_subject's default padding, so training crops look like scoring crops
PATCH_WEIGHT = 0.5   # weight of the patch-alignment loss next to the identity loss
JITTER_SHIFT = 0.08  # crop-box centre jitter as a fraction of the box side
JITTER_SCALE = 0.12  # crop-box side jitter (+-) as a fraction
MIX_BLOCKS = 3       # residual 3x3 conv blocks on the patch grid


def _block(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    # ReLU, not GELU: GELU's backward alone cost ~10% of a training step on CPU.
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, padding=(k - stride) // 2 if k > stride else 0),
                         nn.GroupNorm(math.gcd(4, cout), cout), nn.ReLU())


class EncoderNet(nn.Module, PyTorchModelHubMixin):
    """(B, 3, crop, crop) in [0, 1] -> patch features (B, G*G, D) and embedding (B, D), both
    L2-normalised; G = crop_size // 4."""

    def __init__(self, crop_size: int = 32, width: int = 32, embed_dim: int = 64):
        super().__init__()
        if crop_size % PATCH:
            raise ValueError(f"crop_size must be a multiple of {PATCH}, got {crop_size}")
        self.crop_size, self.grid = crop_size, crop_size // PATCH
        w = width
        # Two non-overlapping stride-2 convs take pixels to 4-pixel patches (cheap: no conv runs
        # at full resolution, which is what makes 600 steps fit on a shared 2-core CPU); the
        # residual 3x3 convs on the patch grid give each patch the context of the whole subject.
        self.stem = nn.Sequential(_block(3, w, 2, 2), _block(w, w, 2, 2))
        self.mix = nn.ModuleList([_block(w, w) for _ in range(MIX_BLOCKS)])
        self.patch_head = nn.Conv2d(w, embed_dim, 1)
        self.proj = nn.Sequential(nn.Linear(2 * w, 2 * w), nn.ReLU(), nn.Linear(2 * w, embed_dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.stem(x - 0.5)
        for blk in self.mix:
            h = h + blk(h)
        patches = self.patch_head(h).flatten(2).transpose(1, 2)           # (B, P, D)
        pooled = torch.cat([h.mean((2, 3)), h.amax((2, 3))], dim=1)        # (B, 2w)
        return F.normalize(patches, dim=-1), F.normalize(self.proj(pooled), dim=-1)


class WorldEncoder:
    """``SubjectEncoder`` over an ``EncoderNet``: uint8 crops in, normalised numpy features out."""

    def __init__(self, net: EncoderNet):
        self.net = net.eval()

    @property
    def crop_size(self) -> int:
        return self.net.crop_size

    def _tensor(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        s = self.crop_size
        # Crops of another size (crop_subject(..., size=n)) are resized, not rejected.
        arr = [c if c.shape[:2] == (s, s) else np.asarray(Image.fromarray(c).resize((s, s), Image.BILINEAR))
               for c in crops]
        return to_tensor(np.stack(arr))

    @torch.no_grad()
    def _run(self, crops: Sequence[np.ndarray], chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
        d, p = self.net.patch_head.out_channels, self.net.grid ** 2
        if len(crops) == 0:
            return np.zeros((0, p, d), np.float32), np.zeros((0, d), np.float32)
        outs = [self.net(self._tensor(crops[i:i + chunk])) for i in range(0, len(crops), chunk)]
        return (torch.cat([o[0] for o in outs]).numpy().astype(np.float32),
                torch.cat([o[1] for o in outs]).numpy().astype(np.float32))

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """(B, D) float32 L2-normalised identity embeddings of uint8 (S, S, 3) crops."""
        return self._run(crops)[1]

    def patch_features(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """(B, G*G, D) float32 L2-normalised patch features, patches in raster order."""
        return self._run(crops)[0]

    def save(self, directory: str | Path) -> Path:
        """Write a self-describing folder (config.json + model.safetensors)."""
        self.net.save_pretrained(str(directory))
        return Path(directory)

    @classmethod
    def load(cls, directory: str | Path) -> "WorldEncoder":
        """The encoder saved by ``save`` in ``directory``."""
        return cls(EncoderNet.from_pretrained(str(directory)))


# --- training ---------------------------------------------------------------------------------

def _jitter_box(box, rng: np.random.Generator) -> tuple[float, float, float, float]:
    """A square box around ``box`` with its centre shifted and its side scaled a little."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0)
    cx = (x0 + x1) / 2 + rng.uniform(-JITTER_SHIFT, JITTER_SHIFT) * side
    cy = (y0 + y1) / 2 + rng.uniform(-JITTER_SHIFT, JITTER_SHIFT) * side
    s = side * rng.uniform(1 - JITTER_SCALE, 1 + JITTER_SCALE)
    return cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2


def _view(image: np.ndarray, box, rng: np.random.Generator, size: int) -> np.ndarray:
    crop = crop_subject(image, _jitter_box(box, rng), size, CROP_PAD)
    return crop[:, ::-1] if rng.random() < 0.5 else crop


def _patch_pair(image: np.ndarray, box, rng: np.random.Generator, size: int):
    """Two views of one jittered crop and, per patch of the second, the index of the patch of
    the first that shows the same content (-100 where it fell outside the first)."""
    g = size // PATCH
    # A context crop one patch larger on every side, at the same scale as a size-pixel crop.
    ctx_pad = ((1 + 2 * CROP_PAD) * (size + 2 * PATCH) / size - 1) / 2
    ctx = crop_subject(image, _jitter_box(box, rng), size + 2 * PATCH, ctx_pad)
    if rng.random() < 0.5:
        ctx = ctx[:, ::-1]
    dy, dx = rng.integers(-1, 2, size=2)
    flip = rng.random() < 0.5
    a = ctx[PATCH:PATCH + size, PATCH:PATCH + size]
    b = ctx[PATCH * (1 + dy):PATCH * (1 + dy) + size, PATCH * (1 + dx):PATCH * (1 + dx) + size]
    return a, (b[:, ::-1] if flip else b), _correspondence(g, int(dy), int(dx), bool(flip))


@lru_cache(maxsize=None)
def _correspondence(g: int, dy: int, dx: int, flip: bool) -> np.ndarray:
    """For each patch (i, j) of view b = shift(a, dy, dx) (then flipped), the raster index of the
    patch of a with the same content, or -100 (ignored) where it lies outside a."""
    i, j = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")
    if flip:
        j = g - 1 - j
    ai, aj = i + dy, j + dx
    return np.where((ai >= 0) & (ai < g) & (aj >= 0) & (aj < g), ai * g + aj, -100).reshape(-1)


def shuffle_subject(crop: np.ndarray, rng: np.random.Generator, inner: float = 0.7) -> np.ndarray:
    """The crop with the pixels of its central ``inner`` square (where a ``crop_subject`` crop
    holds the subject) randomly permuted: the same colours, no shape."""
    s = crop.shape[0]
    lo = int(round(s * (1 - inner) / 2))
    hi = s - lo
    out = crop.copy()
    region = out[lo:hi, lo:hi].reshape(-1, 3)
    out[lo:hi, lo:hi] = region[rng.permutation(len(region))].reshape(hi - lo, hi - lo, 3)
    return out


class LookAlikes:
    """Subjects of ``data`` with the same colours as a given identity but another category or
    pattern, found by colours (the identity id without category, pattern and mark)."""

    def __init__(self, data: JudgeData):
        self.by_colors: dict[tuple[str, ...], list[tuple[int, int, str]]] = {}
        for si, scene in enumerate(data.scenes):
            for k, fact in enumerate(scene.subjects):
                self.by_colors.setdefault(self._colors(fact.identity), []).append((si, k, fact.identity))

    @staticmethod
    def _colors(identity: str) -> tuple[str, ...]:
        return tuple(identity.split("|")[1:-2])

    @staticmethod
    def _shape(identity: str) -> tuple[str, str]:
        parts = identity.split("|")
        return parts[0], parts[-2]  # category, pattern

    def pick(self, identity: str, rng: np.random.Generator) -> tuple[int, int, str] | None:
        """(scene index, subject index, identity) of a random look-alike, or None."""
        shape = self._shape(identity)
        cands = [c for c in self.by_colors.get(self._colors(identity), []) if self._shape(c[2]) != shape]
        return cands[int(rng.integers(len(cands)))] if cands else None


def _batch_maker(data: JudgeData, batch_size: int, size: int):
    pairs = np.asarray(data.pairs)
    ids = {}
    ident = np.asarray([ids.setdefault(data.scenes[t].subjects[k].identity, len(ids)) for t, k, _ in data.pairs])

    def make(rng: np.random.Generator):
        pick = rng.choice(len(pairs), size=batch_size, replace=len(pairs) < batch_size)
        v1, v2, v3, tgt = [], [], [], []
        for t, k, r in pairs[pick]:
            ts, rs = data.scenes[t], data.scenes[r]
            # The target view doubles as the first view of the patch pair: 3 crops per pair.
            a, b, target = _patch_pair(ts.image, ts.subjects[k].box, rng, size)
            v1.append(a), v3.append(b), tgt.append(target)
            v2.append(_view(rs.image, rs.subjects[0].box, rng, size))
        return (to_tensor(np.stack(v1 + v2 + v3)), torch.as_tensor(ident[pick]), torch.as_tensor(np.stack(tgt)))
    return make


def encoder_loss(net: EncoderNet, batch, temperature: float) -> torch.Tensor:
    """Identity InfoNCE (symmetric, same-identity off-diagonals masked out) plus
    ``PATCH_WEIGHT`` times the patch-correspondence InfoNCE."""
    images, ident, target = batch
    n = len(ident)
    patches, emb = net(images)
    z1, z2 = emb[:n], emb[n:2 * n]
    logits = z1 @ z2.T / temperature
    # Two pairs of one identity are not negatives of each other.
    same = (ident[:, None] == ident[None, :]) & ~torch.eye(n, dtype=torch.bool)
    logits = logits.masked_fill(same, float("-inf"))
    labels = torch.arange(n)
    identity = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    pa, pb = patches[:n], patches[2 * n:]
    plogits = torch.einsum("bpd,bqd->bpq", pb, pa) / temperature      # (B, P of b, P of a)
    patch = F.cross_entropy(plogits.flatten(0, 1), target.flatten(), ignore_index=-100)
    return identity + PATCH_WEIGHT * patch


def train_encoder(data: JudgeData, cfg, seed: int) -> tuple[WorldEncoder, list[float]]:
    """Train an encoder on the view pairs of ``data`` with ``cfg`` (a ``JudgesParams``:
    crop_size, width, embed_dim, encoder_steps, batch_size, lr, temperature); returns the
    encoder and the loss of every step."""
    if not data.pairs:
        raise ValueError("the encoder needs view pairs (target subject, reference), and the data has none")
    torch.manual_seed(seed)  # the initial weights belong to the seed as well
    net = EncoderNet(cfg.crop_size, cfg.width, cfg.embed_dim)
    losses = fit(net, _batch_maker(data, cfg.batch_size, cfg.crop_size),
                 lambda m, b: encoder_loss(m, b, cfg.temperature), cfg.encoder_steps, cfg.lr, seed)
    return WorldEncoder(net), losses


def evaluate_encoder(encoder: WorldEncoder, data: JudgeData, n_candidates: int = 16, seed: int = 0) -> dict:
    """Identity retrieval on (held-out) view pairs: each target crop ranks its own reference
    crop among ``n_candidates`` references (the rest from other samples); and hard negatives:
    how often the reference beats a look-alike of the data (same colours, another category or
    pattern; ``lookalike_acc`` over the pairs that have one) and the reference with its pixels
    shuffled (``shuffle_acc``), with their mean cosines. Returns {"retrieval_top1", "cos_pos",
    "cos_neg", "lookalike_acc", "cos_lookalike", "shuffle_acc", "cos_shuffled", "pairs"}."""
    keys = ("retrieval_top1", "cos_pos", "cos_neg", "lookalike_acc", "cos_lookalike", "shuffle_acc", "cos_shuffled")
    if not data.pairs:
        return {**{k: float("nan") for k in keys}, "pairs": 0}
    size = encoder.crop_size
    tgt = [crop_subject(data.scenes[t].image, data.scenes[t].subjects[k].box, size) for t, k, _ in data.pairs]
    ref = [crop_subject(data.scenes[r].image, data.scenes[r].subjects[0].box, size) for _, _, r in data.pairs]
    et, er = encoder.embed(tgt), encoder.embed(ref)
    sample = np.asarray([data.scenes[t].sample_id for t, _, _ in data.pairs])
    rng = np.random.default_rng(seed)
    hits, pos, neg = [], [], []
    for i in range(len(data.pairs)):
        others = np.flatnonzero(sample != sample[i])
        others = rng.choice(others, size=min(n_candidates - 1, len(others)), replace=False)
        sims = er[np.concatenate([[i], others])] @ et[i]
        hits.append(bool(sims[0] > sims[1:].max()) if len(others) else True)
        pos.append(sims[0])
        neg.extend(sims[1:])
    looks, found, alike = LookAlikes(data), [], []
    for i, (t, k, _) in enumerate(data.pairs):
        if (hit := looks.pick(data.scenes[t].subjects[k].identity, rng)) is not None:
            found.append(i)
            alike.append(crop_subject(data.scenes[hit[0]].image, data.scenes[hit[0]].subjects[hit[1]].box, size))
    pos = np.asarray(pos)
    cos_alike = np.sum(et[found] * encoder.embed(alike), 1) if found else np.zeros(0)
    cos_shuf = np.sum(et * encoder.embed([shuffle_subject(c, rng) for c in ref]), 1)
    nan = float("nan")
    return {"retrieval_top1": float(np.mean(hits)), "cos_pos": float(np.mean(pos)),
            "cos_neg": float(np.mean(neg)) if neg else nan,
            "lookalike_acc": float(np.mean(pos[found] > cos_alike)) if found else nan,
            "cos_lookalike": float(np.mean(cos_alike)) if found else nan,
            "shuffle_acc": float(np.mean(pos > cos_shuf)), "cos_shuffled": float(np.mean(cos_shuf)),
            "pairs": len(data.pairs)}
