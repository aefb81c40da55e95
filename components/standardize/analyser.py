"""The reference analyser's data and training: the segmenter and pose estimator the standardizer
reads its references through (``models/conditioning.py``).

Training rows are the standardization sources of ``data/standardize`` (a subject in a random
pose, size, place and background): their masks and poses are the renderer's, re-rendered from
the scene each manifest row records. The analyser is then frozen; at inference it sees only the
image. Held-out rows (``heldout_pairs``) come from the benchmark's identities, rendered here.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import world
from ..world import shapes
from ..world.subjects import CHARACTER
from ..data.grids import load_rgb
from ..data.manifest import read_manifest
from ..models.conditioning import ReferenceAnalyser, pose_vector, subject_crops
from ..models.generator import to_model


@dataclass
class StandardizePairs:
    """Sources (N, S, S, 3), their masks (N, S, S) bool and poses (N, POSE_DIMS), the standard
    views (N, S, S, 3) and their masks, and each row's category."""

    sources: np.ndarray
    source_masks: np.ndarray
    poses: np.ndarray
    targets: np.ndarray
    target_masks: np.ndarray
    categories: list[str]

    def __len__(self) -> int:
        return len(self.categories)


def _placement_truth(scene: world.Scene, res: int, ss: int) -> tuple[np.ndarray, np.ndarray, list[float]]:
    r = world.render(scene, res, res, ss)
    p = scene.placements[0]
    return r.image, r.mask(0), pose_vector(p.pose, p.rotation)


def load_pairs(dataset_dir: Path, res: int, supersample: int) -> StandardizePairs:
    """The dataset's rows with the renderer's truth re-rendered from their scenes (checked against
    the stored images: a dataset rendered with other settings is refused)."""
    m = read_manifest(dataset_dir)
    rows = []
    for rec in m.itertuples(index=False):
        source = load_rgb(Path(dataset_dir) / rec.refs[0])
        image, mask, pose = _placement_truth(world.Scene.from_dict(json.loads(rec.ref_scenes[0])), res, supersample)
        if not np.array_equal(image, source):
            raise ValueError(f"{rec.id}: its reference does not re-render from its scene at {res} px, supersample "
                             f"{supersample}: the dataset was made with other synthesize settings")
        target = world.render(world.Scene.from_dict(json.loads(rec.scene)), res, res, supersample)
        rows.append((source, mask, pose, target.image, target.mask(0), rec.categories[0]))
    return _stack(rows)


def heldout_pairs(n: int, character_fraction: float, synth, seed: int) -> StandardizePairs:
    """``n`` standardization pairs of the benchmark's identities (never trained on), rendered."""
    pool = world.identity_pool("bench", synth.heldout_fraction, synth.identity_salt)
    rows = []
    for i in range(n):
        sample = world.sample_standardize(np.random.default_rng([seed, 24, i]), pool, character_fraction)
        source, mask, pose = _placement_truth(sample.refs[0], synth.resolution, synth.supersample)
        target = world.render(sample.target, synth.resolution, synth.resolution, synth.supersample)
        rows.append((source, mask, pose, target.image, target.mask(0), sample.target.placements[0].identity.category))
    return _stack(rows)


def _stack(rows) -> StandardizePairs:
    cols = list(zip(*rows))
    return StandardizePairs(np.stack(cols[0]), np.stack(cols[1]), np.asarray(cols[2], np.float32),
                            np.stack(cols[3]), np.stack(cols[4]), list(cols[5]))


def analyser_loss(net: ReferenceAnalyser, images: torch.Tensor, masks: torch.Tensor, poses: torch.Tensor):
    """Segmentation BCE plus pose MSE, the pose read from the true mask's crop (at inference the
    segmenter's own mask gives it)."""
    seg = F.binary_cross_entropy_with_logits(net.segment(images), masks)
    return seg + F.mse_loss(net.pose(subject_crops(images, masks > 0.5)), poses)


def train_analyser(data: StandardizePairs, steps: int, lr: float, batch_size: int, seed: int,
                   width: int = 32) -> tuple[ReferenceAnalyser, list[float]]:
    """Fit the segmenter and pose estimator on ``data``'s sources; returns it and the losses."""
    torch.manual_seed(seed)
    net = ReferenceAnalyser(width)
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    x, m = to_model(data.sources), torch.as_tensor(data.source_masks, dtype=torch.float32)
    p = torch.as_tensor(data.poses)
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(steps):
        idx = torch.as_tensor(rng.integers(len(data), size=batch_size))
        loss = analyser_loss(net, x[idx], m[idx], p[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if len(losses) % 250 == 0 or len(losses) == steps:
            print(f"analyser step {len(losses)}: loss {np.mean(losses[-50:]):.4f}", flush=True)
    return net.eval(), losses


def _angle_errors(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Absolute wrapped angle differences (degrees), per (sin, cos) pair of the last axis."""
    def angles(v):
        v = v.reshape(*v.shape[:-1], -1, 2)
        return np.degrees(np.arctan2(v[..., 0], v[..., 1]))
    return np.abs((angles(pred) - angles(truth) + 180) % 360 - 180)


def analyser_accuracy(net: ReferenceAnalyser, data: StandardizePairs) -> dict:
    """Mask IoU (threshold 0.5), the person's limb-angle error and the objects' rotation error
    (degrees, mean absolute, wrapped), on ``data``."""
    x = to_model(data.sources)
    with torch.no_grad():
        logits = net.segment(x)
        pose = net.pose(subject_crops(x, logits > 0))  # as at inference: from its own mask
    pred = (logits > 0).numpy()
    inter, union = (pred & data.source_masks).sum((1, 2)), (pred | data.source_masks).sum((1, 2))
    pose, truth = pose.numpy(), data.poses
    person = np.array([c == CHARACTER for c in data.categories])

    return {"mask_iou": float(np.mean(inter / np.maximum(union, 1))), **_pose_errors(pose, truth, person)}


def _pose_errors(pose: np.ndarray, truth: np.ndarray, person: np.ndarray) -> dict:
    """The person's mean limb-angle error and the objects' mean rotation error (degrees)."""
    d = _angle_errors(pose, truth)  # (N, 5): 4 limbs, then the rotation
    out = {}
    if person.any():
        out["person_limb_error_deg"] = float(d[person][:, :4].mean())
    if (~person).any():
        out["object_rotation_error_deg"] = float(d[~person][:, 4].mean())
    return out


def pose_baseline(data: StandardizePairs) -> dict:
    """The same errors for a constant guess (the canonical pose): what the estimator must beat."""
    person = np.array([c == CHARACTER for c in data.categories])
    canon = np.array(pose_vector(shapes.POSES[shapes.CANONICAL_POSE], 0.0), np.float32)
    return _pose_errors(np.broadcast_to(canon, data.poses.shape), data.poses, person)

