"""SerialGen's reference conditioning, for the standardizer (``components/standardize``).

SerialGen's standardizer maps a reference in any pose, size, place and background to a canonical
view. Two of its modules tell the network about the reference: FBDM (learnable foreground and
background tokens, placed by the reference's mask) and RPIM (the reference's pose, injected).
Here, on the in-context generator:

- ``ReferenceAnalyser``, a small CNN reading a reference image: per-pixel foreground logits (a
  segmenter) and a pose vector (``pose_vector``: the person's four limb angles, an object's
  rotation, as (sin, cos) pairs). It is trained on the world's standardization sources, whose masks
  and poses the renderer knows; at inference it is the only source of both, so the standardizer
  works on any reference image, a user's included.
- ``ReferenceConditioner``: FBDM's analogue adds ``m e_fg + (1 - m) e_bg`` to each reference
  token, ``m`` the share of the token the analyser calls subject; RPIM's adds the pose vector
  through a small MLP to every reference token. Both start at zero (no effect), each switchable.

A ``SubjectGenerator`` with both attached applies them in ``ref_tokens``, so training, sampling and
every caller see the same conditioned references. They are saved beside the transformer.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

POSE_DIMS = 10  # (sin, cos) of the person's 4 limb angles, then of an object's rotation
ANALYSER, CONDITIONER, CONFIG = "ref_analyser.pt", "ref_conditioner.pt", "ref_conditioning.json"


def pose_vector(pose: tuple[float, ...] | None, rotation: float) -> list[float]:
    """The pose of a placement as the analyser predicts it: the person's limb angles (degrees,
    ``shapes.POSES`` order) as (sin, cos) pairs and (0, 1) for rotation; an object has zeros for
    limbs (no limbs: off the unit circle) and its rotation's (sin, cos)."""
    if pose is not None:
        limbs = [f(math.radians(a)) for a in pose for f in (math.sin, math.cos)]
        return limbs + [0.0, 1.0]
    r = math.radians(rotation)
    return [0.0] * 8 + [math.sin(r), math.cos(r)]


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())


def subject_crops(x: torch.Tensor, masks: torch.Tensor, pad: float = 0.15) -> torch.Tensor:
    """Square crops (B, 3, S, S) of images ``x`` (B, 3, S, S) around each mask's box (B, S, S bool;
    an empty mask: the whole image), padded, edges replicated, resized back to S: the pose is read
    from the subject alone, whatever its place and size (a keypoint detector's crop)."""
    side = x.shape[-1]
    out = []
    for img, m in zip(x, masks):
        ys, xs = torch.nonzero(m, as_tuple=True)
        if len(ys) == 0:
            out.append(img)
            continue
        x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
        half = max(x1 - x0, y1 - y0) * (1 + 2 * pad) / 2
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        lo, n = (int(round(cx - half)), int(round(cy - half))), max(int(round(2 * half)), 1)
        cols = torch.arange(lo[0], lo[0] + n).clamp(0, side - 1)
        rows = torch.arange(lo[1], lo[1] + n).clamp(0, side - 1)
        crop = img[:, rows][:, :, cols]
        out.append(F.interpolate(crop[None], size=(side, side), mode="bilinear", align_corners=False)[0])
    return torch.stack(out)


class ReferenceAnalyser(nn.Module):
    """A segmenter, image (B, 3, S, S) in [-1, 1] -> foreground logits (B, S, S), and a pose
    estimator reading the subject's crop (``subject_crops``) -> pose (B, POSE_DIMS)."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.width = width
        self.stem = nn.Sequential(_conv(3, width), _conv(width, width))
        self.mask_head = nn.Conv2d(width, 1, 3, 1, 1)
        self.pose_net = nn.Sequential(_conv(3, width), _conv(width, 2 * width, 2), _conv(2 * width, 2 * width, 2),
                                      _conv(2 * width, 2 * width, 2), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                                      nn.Linear(32 * width, POSE_DIMS))

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        return self.mask_head(self.stem(x))[:, 0]

    def pose(self, crops: torch.Tensor) -> torch.Tensor:
        return self.pose_net(crops)

    @torch.no_grad()
    def analyse(self, x: torch.Tensor, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token foreground share (B, grid * grid) in raster order and the pose (B, POSE_DIMS),
        the pose read from the crop the segmenter's own mask gives."""
        x = x.float()
        logits = self.segment(x)
        share = F.avg_pool2d(torch.sigmoid(logits)[:, None], patch)[:, 0]
        return share.flatten(1), self.pose(subject_crops(x, logits > 0))


class ReferenceConditioner(nn.Module):
    """FBDM's and RPIM's analogues on reference tokens (B, k, N, C); see the module docstring."""

    def __init__(self, channels: int, fbdm: bool = True, rpim: bool = True, hidden: int = 64):
        super().__init__()
        self.channels, self.fbdm, self.rpim, self.hidden = channels, fbdm, rpim, hidden
        if fbdm:
            self.fg = nn.Parameter(torch.zeros(channels))
            self.bg = nn.Parameter(torch.zeros(channels))
        if rpim:
            self.pose = nn.Sequential(nn.Linear(POSE_DIMS, hidden), nn.SiLU(), nn.Linear(hidden, channels))
            nn.init.zeros_(self.pose[-1].weight)
            nn.init.zeros_(self.pose[-1].bias)

    def forward(self, tokens: torch.Tensor, share: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """``share`` (B, k, N) in [0, 1], ``pose`` (B, k, POSE_DIMS)."""
        if self.fbdm:
            m = share[..., None].to(tokens.dtype)
            tokens = tokens + m * self.fg + (1 - m) * self.bg
        if self.rpim:
            tokens = tokens + self.pose(pose.to(tokens.dtype))[:, :, None, :]
        return tokens

    def config(self) -> dict:
        return {"channels": self.channels, "fbdm": self.fbdm, "rpim": self.rpim, "hidden": self.hidden}


def condition(model, tokens: torch.Tensor, space: torch.Tensor) -> torch.Tensor:
    """``tokens`` (B, k, N, C) of the references ``space`` (B, k, 3, S, S) with ``model``'s
    conditioning applied (unchanged when it has none)."""
    if model.ref_conditioner is None or tokens.shape[1] == 0:
        return tokens
    b, k = tokens.shape[:2]
    share, pose = model.ref_analyser.analyse(space.flatten(0, 1), model.config.patch)
    return model.ref_conditioner(tokens, share.reshape(b, k, -1), pose.reshape(b, k, -1))


def attach(model, analyser: ReferenceAnalyser, fbdm: bool, rpim: bool) -> None:
    """Give ``model`` reference conditioning: ``analyser`` (frozen) and a fresh conditioner."""
    if model.config.latent_channels:
        raise ValueError("reference conditioning reads pixels: the standardizer needs a pixel-space generator")
    model.ref_analyser = analyser.eval().requires_grad_(False)
    model.ref_conditioner = ReferenceConditioner(model.config.channels, fbdm, rpim)


def save(model, folder: Path) -> None:
    if model.ref_conditioner is None:
        return
    torch.save(model.ref_analyser.state_dict(), folder / ANALYSER)
    torch.save(model.ref_conditioner.state_dict(), folder / CONDITIONER)
    cfg = {"analyser": {"width": model.ref_analyser.width}, "conditioner": model.ref_conditioner.config()}
    (folder / CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")


def load(model, folder: Path) -> None:
    """Attach the conditioning ``folder`` holds, if any, to ``model`` (loaded from it)."""
    if not (folder / CONFIG).is_file():
        return
    cfg = json.loads((folder / CONFIG).read_text())
    analyser = ReferenceAnalyser(**cfg["analyser"])
    analyser.load_state_dict(torch.load(folder / ANALYSER, weights_only=True))
    model.ref_analyser = analyser.eval().requires_grad_(False)
    model.ref_conditioner = ReferenceConditioner(**cfg["conditioner"])
    model.ref_conditioner.load_state_dict(torch.load(folder / CONDITIONER, weights_only=True))
